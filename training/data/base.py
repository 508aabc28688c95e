"""The base of every training dataset: lazy setup, items keyed by ``(index, epoch)``, augmentation and targets."""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

import efusion
from efusion import io as efusion_io

from ..tonemap import OPERATORS, tonemap
from .augment import augment
from .errors import DatasetError

__all__ = ["SceneDataset"]


def item_seed(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def size_pair(size: int | Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        pair = (size, size)
    else:
        pair = tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in pair):
        raise ValueError(f"{name} must be an int >= 1 or [height, width], got {size!r}")
    return pair  # type: ignore[return-value]


class SceneDataset(Dataset):
    """Base class: lazy :meth:`setup`, items keyed by ``index`` or ``(index, epoch)``.

    Subclasses implement ``_prepare()`` (read and check, once) and ``_load(index, rng)`` (an
    item before augmentation; ``rng`` is a ``torch.Generator`` seeded from the key) and
    ``_length()``.

    Args:
        crop: size ``h`` or ``[h, w]`` of a random crop taken identically from frames, target
            and mask (torchvision transforms v2); ``None`` keeps whole images.
        flip: random horizontal flip, identical for frames, target and mask.
        seed: base seed of every random choice; items depend on ``(seed, epoch, index)`` only.
    """

    #: fusion parameters that make the target (set by the datasets that render brackets)
    target_params: dict[str, Any] | None = None

    def __init__(self, crop: int | Sequence[int] | None = None, flip: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.crop = size_pair(crop, "crop")
        self.flip = bool(flip)
        self.seed = int(seed)
        self._ready = False

    # -- subclass interface ------------------------------------------------------------------
    def _prepare(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _length(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def _load(self, index: int, rng: torch.Generator) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    # -- public -------------------------------------------------------------------------------
    def setup(self) -> SceneDataset:
        """Read and check the data (once); raises :class:`DatasetError` naming the file at fault."""
        if not self._ready:
            self._prepare()
            self._ready = True
        return self

    def __len__(self) -> int:
        self.setup()
        return self._length()

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        self.setup()
        index, epoch = (key if isinstance(key, tuple) else (key, 0))
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        rng = torch.Generator().manual_seed(item_seed(self.seed, int(epoch), index))
        item = self._augment(self._load(index, rng), rng)
        if self._fuses_after_augment:
            with torch.no_grad():
                item["target"] = efusion.exposure_fusion(item["frames"], mask=item.get("mask"), **self.target_params)
        return item

    @property
    def _fuses_after_augment(self) -> bool:
        """Whether :meth:`__getitem__` makes the target by fusing the cropped / flipped frames.

        The fusion of a crop is not the crop of the fusion (pyramid borders, automatic depth),
        nor does it commute with a flip (subsampling phase): fuse what is trained on. Sources
        then render no target of the whole bracket, which would only be thrown away.
        """
        return self.target_params is not None and (self.crop is not None or self.flip)

    def _check_crop(self, height: int, width: int, source: str) -> None:
        if self.crop is not None and (self.crop[0] > height or self.crop[1] > width):
            raise DatasetError(
                f"{source}: image is {width}x{height}, smaller than the crop {self.crop[1]}x{self.crop[0]} (w x h)"
            )

    def _augment(self, item: dict[str, Any], rng: torch.Generator) -> dict[str, Any]:
        return augment(item, rng, self.crop, self.flip)


def target_from(
    frames: Tensor, radiance: Tensor | None, operator: str, options: Mapping[str, Any], target_params: Mapping[str, Any] | None
) -> Tensor:
    if target_params is not None:
        with torch.no_grad():  # unclipped, so the hidden parameters reproduce it exactly
            return efusion.exposure_fusion(frames, **dict(target_params))
    return tonemap(radiance, operator, **dict(options))


def check_render_options(tonemap_name: str, target_params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if tonemap_name not in OPERATORS:
        raise ValueError(f"tonemap must be one of {sorted(OPERATORS)}, got {tonemap_name!r}")
    if target_params is None:
        return None
    try:
        return efusion_io.validate_params(dict(target_params), source="target_params")
    except efusion_io.ParamsError as error:
        raise ValueError(str(error)) from None
