"""Reading training data from disk: radiance maps, image sizes, file lists."""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from efusion import io as efusion_io
from efusion.io.errors import one_line

from .errors import DatasetError

__all__ = ["RADIANCE_SUFFIXES", "expand_files", "image_size", "read_radiance"]


#: radiance-map files: Radiance RGBE and OpenEXR
RADIANCE_SUFFIXES = (".hdr", ".pic", ".exr")


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
        except Exception as error:  # noqa: BLE001 - the bindings raise plain RuntimeError / Exception
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


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, upright (EXIF), from its header (a radiance map is read)."""
    if path.suffix.lower() in RADIANCE_SUFFIXES:
        return tuple(read_radiance(path).shape[-2:])
    try:
        return tuple(efusion_io.open_bracket([path]).shape[-2:])
    except efusion_io.ImageIOError as error:
        raise DatasetError(str(error)) from None


def expand_files(files: Sequence[str], suffixes: Sequence[str]) -> list[Path]:
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
