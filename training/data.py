"""Training data: exposure brackets with the image their fusion should produce.

Every dataset yields dictionaries

- ``frames``: ``[N, C, H, W]`` float in [0, 1], the bracket;
- ``target``: ``[C, H, W]`` float in [0, 1], the reference image (absent when there is none,
  e.g. for prediction or with the target-free ``mef_ssim`` loss); a target made by the fusion
  (``target_params``) is the raw fusion, which can overshoot [0, 1] slightly;
- ``mask``: ``[N, 1, H, W]`` (only when frames have ignored pixels: alpha, marked borders);
- ``name``: a string naming the scene (and crop).

Three sources:

- :class:`SyntheticScenes`: procedural HDR scenes from :func:`efusion.synthetic.hdr_scene`,
  photographed by :func:`efusion.synthetic.render_exposures`; no files needed.
- :class:`RadianceMaps`: radiance maps on disk (Radiance ``.hdr`` read with OpenCV, OpenEXR
  ``.exr`` read with the OpenEXR bindings), rendered the same way.
- :class:`SceneFolders`: real brackets, one folder per scene holding the frames and either a
  reference image (``reference.png`` ..., the layout of SICE-style datasets, or a separate label
  folder) or a radiance map (``memorial.hdr`` beside Debevec's frames).

The target of a rendered bracket is its radiance map tone-mapped by a reference operator
(:mod:`training.tonemap`), or, with ``target_params``, the bracket fused by
:func:`efusion.exposure_fusion` with those parameters (to test that training recovers them; the
fusion of the cropped / flipped bracket, so the hidden parameters reproduce every item).

Randomness (crop positions, flips, which scene a procedural index draws) is a function of
``(seed, epoch, index)`` only: :class:`EpochSampler` hands the epoch to the dataset with each
index, so a resumed run or another rank sees exactly the data an uninterrupted run would.

Datasets are lazy: constructing one (from a config) reads nothing; :meth:`SceneDataset.setup`
(called by :class:`FusionDataModule` in ``setup``) reads and checks everything it can, and fails
with a :class:`DatasetError` naming the file at fault.
"""
from __future__ import annotations

import glob
import hashlib
import math
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.data._utils.collate import default_collate

import efusion
from efusion import io as efusion_io
from efusion.io.errors import one_line

from .tonemap import OPERATORS, tonemap

__all__ = [
    "DatasetError",
    "EpochSampler",
    "FusionDataModule",
    "RADIANCE_SUFFIXES",
    "RadianceMaps",
    "SceneDataset",
    "SceneFolders",
    "SyntheticScenes",
    "collate",
    "read_radiance",
]

#: radiance-map files: Radiance RGBE and OpenEXR
RADIANCE_SUFFIXES = (".hdr", ".pic", ".exr")
#: file stems taken as a scene's reference image (case-insensitive)
REFERENCE_NAMES = ("reference", "ref", "label", "gt", "target")


class DatasetError(ValueError):
    """A dataset cannot be used as given; the message names the file or folder and says why."""


# ----------------------------------------------------------------------------------------------
# Reading radiance maps


def read_radiance(path: str | os.PathLike) -> Tensor:
    """Read a scene-linear radiance map as ``[3, H, W]`` float32 RGB.

    ``.exr`` is read with the OpenEXR bindings (``pip install openexr``; all compressions,
    including PIZ half floats; RGB channels, alpha ignored); ``.hdr`` / ``.pic`` (Radiance RGBE)
    with OpenCV. Both are imported only when a file needs them. Small negative values (from
    lossy EXR compression) are set to 0.

    Raises:
        DatasetError: missing or unreadable file, no RGB channels, non-finite values, or no
            positive pixel; the message names the file.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such radiance map")
    suffix = path.suffix.lower()
    if suffix == ".exr":
        try:
            import OpenEXR
        except ImportError:
            raise DatasetError(f"{path}: reading OpenEXR needs the OpenEXR bindings (pip install openexr)") from None
        try:
            with OpenEXR.File(str(path)) as exr:
                channels = exr.channels()
                if "RGBA" in channels or "RGB" in channels:
                    pixels = np.asarray(channels["RGBA" if "RGBA" in channels else "RGB"].pixels)[..., :3]
                elif all(c in channels for c in "RGB"):
                    pixels = np.stack([np.asarray(channels[c].pixels) for c in "RGB"], axis=-1)
                elif "Y" in channels:
                    pixels = np.repeat(np.asarray(channels["Y"].pixels)[..., None], 3, axis=-1)
                else:
                    raise DatasetError(f"{path}: no R, G, B (or Y) channels, found {sorted(channels)}")
        except DatasetError:
            raise
        except Exception as error:  # the bindings raise plain RuntimeError / Exception
            raise DatasetError(f"{path}: cannot read as OpenEXR ({one_line(error)})") from None
    elif suffix in (".hdr", ".pic"):
        try:
            import cv2
        except ImportError:
            raise DatasetError(f"{path}: reading Radiance .hdr needs OpenCV (pip install opencv-python-headless)") from None
        bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if bgr is None or bgr.ndim != 3 or bgr.shape[2] < 3:
            raise DatasetError(f"{path}: OpenCV cannot decode it as a Radiance RGBE image")
        pixels = bgr[..., 2::-1]
    else:
        raise DatasetError(f"{path}: not a radiance map (expected one of {', '.join(RADIANCE_SUFFIXES)})")
    radiance = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1).contiguous()
    if not bool(torch.isfinite(radiance).all()):
        bad = int((~torch.isfinite(radiance)).sum())
        raise DatasetError(f"{path}: {bad} non-finite values (NaN or infinity) in the radiance map")
    radiance.clamp_(min=0.0)
    if not bool((radiance > 0).any()):
        raise DatasetError(f"{path}: the radiance map is black (no positive value)")
    return radiance


def _image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, upright (EXIF), from its header (a radiance map is read)."""
    if path.suffix.lower() in RADIANCE_SUFFIXES:
        return tuple(read_radiance(path).shape[-2:])
    try:
        return tuple(efusion_io.open_bracket([path]).shape[-2:])
    except efusion_io.ImageIOError as error:
        raise DatasetError(str(error)) from None


# ----------------------------------------------------------------------------------------------
# Base dataset: lazy setup and joint augmentation


def _item_seed(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _size_pair(size: int | Sequence[int] | None, name: str) -> tuple[int, int] | None:
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
        self.crop = _size_pair(crop, "crop")
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
    def setup(self) -> "SceneDataset":
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
        rng = torch.Generator().manual_seed(_item_seed(self.seed, int(epoch), index))
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
        if self.crop is None and not self.flip:
            return item
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        transforms = []
        if self.crop is not None:
            transforms.append(v2.RandomCrop(self.crop))
        if self.flip:
            transforms.append(v2.RandomHorizontalFlip(0.5))
        wrapped = {}
        for key, value in item.items():
            if key == "mask":
                wrapped[key] = tv_tensors.Mask(value)
            elif isinstance(value, Tensor):
                wrapped[key] = tv_tensors.Image(value)
            else:
                wrapped[key] = value
        # v2 draws its parameters from the global generator: seed a private copy of it from the
        # item's key so crops depend on (seed, epoch, index) alone, and leave the global RNG as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (), generator=rng)))
            out = v2.Compose(transforms)(wrapped)
        return {k: v.as_subclass(Tensor) if isinstance(v, Tensor) else v for k, v in out.items()}


def _target_from(
    frames: Tensor, radiance: Tensor | None, operator: str, options: Mapping[str, Any], target_params: Mapping[str, Any] | None
) -> Tensor:
    if target_params is not None:
        with torch.no_grad():  # unclipped, so the hidden parameters reproduce it exactly
            return efusion.exposure_fusion(frames, **dict(target_params))
    return tonemap(radiance, operator, **dict(options))


def _check_render_options(tonemap_name: str, target_params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if tonemap_name not in OPERATORS:
        raise ValueError(f"tonemap must be one of {sorted(OPERATORS)}, got {tonemap_name!r}")
    if target_params is None:
        return None
    try:
        return efusion_io.validate_params(dict(target_params), source="target_params")
    except efusion_io.ParamsError as error:
        raise ValueError(str(error)) from None


# ----------------------------------------------------------------------------------------------
# Procedural scenes


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
        self.size = _size_pair(size, "size")
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
        self.target_params = _check_render_options(tonemap, target_params)
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
            item["target"] = _target_from(frames, radiance, self.tonemap, self.tonemap_options, self.target_params)
        item["name"] = f"scene{scene_seed}"
        return item

    def _load(self, index: int, rng: torch.Generator) -> dict[str, Any]:
        if index in self._items:
            return dict(self._items[index])
        scene_seed = int(torch.randint(0, 2**31 - 1, (), generator=rng)) if self.resample else self.seed + index
        return self.render(scene_seed, target=not self._fuses_after_augment)


# ----------------------------------------------------------------------------------------------
# Radiance maps on disk


def _expand_files(files: Sequence[str], suffixes: Sequence[str]) -> list[Path]:
    """Files, folders (their files with ``suffixes``) and glob patterns -> sorted unique paths."""
    out: list[Path] = []
    for entry in files:
        entry = os.path.expanduser(str(entry))
        if any(ch in entry for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(entry))
            if not matches:
                raise DatasetError(f"{entry}: the pattern matches no file")
            out.extend(p for p in matches if p.suffix.lower() in suffixes)
            continue
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise DatasetError(f"{path}: no radiance map in the folder (looked for {', '.join(suffixes)})")
            out.extend(found)
        elif path.exists():
            out.append(path)
        else:
            raise DatasetError(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(out))
    if not unique:
        raise DatasetError(f"no radiance maps found in {list(files)}")
    return unique


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
        self.target_params = _check_render_options(tonemap, target_params)
        self._maps: list[dict[str, Any]] = []

    def _prepare(self) -> None:
        from efusion import synthetic

        paths = _expand_files(self.files, RADIANCE_SUFFIXES)
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
                item["target"] = _target_from(frames, radiance, self.tonemap, self.tonemap_options, self.target_params)
            item["name"] = path.stem
            self._maps.append(item)

    def _length(self) -> int:
        return len(self._maps) * self.crops_per_map

    def _load(self, index: int, rng: torch.Generator) -> dict[str, Any]:
        item = dict(self._maps[index // self.crops_per_map])
        if self.crops_per_map > 1:
            item["name"] = f"{item['name']}_{index % self.crops_per_map}"
        return item


# ----------------------------------------------------------------------------------------------
# Real brackets in folders


class SceneFolders(SceneDataset):
    """Real brackets: one folder per scene with its frames and a reference or a radiance map.

    In each scene folder, image files (``.jpg``, ``.png``, ``.tif`` ...) are the frames, except
    one whose name (without suffix) is among ``reference_names`` (``reference.png``,
    ``gt.jpg`` ...), which is the target; or the target comes from a radiance map in the folder
    (``.hdr``/``.exr``, tone-mapped by ``tonemap``); or, with ``reference_dir``, from
    ``<reference_dir>/<scene>.<ext>`` (the SICE layout: ``Dataset_Part1/<n>/`` and
    ``Dataset_Part1/Label/<n>.JPG``).

    :meth:`setup` checks every scene before training starts: an empty folder, a missing or
    ambiguous reference, frames of different sizes, a reference of another size and
    unreadable files raise :class:`DatasetError` naming the file.

    Args:
        root: folder whose sub-folders are scenes (folders without images are skipped, so
            ``root`` may hold a label folder too), or ``None`` with ``scenes``.
        scenes: explicit scene folders (instead of, or besides, ``root``).
        reference_names: file stems taken as the reference image.
        reference_dir: folder of reference images named after the scenes.
        require_target: fail when a scene has no reference (``False`` for prediction or the
            ``mef_ssim`` loss).
        frames: indices of the frames to use, in name order (negative from the end); ``None``
            for all.
        ignore_color: 8-bit RGB colour marking pixels to ignore (e.g. ``[0, 0, 255]`` for the
            shifted borders of Debevec's memorial frames); they get mask 0.
        tonemap, tonemap_options: operator for scenes whose target is a radiance map.
        cache: keep decoded scenes in memory (training); ``False`` decodes on demand.
        crops_per_scene: items per scene (with ``crop``: that many crops of each scene).
        crop, flip, seed: see :class:`SceneDataset`.
    """

    def __init__(
        self,
        root: str | None = None,
        scenes: Sequence[str] | None = None,
        reference_names: Sequence[str] = REFERENCE_NAMES,
        reference_dir: str | None = None,
        require_target: bool = True,
        frames: Sequence[int] | None = None,
        ignore_color: Sequence[int] | None = None,
        tonemap: str = "reinhard",
        tonemap_options: dict[str, Any] | None = None,
        cache: bool = True,
        crops_per_scene: int = 1,
        crop: int | Sequence[int] | None = None,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(crop=crop, flip=flip, seed=seed)
        if isinstance(crops_per_scene, bool) or not isinstance(crops_per_scene, int) or crops_per_scene < 1:
            raise ValueError(f"crops_per_scene must be an int >= 1, got {crops_per_scene!r}")
        self.crops_per_scene = crops_per_scene
        if root is None and not scenes:
            raise ValueError("SceneFolders needs root (a folder of scene folders) or scenes (a list of folders)")
        self.root = root
        self.scene_dirs = [str(s) for s in scenes or []]
        self.reference_names = tuple(n.lower() for n in reference_names)
        self.reference_dir = reference_dir
        self.require_target = bool(require_target)
        self.frame_indices = None if frames is None else [int(i) for i in frames]
        if ignore_color is not None:
            ignore_color = [int(c) for c in ignore_color]
            if len(ignore_color) != 3 or not all(0 <= c <= 255 for c in ignore_color):
                raise ValueError(f"ignore_color must be three 8-bit values [r, g, b], got {ignore_color!r}")
        self.ignore_color = ignore_color
        if tonemap not in OPERATORS:
            raise ValueError(f"tonemap must be one of {sorted(OPERATORS)}, got {tonemap!r}")
        self.tonemap = tonemap
        self.tonemap_options = dict(tonemap_options or {})
        self.cache = bool(cache)
        self._scenes: list[dict[str, Any]] = []
        self._items: dict[int, dict[str, Any]] = {}

    # -- discovery and checks ----------------------------------------------------------------
    def _scene_folders(self) -> list[Path]:
        folders: list[Path] = []
        if self.root is not None:
            root = Path(self.root).expanduser()
            if not root.exists():
                raise DatasetError(f"{root}: no such folder")
            if not root.is_dir():
                raise DatasetError(f"{root}: not a folder")
            children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            folders.extend(p for p in children if self._has_images(p) and not self._is_reference_dir(p))
            if not folders:
                raise DatasetError(f"{root}: no scene folders with images inside (expected {root}/<scene>/<frames>)")
        for entry in self.scene_dirs:
            path = Path(entry).expanduser()
            if not path.exists():
                raise DatasetError(f"{path}: no such scene folder")
            if not path.is_dir():
                raise DatasetError(f"{path}: not a folder (a scene is a folder of frames)")
            folders.append(path)
        unique: dict[Path, Path] = {}
        for folder in folders:  # each folder once, however its path is spelled
            unique.setdefault(folder.resolve(), folder)
        folders = list(unique.values())
        # a scene is known by its folder's name: predictions are written as <name>.<format> and
        # reference_dir holds <name>.* files, so two scenes of one name would overwrite or skip
        named: dict[str, Path] = {}
        for folder in folders:
            if folder.name in named:
                raise DatasetError(
                    f"{named[folder.name]} and {folder}: two scenes named {folder.name!r} (results and references are "
                    f"named after the scene folder); rename one"
                )
            named[folder.name] = folder
        return folders

    def _is_reference_dir(self, folder: Path) -> bool:
        return self.reference_dir is not None and folder.resolve() == Path(self.reference_dir).expanduser().resolve()

    @staticmethod
    def _has_images(folder: Path) -> bool:
        suffixes = set(efusion_io.IMAGE_SUFFIXES) | set(RADIANCE_SUFFIXES)
        return any(p.suffix.lower() in suffixes for p in folder.iterdir() if p.is_file())

    def _split(self, folder: Path) -> dict[str, Any]:
        """Frames, reference image and radiance map of one scene folder (checked)."""
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in efusion_io.IMAGE_SUFFIXES]
        references = [p for p in images if p.stem.lower() in self.reference_names]
        frames = [p for p in images if p not in references]
        radiance = [p for p in files if p.suffix.lower() in RADIANCE_SUFFIXES]
        if not frames:
            raise DatasetError(
                f"{folder}: no frames in the scene folder (looked for {', '.join(efusion_io.IMAGE_SUFFIXES)} files "
                f"not named {'/'.join(self.reference_names)})"
            )
        if self.frame_indices is not None:
            try:
                frames = [frames[i] for i in self.frame_indices]
            except IndexError:
                raise DatasetError(
                    f"{folder}: frames={self.frame_indices} asks for more frames than the {len(frames)} found"
                ) from None
        if len(frames) < 2:
            raise DatasetError(f"{folder}: only one frame ({frames[0].name}); a bracket needs at least two")
        if self.reference_dir is not None:
            label_dir = Path(self.reference_dir).expanduser()
            references += [
                p for p in sorted(label_dir.glob(f"{folder.name}.*")) if p.suffix.lower() in efusion_io.IMAGE_SUFFIXES
            ]
        candidates = references + radiance
        if len(candidates) > 1:
            raise DatasetError(
                f"{folder}: more than one reference ({', '.join(str(p) for p in candidates)}); keep one"
            )
        if not candidates and self.require_target:
            where = f" or {label_dir}/{folder.name}.<ext>" if self.reference_dir is not None else ""
            raise DatasetError(
                f"{folder}: no reference image (looked for {'/'.join(self.reference_names)} with an image suffix, "
                f"a radiance map {'/'.join(RADIANCE_SUFFIXES)}{where})"
            )
        return {"folder": folder, "frames": frames, "reference": candidates[0] if candidates else None}

    def _prepare(self) -> None:
        self._scenes, self._items = [], {}  # a failed earlier attempt may have left some
        for folder in self._scene_folders():
            scene = self._split(folder)
            sizes = [(path, _image_size(path)) for path in scene["frames"]]
            first_path, first_size = sizes[0]
            for path, size in sizes[1:]:
                if size != first_size:
                    raise DatasetError(
                        f"{path}: frame is {size[1]}x{size[0]} but {first_path} is {first_size[1]}x{first_size[0]} "
                        "(all frames of a scene must have the same size)"
                    )
            reference = scene["reference"]
            if reference is not None:
                size = _image_size(reference)
                if size != first_size:
                    raise DatasetError(
                        f"{reference}: reference is {size[1]}x{size[0]} but the frames ({first_path}) are "
                        f"{first_size[1]}x{first_size[0]}"
                    )
            self._check_crop(*first_size, source=str(first_path))
            self._scenes.append(scene)
        if self.cache:
            for index in range(len(self._scenes)):
                self._items[index] = self._decode(index)

    def _length(self) -> int:
        return len(self._scenes) * self.crops_per_scene

    # -- decoding -----------------------------------------------------------------------------
    def _decode(self, index: int) -> dict[str, Any]:
        scene = self._scenes[index]
        try:
            bracket = efusion_io.read_bracket(scene["frames"])
        except efusion_io.ImageIOError as error:
            raise DatasetError(str(error)) from None
        frames, mask = bracket.frames, bracket.mask
        if self.ignore_color is not None:
            colour = torch.tensor(self.ignore_color, dtype=frames.dtype).view(1, 3, 1, 1)
            marked = ((frames * 255).round() == colour).all(dim=1, keepdim=True)
            keep = (~marked).to(frames.dtype)
            mask = keep if mask is None else mask * keep
        item: dict[str, Any] = {"frames": frames, "name": scene["folder"].name}
        if mask is not None:
            item["mask"] = mask
        reference = scene["reference"]
        if reference is not None:
            if reference.suffix.lower() in RADIANCE_SUFFIXES:
                target = tonemap(read_radiance(reference), self.tonemap, **self.tonemap_options)
            else:
                try:
                    target, _ = efusion_io.read_image(reference)
                except efusion_io.ImageIOError as error:
                    raise DatasetError(str(error)) from None
            if target.shape[0] != frames.shape[1]:
                target = target.expand(frames.shape[1], -1, -1) if target.shape[0] == 1 else target.mean(0, keepdim=True)
            item["target"] = target.contiguous()
        return item

    def _load(self, index: int, rng: torch.Generator) -> dict[str, Any]:
        scene = index // self.crops_per_scene
        item = dict(self._items[scene]) if scene in self._items else self._decode(scene)
        if self.crops_per_scene > 1:
            item["name"] = f"{item['name']}_{index % self.crops_per_scene}"
        return item


# ----------------------------------------------------------------------------------------------
# Sampling and batching


class EpochSampler(DistributedSampler):
    """A :class:`~torch.utils.data.DistributedSampler` that yields ``(index, epoch)`` pairs.

    Shuffling depends on ``(seed, epoch)`` only (as in ``DistributedSampler``), and the epoch
    travels with each index so a :class:`SceneDataset` draws its crops from ``(seed, epoch,
    index)``. Lightning calls :meth:`set_epoch` before every epoch, restores the epoch when it
    resumes, and keeps a ``DistributedSampler`` it is given instead of replacing it; with one
    process use ``num_replicas=1, rank=0``.
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        for index in super().__iter__():
            yield (index, epoch)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch items; when only some carry a ``mask``, the others get a mask of ones.

    Brackets with fewer frames than the longest of the batch are padded with black frames whose
    mask is 0 everywhere, which the fusion leaves out exactly (the result is that of the
    bracket's own frames). When only some scenes have a ``target`` (``require_target=False``),
    the batch has none: the target-free ``mef_ssim`` loss trains on it, without scores.
    """
    if any("target" in item for item in items) and not all("target" in item for item in items):
        items = [{k: v for k, v in item.items() if k != "target"} for item in items]
    counts = [item["frames"].shape[0] for item in items]
    longest = max(counts)
    if any("mask" in item for item in items) or min(counts) != longest:
        items = [dict(item) for item in items]  # the dataset may hand out cached dictionaries
        for item in items:
            frames = item["frames"]
            if "mask" not in item:
                item["mask"] = frames.new_ones((frames.shape[0], 1, *frames.shape[-2:]))
            missing = longest - frames.shape[0]
            if missing:
                item["frames"] = torch.cat([frames, frames.new_zeros((missing, *frames.shape[1:]))])
                item["mask"] = torch.cat([item["mask"], item["mask"].new_zeros((missing, *item["mask"].shape[1:]))])
    keys = set(items[0])
    for item in items[1:]:
        if set(item) != keys:
            raise DatasetError(f"items of one batch differ in keys: {sorted(keys)} vs {sorted(item)} ({item.get('name')})")
    try:
        return default_collate(items)
    except RuntimeError as error:
        names = [item.get("name") for item in items]
        raise DatasetError(
            f"cannot batch scenes {names}: {one_line(error)} (frames of different sizes need a crop, gray and colour "
            "scenes batch_size 1)"
        ) from None


class FusionDataModule(pl.LightningDataModule):
    """Train / val / test / predict datasets for :class:`training.module.FusionModule`.

    Each stage's dataset is any :class:`SceneDataset` (in a config: ``class_path`` and
    ``init_args``). ``setup`` reads and checks the datasets the stage needs, so bad data fails
    before the first step. Training uses an :class:`EpochSampler` over this rank's share.

    Args:
        train, val, test, predict: datasets per stage (``None``: the stage has no data).
        batch_size: training batch size per process.
        eval_batch_size: batch size for validation and test (default ``batch_size``); predict
            always uses 1 (brackets can differ in size).
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle.
    """

    def __init__(
        self,
        train: SceneDataset | None = None,
        val: SceneDataset | None = None,
        test: SceneDataset | None = None,
        predict: SceneDataset | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.datasets = {"train": train, "val": val, "test": test, "predict": predict}
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"data.{name} must be a whole number >= 1, got {value!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers must be a whole number >= 0, got {num_workers!r}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)

    _STAGES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}

    def setup(self, stage: str | None = None) -> None:
        stage = str(getattr(stage, "value", stage) or "fit")  # Lightning passes a str enum
        names = self._STAGES.get(stage, ("train", "val", "test", "predict"))
        required = names[0]
        if self.datasets[required] is None:
            raise DatasetError(f"the {stage} stage needs data: set data.{required} in the config")
        for name in names:
            dataset = self.datasets[name]
            if dataset is not None:
                dataset.setup()
                if len(dataset) == 0:
                    raise DatasetError(f"data.{name} ({type(dataset).__name__}) is empty")

    def _loader(self, name: str, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(
            self.datasets[name],
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=False,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(self.datasets["train"], num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed)
        return self._loader("train", self.batch_size, sampler=sampler)

    def val_dataloader(self):
        return [] if self.datasets["val"] is None else self._loader("val", self.eval_batch_size)

    def test_dataloader(self):
        return [] if self.datasets["test"] is None else self._loader("test", self.eval_batch_size)

    def predict_dataloader(self):
        return self._loader("predict", 1)
