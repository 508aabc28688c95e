"""Real brackets in folders: :class:`SceneFolders` (SICE-style layouts, a reference or a radiance map per scene)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from efusion import io as efusion_io

from ..tonemap import OPERATORS, tonemap
from .base import SceneDataset
from .errors import DatasetError
from .readers import RADIANCE_SUFFIXES, image_size, read_radiance

__all__ = ["REFERENCE_NAMES", "SceneFolders"]


#: file stems taken as a scene's reference image (case-insensitive)
REFERENCE_NAMES = ("reference", "ref", "label", "gt", "target")


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
            sizes = [(path, image_size(path)) for path in scene["frames"]]
            first_path, first_size = sizes[0]
            for path, size in sizes[1:]:
                if size != first_size:
                    raise DatasetError(
                        f"{path}: frame is {size[1]}x{size[0]} but {first_path} is {first_size[1]}x{first_size[0]} "
                        "(all frames of a scene must have the same size)"
                    )
            reference = scene["reference"]
            if reference is not None:
                size = image_size(reference)
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
