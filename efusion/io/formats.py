"""The image formats efusion reads and writes: one table from file suffix to format.

Every other place that needs a suffix, a format or a bit depth derives it from these tables
(reading, writing, folder listing, the command line's ``--format``, the training's previews).
"""
from __future__ import annotations

__all__ = ["DEPTHS", "FORMATS", "IMAGE_SUFFIXES", "OUTPUT_FORMATS"]

#: file suffix (lower case) -> format name, for reading and writing
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}
#: file suffixes read as frames (case-insensitive)
IMAGE_SUFFIXES = tuple(FORMATS)
#: bit depths each output format can hold (32 = float32)
DEPTHS = {"JPEG": (8,), "PNG": (8, 16), "TIFF": (8, 16, 32)}
#: short names of the output formats (``efusion fuse --format``, the training's image writer): each
#: is its format's usual suffix without the dot, so ``"." + name`` is a key of :data:`FORMATS`
OUTPUT_FORMATS = ("png", "jpg", "tif")
