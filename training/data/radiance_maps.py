"""Radiance maps on disk: :class:`RadianceMaps`, brackets rendered from ``.hdr`` / ``.exr`` files."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from efusion.io.errors import one_line

from .base import SceneDataset, check_render_options, target_from
from .errors import DatasetError
from .readers import RADIANCE_SUFFIXES, expand_files, read_radiance

__all__ = ["RadianceMaps"]


class RadianceMaps(SceneDataset):
    """Brackets rendered from radiance maps on disk, with tone-mapped targets.

    Each map is read once (:func:`read_radiance`), optionally resized by ``scale``; its target
    is the tone-mapped *whole* map (a global operator's statistics are the scene's, not a
    crop's) and its bracket is rendered at full size; items are ``crops_per_map`` crops of
    each map (random per epoch in training, fixed per index in evaluation).

    Args:
        files: radiance maps (``.hdr``, ``.exr``), folders of them, or glob patterns.
        crops_per_map: items per map.
        scale: resize factor applied to the maps first (area averaging when shrinking).
        max_size: then shrink maps whose longer side exceeds this many pixels (``None``: no
            limit), so maps of very different sizes can share one crop size.
        exposure: base exposure multiplier, or ``None`` to put the median luminance at mid grey.
        ev, response, bit_depth, noise_std, tonemap, tonemap_options, target_params: as in
            :class:`SyntheticScenes`.
        crop, flip, seed: see :class:`SceneDataset` (``crop=None``: whole maps, one item each).
    """

    def __init__(
        self,
        files: Sequence[str],
        crops_per_map: int = 16,
        scale: float = 1.0,
        max_size: int | None = None,
        exposure: float | None = None,
        ev: Sequence[float] = (-2.0, 0.0, 2.0),
        response: str = "srgb",
        bit_depth: int | None = 8,
        noise_std: float = 0.0,
        tonemap: str = "reinhard",
        tonemap_options: dict[str, Any] | None = None,
        target_params: dict[str, Any] | None = None,
        crop: int | Sequence[int] | None = 128,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(crop=crop, flip=flip, seed=seed)
        if isinstance(files, (str, os.PathLike)):
            files = [str(files)]
        self.files = [str(f) for f in files]
        if not self.files:
            raise ValueError("files must name at least one radiance map, folder or pattern")
        self.crops_per_map = 1 if crop is None else int(crops_per_map)
        if self.crops_per_map < 1:
            raise ValueError(f"crops_per_map must be >= 1, got {crops_per_map!r}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.scale = float(scale)
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"max_size must be an int >= 1 or None, got {max_size!r}")
        self.max_size = max_size
        self.exposure = exposure
        self.ev = tuple(float(e) for e in ev)
        self.response = response
        self.bit_depth = bit_depth
        self.noise_std = float(noise_std)
        self.tonemap = tonemap
        self.tonemap_options = dict(tonemap_options or {})
        self.target_params = check_render_options(tonemap, target_params)
        self._maps: list[dict[str, Any]] = []

    def _prepare(self) -> None:
        from efusion import synthetic

        paths = expand_files(self.files, RADIANCE_SUFFIXES)
        self._maps = []  # a failed earlier attempt may have left some
        for number, path in enumerate(paths):
            radiance = read_radiance(path)
            factor = self.scale
            if self.max_size is not None:
                factor = min(factor, self.max_size / max(radiance.shape[-2:]))
            if factor != 1.0:
                height = max(1, round(radiance.shape[-2] * factor))
                width = max(1, round(radiance.shape[-1] * factor))
                mode = "area" if factor < 1 else "bilinear"
                radiance = F.interpolate(radiance[None], size=(height, width), mode=mode)[0].clamp_(min=0.0)
            self._check_crop(*radiance.shape[-2:], source=str(path))
            try:
                frames = synthetic.render_exposures(
                    radiance, self.ev, exposure=self.exposure, response=self.response, bit_depth=self.bit_depth,
                    noise_std=self.noise_std, seed=self.seed + number,
                )
            except ValueError as error:
                raise DatasetError(f"{path}: cannot render a bracket ({one_line(error)})") from None
            item = {"frames": frames}
            if not self._fuses_after_augment:
                item["target"] = target_from(frames, radiance, self.tonemap, self.tonemap_options, self.target_params)
            item["name"] = path.stem
            self._maps.append(item)

    def _length(self) -> int:
        return len(self._maps) * self.crops_per_map

    def _load(self, index: int, rng: torch.Generator) -> dict[str, Any]:
        item = dict(self._maps[index // self.crops_per_map])
        if self.crops_per_map > 1:
            item["name"] = f"{item['name']}_{index % self.crops_per_map}"
        return item
