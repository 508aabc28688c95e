"""Image metadata: what an output carries besides pixels (EXIF, ICC profile, efusion's record),
read from frames and written as PNG chunks, TIFF tags or the JPEG comment; and the Pillow access
both reading and metadata need."""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from .errors import ImageIOError, one_line
from .formats import FORMATS, IMAGE_SUFFIXES

__all__ = ["EXIF_ORIENTATION", "RECORD_KEY", "ImageMetadata", "pillow_unlimited", "png_with_metadata", "read_metadata",
           "tiff_tags"]

#: the EXIF orientation tag
EXIF_ORIENTATION = 0x0112
_PILLOW_LIMIT_LOCK = threading.RLock()


@contextlib.contextmanager
def pillow_unlimited() -> Iterator[None]:
    """Pillow without its own decompression-bomb check, which :func:`open_bracket` makes (with
    a limit the caller can change) from the header: Pillow's global limit cannot be raised per call."""
    from PIL import Image

    with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved



#: key of efusion's record (how an output was made) in a PNG text chunk; also the prefix of the
#: JPEG comment and TIFF ImageDescription that hold it
RECORD_KEY = "efusion"
_EXIF_KEPT_IN_TIFF = {0x010F: "Make", 0x0110: "Model", 0x0131: "Software", 0x0132: "DateTime", 0x013B: "Artist",
                      0x8298: "Copyright"}
_TIFF_ICC_TAG = 34675


@dataclass(frozen=True)
class ImageMetadata:
    """What :func:`write_image` can carry besides pixels.

    Attributes:
        exif: EXIF as Pillow's ``Image.Exif.tobytes()`` gives it (``b"Exif\0\0"`` + a TIFF
            structure), or ``None``.
        icc: the ICC colour profile, or ``None``.
        record: efusion's record of how the image was made (a JSON text), or ``None``.
    """

    exif: bytes | None = None
    icc: bytes | None = None
    record: str | None = None


def read_metadata(path: str | os.PathLike) -> ImageMetadata:
    """EXIF, ICC profile and efusion record of an image file.

    The EXIF orientation is reset to 1 (upright): :func:`read_bracket` applies it to the pixels,
    so a result made from them must not be turned again by a viewer. EXIF is read from JPEG and
    PNG files (TIFF frames give their ICC profile only).

    Raises:
        ImageIOError: the file cannot be read.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageIOError(f"{path}: unsupported format {path.suffix or '(no suffix)'!r} (expected {', '.join(IMAGE_SUFFIXES)})")
    try:
        if fmt == "TIFF":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                tags = cast("tifffile.TiffPage", tif.pages[0]).tags
                icc = tags.get(_TIFF_ICC_TAG)
                description = tags.get("ImageDescription")
                record = description.value if description is not None else None
                return ImageMetadata(
                    None, bytes(icc.value) if icc is not None else None,
                    record if isinstance(record, str) and record.startswith("{\"" + RECORD_KEY) else None,
                )
        from PIL import Image

        with pillow_unlimited(), Image.open(path, formats=["JPEG", "PNG"]) as image:
            exif = image.getexif()
            icc = image.info.get("icc_profile") or None
            if image.format == "PNG":
                record = image.info.get(RECORD_KEY)
            else:
                comment = image.info.get("comment", b"")
                text = comment.decode("latin-1") if isinstance(comment, bytes) else str(comment)
                record = text if text.startswith("{\"" + RECORD_KEY) else None
        if len(exif):
            exif[EXIF_ORIENTATION] = 1
        return ImageMetadata(exif.tobytes() if len(exif) else None, icc, record)
    except ImageIOError:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure is a bad file
        raise ImageIOError(f"{path}: cannot read its metadata ({one_line(error)})") from None


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_metadata(data: bytes, metadata: ImageMetadata) -> bytes:
    """An encoded PNG with iCCP, eXIf and tEXt chunks inserted after IHDR (so readers see them
    before the pixels), as the PNG specification (3rd edition) orders them."""
    import zlib

    chunks = b""
    if metadata.icc:
        chunks += _png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(metadata.icc))
    if metadata.exif:
        exif = metadata.exif[6:] if metadata.exif.startswith(b"Exif\0\0") else metadata.exif
        chunks += _png_chunk(b"eXIf", exif)
    if metadata.record:
        chunks += _png_chunk(b"tEXt", RECORD_KEY.encode("latin-1") + b"\0" + metadata.record.encode("latin-1"))
    end_of_ihdr = 8 + 8 + 13 + 4  # signature, IHDR length/type, IHDR data, CRC
    return data[:end_of_ihdr] + chunks + data[end_of_ihdr:]


def tiff_tags(metadata: ImageMetadata) -> list[tuple]:
    """tifffile ``extratags``: the ICC profile, and the EXIF fields TIFF has as its own tags."""
    tags: list[tuple] = []
    if metadata.icc:
        tags.append((_TIFF_ICC_TAG, 7, len(metadata.icc), metadata.icc, True))
    if metadata.exif:
        from PIL import Image

        exif = Image.Exif()
        exif.load(metadata.exif)
        for code in _EXIF_KEPT_IN_TIFF:
            value = exif.get(code)
            if isinstance(value, str) and value and value.isascii():
                tags.append((code, 2, 0, value, True))
    return tags


