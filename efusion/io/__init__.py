"""Image files in and out: brackets from disk, results to disk, and parameter files.

Reading: JPEG, PNG (8 and 16 bit) and TIFF (8, 16 bit and float). Integer samples are scaled by
their own maximum (uint8 / 255, uint16 / 65535, so 16-bit data keeps its precision); float TIFF
samples are taken as they are. EXIF orientation is applied, so a portrait phone frame comes out
upright. Gray frames stay one channel unless the bracket mixes gray and colour frames; an alpha
channel becomes the per-frame ``mask`` of :func:`efusion.exposure_fusion`.

Writing: PNG 8/16 bit, JPEG (8 bit, quality option), TIFF 8/16 bit and float32. Integer formats
are clipped to [0, 1] (optionally after :func:`robust_normalize`); float32 TIFF keeps the
unclamped values for HDR pipelines. Every write goes to a temporary file in the destination
folder that is renamed into place once complete, so an interrupted run never leaves a
half-written image, and an existing file is only replaced when asked to (``overwrite=True``).

Codecs are maintained libraries, imported when a function needs them (``import efusion`` needs
only torch): Pillow for JPEG and 8-bit PNG, tifffile for TIFF, and OpenCV for 16-bit PNG (Pillow
cannot decode or encode 16-bit colour PNG without dropping to 8 bit).

Every problem with a file raises :class:`ImageIOError`; its message names the file.

The package, one job per module:

- :mod:`~efusion.io.formats`: the suffix -> format table and the bit depths each format holds
- :mod:`~efusion.io.read`: reading images and brackets (decoding, scaling, orientation, alpha)
- :mod:`~efusion.io.write`: writing images (formats, bit depths, quality)
- :mod:`~efusion.io.metadata`: EXIF, ICC profile and efusion's record, read and carried into outputs
- :mod:`~efusion.io.files`: bracket folders and atomic, no-clobber writes
- :mod:`~efusion.io.display`: bringing a result into [0, 1] (clip, or the robust range)
- :mod:`~efusion.io.params`: parameter files (JSON, YAML)
- :mod:`~efusion.io.errors`: the errors above
"""
from __future__ import annotations

from .display import robust_normalize, to_display
from .errors import ImageIOError, OutputExistsError, ParamsError
from .files import list_frames
from .formats import FORMATS, IMAGE_SUFFIXES, OUTPUT_FORMATS
from .metadata import RECORD_KEY, ImageMetadata, read_metadata
from .params import PARAM_NAMES, read_params, validate_params, write_params
from .read import MAX_PIXELS, Bracket, LazyBracket, open_bracket, read_bracket, read_image
from .write import check_output, default_bit_depth, write_image

__all__ = [
    "FORMATS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "OUTPUT_FORMATS",
    "PARAM_NAMES",
    "RECORD_KEY",
    "Bracket",
    "ImageIOError",
    "ImageMetadata",
    "LazyBracket",
    "OutputExistsError",
    "ParamsError",
    "check_output",
    "default_bit_depth",
    "list_frames",
    "open_bracket",
    "read_bracket",
    "read_image",
    "read_metadata",
    "read_params",
    "robust_normalize",
    "to_display",
    "validate_params",
    "write_image",
    "write_params",
]
