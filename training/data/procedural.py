"""Procedural scenes: :class:`SyntheticScenes`, brackets rendered from :mod:`efusion.synthetic`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .base import SceneDataset, check_render_options, size_pair, target_from

__all__ = ["SyntheticScenes"]


class SyntheticScenes(SceneDataset):
    """Procedural HDR scenes (:func:`efusion.synthetic.hdr_scene`) and their brackets.

    Index ``k`` is the scene with seed ``seed + k`` (so two datasets share no scene when their
    seed ranges do not overlap); with ``resample=True`` training draws a new scene for every
    ``(epoch, index)`` instead, an endless supply. The bracket is rendered by
    :func:`efusion.synthetic.render_exposures` with ``ev``, ``response``, ``bit_depth`` and
    ``noise_std``; the target is the scene tone-mapped by ``tonemap`` or, with
    ``target_params``, the bracket fused with those parameters.

    Args:
        length: number of items.
        size: scene size ``s`` or ``[h, w]`` in pixels (before any crop).
        ev: exposure values of the frames, in stops from the automatic exposure.
        response: camera response, ``"srgb"``, ``"gamma2.2"`` or ``"linear"``.
        bit_depth: quantisation of the frames (8, 16, or ``None`` for none).
        noise_std: sensor noise, standard deviation as a fraction of full scale.
        dynamic_range_ev: the scenes' dynamic range in stops, or ``[low, high]`` to draw it
            uniformly per scene.
        tonemap: reference operator for the target (:data:`training.tonemap.OPERATORS`).
        tonemap_options: keyword arguments of the operator.
        target_params: fusion parameters (keys of ``efusion fuse --params``) making the target
            instead of the tone mapper.
        resample: draw a new scene per ``(epoch, index)`` (training) instead of per index.
        cache: render every item at :meth:`setup` and keep it in memory (ignored with
            ``resample``); ``False`` renders on demand.
        crop, flip, seed: see :class:`SceneDataset`.
    """

    def __init__(
        self,
        length: int = 64,
        size: int | Sequence[int] = 128,
        ev: Sequence[float] = (-2.0, 0.0, 2.0),
        response: str = "srgb",
        bit_depth: int | None = 8,
        noise_std: float = 0.0,
        dynamic_range_ev: float | Sequence[float] = 14.0,
        tonemap: str = "reinhard",
        tonemap_options: dict[str, Any] | None = None,
        target_params: dict[str, Any] | None = None,
        resample: bool = False,
        cache: bool = True,
        crop: int | Sequence[int] | None = None,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(crop=crop, flip=flip, seed=seed)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an int >= 1, got {length!r}")
        self.length = length
        self.size = size_pair(size, "size")
        self.ev = tuple(float(e) for e in ev)
        if len(self.ev) < 1:
            raise ValueError("ev must hold at least one exposure value")
        self.response = response
        self.bit_depth = bit_depth
        self.noise_std = float(noise_std)
        if isinstance(dynamic_range_ev, (int, float)):
            self.dynamic_range = (float(dynamic_range_ev), float(dynamic_range_ev))
        else:
            low, high = (float(v) for v in dynamic_range_ev)
            if not 0 < low <= high:
                raise ValueError(f"dynamic_range_ev must be > 0 or [low, high] with 0 < low <= high, got {dynamic_range_ev!r}")
            self.dynamic_range = (low, high)
        self.tonemap = tonemap
        self.tonemap_options = dict(tonemap_options or {})
        self.target_params = check_render_options(tonemap, target_params)
        self.resample = bool(resample)
        self.cache = bool(cache) and not self.resample
        self._items: dict[int, dict[str, Any]] = {}

    def _prepare(self) -> None:
        self._check_crop(*self.size, source=type(self).__name__)
        if self.cache:  # render now, in the main process: DataLoader workers then inherit the items
            for index in range(self.length):
                self._items[index] = self.render(self.seed + index, target=not self._fuses_after_augment)

    def _length(self) -> int:
        return self.length

    def radiance(self, scene_seed: int) -> Tensor:
        """The radiance map ``[3, H, W]`` of the scene with this seed (index ``k``: ``seed + k``)."""
        from efusion import synthetic

        generator = torch.Generator().manual_seed(scene_seed)
        low, high = self.dynamic_range
        dynamic_range = low + (high - low) * float(torch.rand((), generator=generator))
        return synthetic.hdr_scene(*self.size, seed=scene_seed, dynamic_range_ev=dynamic_range)

    def render(self, scene_seed: int, *, target: bool = True) -> dict[str, Any]:
        """Frames and target of the scene with this seed (before crops); ``target=False``: no target."""
        from efusion import synthetic

        radiance = self.radiance(scene_seed)
        frames = synthetic.render_exposures(
            radiance, self.ev, response=self.response, bit_depth=self.bit_depth, noise_std=self.noise_std, seed=scene_seed
        )
        item = {"frames": frames}
        if target:
            item["target"] = target_from(frames, radiance, self.tonemap, self.tonemap_options, self.target_params)
        item["name"] = f"scene{scene_seed}"
        return item

    def _load(self, index: int, rng: torch.Generator) -> dict[str, Any]:
        if index in self._items:
            return dict(self._items[index])
        scene_seed = int(torch.randint(0, 2**31 - 1, (), generator=rng)) if self.resample else self.seed + index
        return self.render(scene_seed, target=not self._fuses_after_augment)
