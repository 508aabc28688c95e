"""Writing images: PNG 8/16 bit, JPEG (8 bit, quality option), TIFF 8/16 bit and float32.

Integer formats are clipped to [0, 1]; float32 TIFF keeps the unclamped values for HDR pipelines.
Files are written atomically (:func:`efusion.io.files.atomic_file`), with the metadata of
:mod:`efusion.io.metadata`.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import ImageIOError, output_exists
from .files import atomic_file
from .formats import DEPTHS, FORMATS
from .metadata import ImageMetadata, png_with_metadata, tiff_tags

__all__ = ["check_output", "default_bit_depth", "write_image"]



def default_bit_depth(path: str | os.PathLike, source_bit_depth: int = 8) -> int:
    """Bit depth an output gets when none is asked for: 8 for JPEG; for PNG 16 when the
    inputs had 16 bits or more; for TIFF the inputs' depth (float inputs give float32)."""
    fmt = _output_format(Path(path))
    if fmt == "JPEG":
        return 8
    if fmt == "PNG":
        return 16 if source_bit_depth >= 16 else 8
    return source_bit_depth if source_bit_depth in (8, 16, 32) else 8


def _output_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageIOError(f"{path}: unsupported output format {path.suffix or '(no suffix)'!r} (use .png, .jpg or .tif)")
    return fmt


def check_output(path: str | os.PathLike, bit_depth: int | None = None) -> int:
    """Check that ``path`` names a format that can hold ``bit_depth``; returns the depth used.

    Raises:
        ImageIOError: unsupported suffix, or a depth the format cannot hold.
    """
    path = Path(path)
    fmt = _output_format(path)
    depth = default_bit_depth(path) if bit_depth is None else bit_depth
    if depth not in DEPTHS[fmt]:
        kinds = {8: "8-bit", 16: "16-bit", 32: "float32"}
        can = " or ".join(kinds[d] for d in DEPTHS[fmt])
        hint = "; use .png or .tif for 16 bit, .tif for float32" if fmt != "TIFF" else ""
        raise ImageIOError(f"{path}: {fmt} holds {can} samples, not {kinds.get(depth, depth)}{hint}")
    return depth


def write_image(
    path: str | os.PathLike,
    image: Tensor,
    *,
    bit_depth: int | None = None,
    quality: int = 95,
    overwrite: bool = False,
    metadata: ImageMetadata | None = None,
) -> Path:
    """Write an image atomically; the format follows the suffix (.png, .jpg/.jpeg, .tif/.tiff).

    Integer depths clip to [0, 1] and round to the nearest code value (NaN becomes 0); float32
    (TIFF only) stores the values as they are, unclamped. The file appears complete or not at
    all: it is written to a hidden temporary file in the same folder and renamed into place.
    Without ``overwrite`` that last step is a no-clobber hard link, so when several processes
    (e.g. distributed ranks) write the same path, exactly one succeeds and the others get
    :class:`OutputExistsError`.

    Args:
        path: output file; its folder must exist.
        image: ``[C, H, W]`` (C = 1 or 3) or ``[H, W]``, float.
        bit_depth: 8, 16 or 32 (float32); default :func:`default_bit_depth` of the path.
        quality: JPEG quality, 1 to 100.
        overwrite: replace an existing file; without it an existing file is an error.
        metadata: EXIF, ICC profile and efusion record to store (see :func:`read_metadata`):
            all three in JPEG (APP1, APP2, comment) and PNG (eXIf, iCCP, tEXt chunks); in TIFF
            the ICC profile, the record (ImageDescription) and the EXIF fields that are TIFF
            tags (Make, Model, Software, DateTime, Artist, Copyright).

    Returns:
        the path written.

    Raises:
        OutputExistsError: the file exists and ``overwrite`` is false.
        ImageIOError: unsupported format or depth, or the folder is not writable.
    """
    import numpy as np

    path = Path(path)
    depth = check_output(path, bit_depth)
    fmt = FORMATS[path.suffix.lower()]
    if not isinstance(image, Tensor) or not image.is_floating_point():
        raise TypeError(f"image must be a floating-point tensor, got {getattr(image, 'dtype', type(image).__name__)}")
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be [C, H, W] with C = 1 or 3, or [H, W], got shape {list(image.shape)}")
    if fmt == "JPEG" and not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100, got {quality}")
    if path.exists() and not overwrite:
        raise output_exists(path)

    pixels = image.detach().to("cpu", torch.float32)
    if depth == 32:
        array = pixels.permute(1, 2, 0).contiguous().numpy()
    else:
        top = 255.0 if depth == 8 else 65535.0
        quantised = torch.nan_to_num(pixels, nan=0.0).clamp_(0.0, 1.0).mul_(top).round_()
        array = quantised.permute(1, 2, 0).numpy().astype(np.uint8 if depth == 8 else np.uint16)
        del quantised
    gray = array.shape[2] == 1
    if gray:
        array = array[:, :, 0]

    metadata = metadata or ImageMetadata()
    with atomic_file(path, overwrite=overwrite) as fh:
        if fmt == "TIFF":
            import tifffile

            tifffile.imwrite(
                fh, array, photometric="minisblack" if gray else "rgb", compression="zlib",
                description=metadata.record, metadata=None, extratags=tiff_tags(metadata),
            )
        elif fmt == "PNG":
            if depth == 16:
                import cv2

                ok, encoded = cv2.imencode(".png", array if gray else np.ascontiguousarray(array[:, :, ::-1]))
                if not ok:
                    raise ImageIOError(f"{path}: OpenCV could not encode a 16-bit PNG")
                data = encoded.tobytes()
            else:
                from PIL import Image

                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="PNG")
                data = buffer.getvalue()
            fh.write(png_with_metadata(data, metadata))
        else:
            from PIL import Image

            options: dict[str, Any] = {"quality": int(quality)}
            if metadata.exif:
                options["exif"] = metadata.exif
            if metadata.icc:
                options["icc_profile"] = metadata.icc
            if metadata.record:
                options["comment"] = metadata.record.encode("latin-1")
            Image.fromarray(array).save(fh, format=fmt, **options)
    return path


