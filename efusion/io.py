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
"""
from __future__ import annotations

import collections.abc
import contextlib
import io
import json
import math
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from .params import NAMES, check_value

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "PARAM_NAMES",
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
    "validate_params",
    "write_image",
    "write_params",
]

#: file suffixes read as frames (case-insensitive)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
#: keys a parameter file may hold: the keyword arguments of :func:`efusion.exposure_fusion`
PARAM_NAMES = (*NAMES, "preset")

#: frames with more pixels are refused unless ``max_pixels`` says otherwise: Pillow's own refusal
#: point (twice its ``MAX_IMAGE_PIXELS`` warning), a guard against decompression bombs (a small
#: file that claims a huge size), applied here to every format
MAX_PIXELS = 2 * 89_478_485

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}
#: bit depths each output format can hold (32 = float32)
_DEPTHS = {"JPEG": (8,), "PNG": (8, 16), "TIFF": (8, 16, 32)}
_EXIF_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageIOError(ValueError):
    """An image file cannot be read or written; the message names the file and says why.

    Attributes:
        errno: the operating system's error number when an OS error caused it (e.g.
            ``errno.ENOSPC`` for a full disk), else ``None``.
    """

    errno: int | None = None


def _os_error(message: str, error: OSError) -> ImageIOError:
    """An :class:`ImageIOError` for an OS error, keeping its errno."""
    wrapped = ImageIOError(message)
    wrapped.errno = error.errno
    return wrapped


class OutputExistsError(ImageIOError):
    """The output file exists and overwriting was not asked for."""


class ParamsError(ValueError):
    """A parameter file or value is not usable; the message names the file (or flag) and key."""


# ----------------------------------------------------------------------------------------------
# Reading


@dataclass
class Bracket:
    """Frames of one bracket, read from files.

    Attributes:
        frames: ``[N, C, H, W]`` float, integer samples scaled to [0, 1]; C = 1 (every frame
            gray) or 3.
        mask: ``[N, 1, H, W]`` alpha of the frames (1 where a frame has no alpha channel), or
            ``None`` when no frame has one. Pass it as ``mask=`` to the fusion.
        paths: the frame files, in stack order.
        bit_depth: deepest sample type among the files: 8, 16 or 32 (float).
    """

    frames: Tensor
    mask: Tensor | None
    paths: tuple[Path, ...]
    bit_depth: int


@dataclass(frozen=True)
class _FrameInfo:
    """What a file's header says, before any pixel is decoded."""

    path: Path
    codec: str  # "pillow", "png16" (OpenCV) or "tiff"
    height: int  # upright, after the EXIF orientation
    width: int
    channels: int  # colour channels: 1 or 3
    alpha: bool
    bit_depth: int  # 8, 16 or 32 (float)
    orientation: int  # EXIF orientation, 1 = upright as stored

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def list_frames(folder: str | os.PathLike) -> list[Path]:
    """Image files of a bracket folder (:data:`IMAGE_SUFFIXES`), sorted by name.

    Hidden files (names starting with ``.``, such as unfinished writes) are skipped.

    Raises:
        ImageIOError: the folder does not exist, is not a folder, or holds no image file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ImageIOError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ImageIOError(f"{folder}: not a folder")
    try:
        frames = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
    except OSError as error:
        raise ImageIOError(f"{folder}: cannot list the folder ({error.strerror or error})") from None
    if not frames:
        if _holds_bracket_folders(folder):  # a shoot of brackets given as one bracket
            pattern = os.path.join(str(folder), "*", "")
            raise ImageIOError(
                f"{folder}: holds folders of images, not images: give each bracket folder, e.g. {pattern}"
            )
        raise ImageIOError(f"{folder}: no image files in the folder (looked for {', '.join(IMAGE_SUFFIXES)})")
    return frames


def _holds_bracket_folders(folder: Path) -> bool:
    """Whether some sub-folder of ``folder`` holds image files."""
    try:
        for sub in folder.iterdir():
            if sub.is_dir() and not sub.name.startswith("."):
                if any(p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") for p in sub.iterdir()):
                    return True
    except OSError:
        return False
    return False


def read_image(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device=None, max_pixels: int | None = MAX_PIXELS
) -> tuple[Tensor, Tensor | None]:
    """Read one image file as float.

    Args:
        path: a JPEG, PNG or TIFF file.
        dtype, device: of the returned tensors.
        max_pixels: refuse a larger image (see :func:`read_bracket`).

    Returns:
        ``(image, alpha)``: image ``[C, H, W]`` with C = 1 (gray) or 3 (RGB), integer samples
        scaled to [0, 1] and float samples as stored; alpha ``[1, H, W]`` in [0, 1], or ``None``.
    """
    bracket = read_bracket([path], dtype=dtype, device=device, max_pixels=max_pixels)
    alpha = None if bracket.mask is None else bracket.mask[0]
    return bracket.frames[0], alpha


def read_bracket(
    paths: Sequence[str | os.PathLike], *, dtype: torch.dtype = torch.float32, device=None, max_pixels: int | None = MAX_PIXELS
) -> Bracket:
    """Read the frames of one bracket into one stack.

    Every header is checked first (format, size after EXIF orientation), so a bracket with a
    missing file or frames of different sizes fails before any pixel is decoded. Frames are then
    decoded one at a time straight into a stack allocated once on ``device``: memory holds the
    float stack plus one decoded frame, never all frames twice. :func:`open_bracket` reads
    frames one at a time instead, without a stack.

    Args:
        paths: frame files (at least one); the stack keeps their order.
        dtype: floating dtype of the stack.
        device: where the stack lives (default CPU).
        max_pixels: refuse frames with more pixels than this (default :data:`MAX_PIXELS`, Pillow's
            decompression-bomb limit, for every format); ``None`` for no limit.

    Returns:
        a :class:`Bracket`.

    Raises:
        ImageIOError: a file is missing, unreadable, truncated, of an unsupported format, or
            the frames differ in size, or a frame has more than ``max_pixels`` pixels.
    """
    _check_float_dtype(dtype)
    return open_bracket(paths, max_pixels=max_pixels).read(dtype=dtype, device=device)


def open_bracket(paths: Sequence[str | os.PathLike], *, max_pixels: int | None = MAX_PIXELS) -> LazyBracket:
    """Check the headers of a bracket's frames; decode no pixel yet.

    Raises the errors of :func:`read_bracket` that headers reveal (missing file, unsupported
    format, frames of different sizes); decoding errors come when a frame is read.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ImageIOError("a bracket needs at least one frame, got none")
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a whole number >= 1 or None, got {max_pixels!r}")
    infos = [_probe(p) for p in paths]
    for info in infos:
        if max_pixels is not None and info.width * info.height > max_pixels:
            raise ImageIOError(
                f"{info.path}: {info.size} is {info.width * info.height} pixels, more than the limit of {max_pixels} "
                "that guards against decompression bombs (raise it with --max-pixels N, or max_pixels=)"
            )
    first = infos[0]
    for info in infos[1:]:
        if (info.height, info.width) != (first.height, first.width):
            raise ImageIOError(
                f"{info.path}: frame is {info.size} but {first.path} is {first.size} "
                "(all frames of a bracket must have the same size)"
            )
    return LazyBracket(infos)


class LazyBracket:
    """A bracket whose headers are checked and whose frames are decoded when asked for.

    Made by :func:`open_bracket`. :meth:`frames` and :meth:`masks` are sequences that decode a
    frame each time it is indexed, so memory holds one decoded frame whatever the number of
    frames; this is what :func:`efusion.fuse_frames` streams over (it reads the frames twice,
    so each file is decoded twice)::

        bracket = open_bracket(paths)
        fused = efusion.fuse_frames(bracket.frames(), masks=bracket.masks())

    Attributes:
        paths: the frame files, in stack order.
        shape: ``(C, H, W)`` of every frame: C = 1 when every frame is gray, else 3.
        has_alpha: whether any frame has an alpha channel.
        bit_depth: deepest sample type among the files: 8, 16 or 32 (float).
    """

    def __init__(self, infos: Sequence[_FrameInfo]) -> None:
        self._infos = tuple(infos)
        self.paths = tuple(info.path for info in self._infos)
        channels = 3 if any(info.channels == 3 for info in self._infos) else 1
        self.shape = (channels, self._infos[0].height, self._infos[0].width)
        self.has_alpha = any(info.alpha for info in self._infos)
        self.bit_depth = max(info.bit_depth for info in self._infos)
        self._last_alpha: tuple[int, torch.dtype, Any, Tensor] | None = None

    def __len__(self) -> int:
        return len(self._infos)

    def read(self, *, dtype: torch.dtype = torch.float32, device=None) -> Bracket:
        """All frames in one stack (see :func:`read_bracket`)."""
        _check_float_dtype(dtype)
        count, (_, height, width) = len(self), self.shape
        frames = torch.empty((count, *self.shape), dtype=dtype, device=device)
        mask = torch.ones((count, 1, height, width), dtype=dtype, device=device) if self.has_alpha else None
        for index, info in enumerate(self._infos):
            _decode_into(info, frames[index], None if mask is None else mask[index])
        return Bracket(frames, mask, self.paths, self.bit_depth)

    def read_frame(self, index: int, *, dtype: torch.dtype = torch.float32, device=None) -> tuple[Tensor, Tensor | None]:
        """Decode one frame: ``(frame [C, H, W], alpha [1, H, W])``, scaled as in :func:`read_bracket`.

        alpha is ones for a frame without an alpha channel in a bracket where another frame has
        one, and ``None`` when no frame has one.
        """
        _check_float_dtype(dtype)
        index = range(len(self))[index]
        info = self._infos[index]
        frame = torch.empty(self.shape, dtype=dtype, device=device)
        alpha = torch.ones((1, *self.shape[1:]), dtype=dtype, device=device) if self.has_alpha else None
        _decode_into(info, frame, alpha)
        # masks() asks for this alpha right after the frame: keep it rather than decode the file again
        self._last_alpha = None if alpha is None else (index, dtype, device, alpha)
        return frame, alpha

    def frames(self, *, dtype: torch.dtype = torch.float32, device=None) -> Sequence[Tensor]:
        """The frames ``[C, H, W]`` as a sequence that decodes a frame each time it is indexed."""
        _check_float_dtype(dtype)
        return _LazyFrames(self, dtype, device, alpha=False)

    def masks(self, *, dtype: torch.dtype = torch.float32, device=None) -> Sequence[Tensor] | None:
        """The alpha ``[1, H, W]`` of each frame, decoded when indexed (reusing the alpha decoded
        with the same frame just before), or ``None`` when no frame has an alpha channel."""
        _check_float_dtype(dtype)
        return _LazyFrames(self, dtype, device, alpha=True) if self.has_alpha else None

    def _alpha(self, index: int, dtype: torch.dtype, device) -> Tensor:
        index = range(len(self))[index]
        last, self._last_alpha = self._last_alpha, None
        if last is not None and last[:3] == (index, dtype, device):
            return last[3]
        alpha = self.read_frame(index, dtype=dtype, device=device)[1]
        self._last_alpha = None
        return alpha


class _LazyFrames(collections.abc.Sequence):
    """Frames (or their alpha) of a :class:`LazyBracket`, decoded on each access."""

    def __init__(self, bracket: LazyBracket, dtype: torch.dtype, device, *, alpha: bool) -> None:
        self._bracket, self._dtype, self._device, self._alpha = bracket, dtype, device, alpha

    def __len__(self) -> int:
        return len(self._bracket)

    def __getitem__(self, index):
        if not isinstance(index, int):
            raise TypeError(f"frames are indexed by an int, got {type(index).__name__}")
        if self._alpha:
            return self._bracket._alpha(index, self._dtype, self._device)
        return self._bracket.read_frame(index, dtype=self._dtype, device=self._device)[0]


def _check_float_dtype(dtype: torch.dtype) -> None:
    if not torch.empty((), dtype=dtype).is_floating_point():
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")


def _probe(path: Path) -> _FrameInfo:
    """Read a frame's header: size, channels, alpha, sample depth, orientation."""
    if not path.exists():
        raise ImageIOError(f"{path}: no such file")
    if path.is_dir():
        raise ImageIOError(f"{path}: is a folder, not an image file")
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageIOError(f"{path}: unsupported format {path.suffix or '(no suffix)'!r} (expected {', '.join(IMAGE_SUFFIXES)})")
    try:
        if fmt == "TIFF":
            return _probe_tiff(path)
        return _probe_pillow(path, fmt)
    except ImageIOError:
        raise
    except OSError as error:
        if error.filename is not None or isinstance(error, PermissionError):
            raise ImageIOError(f"{path}: cannot open ({error.strerror or error})") from None
        if type(error).__name__ == "UnidentifiedImageError":
            raise ImageIOError(f"{path}: not a {fmt} image, or a damaged one") from None
        raise ImageIOError(f"{path}: not a readable {fmt} image ({_one_line(error)})") from None
    except Exception as error:  # codecs raise SyntaxError, ValueError, struct.error, ... on bad data
        raise ImageIOError(f"{path}: not a readable {fmt} image ({_one_line(error)})") from None


@contextlib.contextmanager
def _pillow_unlimited() -> Iterator[None]:
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


_PILLOW_LIMIT_LOCK = threading.RLock()


def _probe_pillow(path: Path, fmt: str) -> _FrameInfo:
    from PIL import Image

    with _pillow_unlimited(), Image.open(path, formats=["JPEG", "PNG"]) as image:  # a mislabelled suffix still reads
        fmt = image.format
        orientation = _valid_orientation(image.getexif().get(_EXIF_ORIENTATION, 1))
        width, height = image.size
        mode = image.mode
        transparency = "transparency" in image.info
    codec, bit_depth = "pillow", 8
    if fmt == "PNG":
        png_depth, colour_type = _png_header(path)
        if png_depth == 16:
            codec, bit_depth = "png16", 16
            channels, alpha = (1 if colour_type in (0, 4) else 3), colour_type in (4, 6)
            return _FrameInfo(path, codec, *_upright(height, width, orientation), channels, alpha, bit_depth, orientation)
    if mode in ("L", "1", "I;16", "I;16B", "I;16L", "I", "F"):
        channels, alpha = 1, transparency
    elif mode in ("LA", "La"):
        channels, alpha = 1, True
    elif mode in ("RGBA", "RGBa", "PA"):
        channels, alpha = 3, True
    else:  # RGB, P, CMYK, YCbCr, LAB, HSV: converted to RGB
        channels, alpha = 3, transparency
    if mode.startswith("I;16") or mode == "I":
        bit_depth = 16
    elif mode == "F":
        bit_depth = 32
    return _FrameInfo(path, codec, *_upright(height, width, orientation), channels, alpha, bit_depth, orientation)


def _png_header(path: Path) -> tuple[int, int]:
    """Bit depth and colour type from the PNG's IHDR chunk (Pillow hides 16-bit colour)."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise ImageIOError(f"{path}: not a readable PNG image (no PNG header)")
    return head[24], head[25]


def _probe_tiff(path: Path) -> _FrameInfo:
    import numpy as np
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tag = page.tags.get("Orientation")
        orientation = _valid_orientation(tag.value if tag is not None else 1)
        height, width = page.imagelength, page.imagewidth
        samples, photometric, dtype = page.samplesperpixel, int(page.photometric), page.dtype
        extras = len(page.extrasamples) if page.extrasamples else 0
        bits = page.bitspersample
    if photometric not in (1, 2, 6):  # MINISBLACK, RGB, YCBCR (decoded to RGB)
        raise ImageIOError(f"{path}: unsupported TIFF photometric interpretation {photometric} (expected gray or RGB)")
    colour = 1 if photometric == 1 else 3
    if samples < colour or (samples > colour and not extras):
        raise ImageIOError(f"{path}: unsupported TIFF layout ({samples} samples per pixel, photometric {photometric})")
    alpha = samples > colour  # the first extra sample; any further ones are ignored
    dtype = np.dtype(dtype) if dtype is not None else None
    if dtype == np.uint8:
        bit_depth = 8
    elif dtype == np.uint16:
        bit_depth = 16
    elif dtype is not None and dtype.kind == "f":
        bit_depth = 32
    else:
        kind = dtype if dtype is not None else f"{bits}-bit"
        raise ImageIOError(f"{path}: unsupported TIFF sample type {kind} (expected 8- or 16-bit unsigned, or float)")
    return _FrameInfo(path, "tiff", *_upright(height, width, orientation), colour, alpha, bit_depth, orientation)


def _valid_orientation(value) -> int:
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1  # an out-of-range tag is ignored, as Pillow does


def _upright(height: int, width: int, orientation: int) -> tuple[int, int]:
    return (width, height) if orientation >= 5 else (height, width)


def _decode_into(info: _FrameInfo, frame: Tensor, alpha: Tensor | None) -> None:
    """Decode one file into its slot of the stack (``[C, H, W]``) and of the mask."""
    try:
        array, associated = _decode(info)
    except ImageIOError:
        raise
    except MemoryError:
        raise
    except OSError as error:
        if error.filename is not None or isinstance(error, PermissionError):
            raise ImageIOError(f"{info.path}: cannot read ({error.strerror or error})") from None
        raise ImageIOError(f"{info.path}: cannot decode the image ({_one_line(error)})") from None
    except Exception as error:
        raise ImageIOError(f"{info.path}: cannot decode the image ({_one_line(error)})") from None
    array = _orient(array, info.orientation)
    if array.ndim == 2:
        array = array[:, :, None]
    height, width, samples = array.shape
    if (height, width) != tuple(frame.shape[-2:]):
        raise ImageIOError(f"{info.path}: decoded {width}x{height}, header said {info.size}")
    colour = samples - 1 if info.alpha else samples
    with warnings.catch_warnings():  # decoders hand out read-only buffers; we only read them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        source = torch.from_numpy(array).permute(2, 0, 1)
    scale = {8: 255.0, 16: 65535.0}.get(info.bit_depth)
    if scale == 65535.0 and frame.dtype not in (torch.float32, torch.float64):
        # half types cannot hold every 16-bit code value (float16 overflows above 65504): scale
        # in float64, then round once to the target type
        wide = torch.empty(frame.shape, dtype=torch.float64, device=frame.device)
        wide_alpha = None if alpha is None else torch.empty(alpha.shape, dtype=torch.float64, device=alpha.device)
        _fill(info, source, colour, scale, wide, wide_alpha, associated)
        frame.copy_(wide)
        if wide_alpha is not None and info.alpha:
            alpha.copy_(wide_alpha)
        return
    _fill(info, source, colour, scale, frame, alpha, associated)


def _fill(
    info: _FrameInfo, source: Tensor, colour: int, scale: float | None, frame: Tensor, alpha: Tensor | None, associated: bool
) -> None:
    """Decoded samples ``source`` ``[S, H, W]`` into ``frame`` and ``alpha``, scaled to [0, 1]."""
    # copy_ converts the integer samples exactly; one in-place division then scales them, which
    # gives bit-identical values to ``frames.float() / 255`` computed in memory
    if colour == frame.shape[0]:
        frame.copy_(source[:colour])
    elif colour == 1:  # a gray frame in a colour bracket
        frame.copy_(source[:1].expand(frame.shape[0], -1, -1))
    else:  # gray that the decoder expanded to RGB (OpenCV does so for 16-bit gray + alpha)
        frame.copy_(source[:1])
    if scale is not None:
        frame.div_(scale)
    if info.alpha and alpha is not None:
        alpha.copy_(source[colour:colour + 1])
        if scale is not None:
            alpha.div_(scale)
        if associated:  # premultiplied colour (TIFF ASSOCALPHA): recover straight colour
            frame.div_(torch.where(alpha > 0, alpha, torch.ones_like(alpha)))


def _decode(info: _FrameInfo):
    """Decoded samples ``[H, W]`` or ``[H, W, S]`` as stored (before orientation), and whether
    the alpha channel is premultiplied."""
    import numpy as np

    if info.codec == "tiff":
        import tifffile

        with tifffile.TiffFile(info.path) as tif:
            page = tif.pages[0]
            array = page.asarray()
            associated = bool(page.extrasamples) and int(page.extrasamples[0]) == 1
            if array.ndim == 3 and page.planarconfig == 2 and array.shape[0] == page.samplesperpixel:
                array = np.moveaxis(array, 0, -1)  # planar (SYX) to interleaved (YXS)
        if array.dtype.kind == "f" and array.dtype != np.float32:
            array = array.astype(np.float32)
        if array.ndim == 3:
            array = array[..., : info.channels + int(info.alpha)]
        return array, associated
    if info.codec == "png16":
        import cv2

        from PIL import Image

        data = info.path.read_bytes()  # read once: verified by Pillow, decoded by OpenCV
        with _pillow_unlimited(), Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.verify()  # checks every chunk's CRC and the end marker: catches truncation
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        finally:
            cv2.utils.logging.setLogLevel(level)
        del data
        if array is None:
            raise ImageIOError(f"{info.path}: cannot decode the PNG image")
        if array.ndim == 3:  # OpenCV's BGR(A) order to RGB(A)
            order = [2, 1, 0, 3][: array.shape[2]]
            array = array[:, :, order]
        return array, False
    from PIL import Image

    with _pillow_unlimited(), Image.open(info.path, formats=["JPEG", "PNG"]) as image:
        image.load()
        mode = image.mode
        if mode == "1":
            image = image.convert("L")
        elif mode in ("I;16B", "I;16L"):
            return np.asarray(image).astype(np.uint16), False
        elif mode == "I":
            return np.clip(np.asarray(image), 0, 65535).astype(np.uint16), False
        elif mode in ("La", "RGBa"):
            image = image.convert(mode.upper())
        elif mode in ("L", "RGB") and info.alpha:  # a tRNS colour key
            image = image.convert(mode + "A")
        elif mode not in ("L", "LA", "RGB", "RGBA", "I;16", "F"):
            image = image.convert("RGBA" if info.alpha else "RGB")
        return np.asarray(image), False


def _orient(array, orientation: int):
    """Apply an EXIF orientation (the transforms of Pillow's ``ImageOps.exif_transpose``)."""
    import numpy as np

    if orientation == 1:
        return array
    transforms = {
        2: lambda a: a[:, ::-1],  # mirrored horizontally
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # mirrored vertically
        5: lambda a: np.swapaxes(a, 0, 1),  # transposed
        6: lambda a: np.rot90(a, -1),  # rotated 90 counter-clockwise when stored: turn clockwise
        7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),  # transversed
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(transforms[orientation](array))


# ----------------------------------------------------------------------------------------------
# Metadata

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
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageIOError(f"{path}: unsupported format {path.suffix or '(no suffix)'!r} (expected {', '.join(IMAGE_SUFFIXES)})")
    try:
        if fmt == "TIFF":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                tags = tif.pages[0].tags
                icc = tags.get(_TIFF_ICC_TAG)
                description = tags.get("ImageDescription")
                record = description.value if description is not None else None
                return ImageMetadata(
                    None, bytes(icc.value) if icc is not None else None,
                    record if isinstance(record, str) and record.startswith("{\"" + RECORD_KEY) else None,
                )
        from PIL import Image

        with _pillow_unlimited(), Image.open(path, formats=["JPEG", "PNG"]) as image:
            exif = image.getexif()
            icc = image.info.get("icc_profile") or None
            if image.format == "PNG":
                record = image.info.get(RECORD_KEY)
            else:
                comment = image.info.get("comment", b"")
                text = comment.decode("latin-1") if isinstance(comment, bytes) else str(comment)
                record = text if text.startswith("{\"" + RECORD_KEY) else None
        if len(exif):
            exif[_EXIF_ORIENTATION] = 1
        return ImageMetadata(exif.tobytes() if len(exif) else None, icc, record)
    except ImageIOError:
        raise
    except Exception as error:
        raise ImageIOError(f"{path}: cannot read its metadata ({_one_line(error)})") from None


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_with_metadata(data: bytes, metadata: ImageMetadata) -> bytes:
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


def _tiff_tags(metadata: ImageMetadata) -> list[tuple]:
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


# ----------------------------------------------------------------------------------------------
# Writing


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
    fmt = _FORMATS.get(path.suffix.lower())
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
    if depth not in _DEPTHS[fmt]:
        kinds = {8: "8-bit", 16: "16-bit", 32: "float32"}
        can = " or ".join(kinds[d] for d in _DEPTHS[fmt])
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
    fmt = _FORMATS[path.suffix.lower()]
    if not isinstance(image, Tensor) or not image.is_floating_point():
        raise TypeError(f"image must be a floating-point tensor, got {getattr(image, 'dtype', type(image).__name__)}")
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be [C, H, W] with C = 1 or 3, or [H, W], got shape {list(image.shape)}")
    if fmt == "JPEG" and not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100, got {quality}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists (pass --force / overwrite=True to replace it)")

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
    with _atomic_file(path, overwrite=overwrite) as fh:
        if fmt == "TIFF":
            import tifffile

            tifffile.imwrite(
                fh, array, photometric="minisblack" if gray else "rgb", compression="zlib",
                description=metadata.record, metadata=None, extratags=_tiff_tags(metadata),
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
            fh.write(_png_with_metadata(data, metadata))
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


def robust_normalize(image: Tensor, *, black: float = 1.0, white: float = 1.0) -> Tensor:
    """Map an image into [0, 1] by one affine map for all channels, saturating a few pixels.

    The simplest colour balance (Limare, Lisani, Morel, Petro, Sbert, "Simplest Color Balance",
    IPOL 1, 2011, doi:10.5201/ipol.2011.llmps-scb) in the form C. Hessel uses against Mertens
    fusion's out-of-range values ("An Implementation of the Exposure Fusion Algorithm", IPOL 8,
    2018, pp. 369-387, doi:10.5201/ipol.2018.230, ``robustNormalization.m``): ``v_min`` is the
    ``black`` percentile of the per-pixel minimum channel, ``v_max`` the ``100 - white``
    percentile of the per-pixel maximum channel, and ``(u - v_min) / (v_max - v_min)`` is
    clipped to [0, 1], so a pixel saturates when any of its channels does and hues are kept.
    A flat image (``v_max <= v_min``) becomes the constant ``v_max``, clipped.

    Args:
        image: ``[C, H, W]`` float, any range.
        black, white: percent of pixels allowed to saturate to 0 and to 1 (0 <= each < 100,
            sum < 100).

    Returns:
        ``[C, H, W]`` in [0, 1], same dtype as the input.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be [C, H, W], got shape {list(image.shape)}")
    for name, value in (("black", black), ("white", white)):
        if not (isinstance(value, Real) and 0 <= value < 100):
            raise ValueError(f"{name} must be a percentage in [0, 100), got {value!r}")
    if black + white >= 100:
        raise ValueError(f"black + white must be below 100 percent, got {black} + {white}")
    work = image if image.dtype in (torch.float32, torch.float64) else image.float()
    n = work.shape[-1] * work.shape[-2]
    if work.shape[0] > 1:  # 1-based ranks as in robustNormalization.m
        high_rank = math.ceil(n - white * n / 100)
        low_rank = math.floor(1 + black * n / 100)
    else:
        high_rank = math.floor(n - white * n / 100 + 0.5)
        low_rank = math.floor(1 + black * n / 100 + 0.5)
    high_rank, low_rank = min(max(high_rank, 1), n), min(max(low_rank, 1), n)
    v_max = work.amax(0).flatten().kthvalue(high_rank).values
    v_min = work.amin(0).flatten().kthvalue(low_rank).values
    if v_max <= v_min:
        out = torch.full_like(work, float(v_max)).clamp_(0, 1)
    else:
        out = ((work - v_min) / (v_max - v_min)).clamp_(0, 1)
    return out.to(image.dtype)


@contextlib.contextmanager
def _atomic_file(path: Path, *, overwrite: bool) -> Iterator[IO[bytes]]:
    """A binary file handle whose content appears at ``path`` only once complete.

    The data goes to a hidden ``.<name>.<random>.part`` in the same folder (so the final rename
    stays on one file system), is flushed to disk, then renamed. Without ``overwrite`` the
    rename is a hard link, which fails rather than replace a file that appeared meanwhile.
    Any error, including KeyboardInterrupt, removes the temporary file.
    """
    folder = path.parent
    try:
        fd, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".part")
    except FileNotFoundError:
        raise ImageIOError(f"{path}: cannot write, folder {folder} does not exist") from None
    except OSError as error:
        raise _os_error(f"{path}: cannot write into {folder} ({error.strerror or error})", error) from None
    os.close(fd)  # reopened by name: some writers (tifffile) want a handle with a file name
    temp = Path(temp_name)
    try:
        with open(temp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        if overwrite:
            os.replace(temp, path)
        else:
            _rename_no_clobber(temp, path)
        _fsync_folder(folder)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(error, OSError) and not isinstance(error, ImageIOError):
            raise _os_error(f"{path}: cannot write ({error.strerror or _one_line(error)})", error) from None
        raise


def _rename_no_clobber(temp: Path, path: Path) -> None:
    try:
        os.link(temp, path)
    except FileExistsError:
        raise OutputExistsError(f"{path}: already exists (pass --force / overwrite=True to replace it)") from None
    except OSError:  # no hard links here (some network or FAT file systems): check, then rename
        if path.exists():
            raise OutputExistsError(f"{path}: already exists (pass --force / overwrite=True to replace it)") from None
        os.replace(temp, path)
        return
    temp.unlink()


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable where the platform allows it."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


# ----------------------------------------------------------------------------------------------
# Parameter files


def read_params(path: str | os.PathLike) -> dict[str, Any]:
    """Read fusion parameters from a JSON or YAML file (e.g. exported by the training).

    The file holds a mapping whose keys are among :data:`PARAM_NAMES`, for example::

        contrast: 0.4
        saturation: 1.7
        exposure: 2.5
        mu: 0.55
        levels: 4.5      # or -1 (deepest), or null / auto (the preset's automatic depth)
        preset: mertens

    ``.json`` files are parsed as JSON; anything else as YAML (which also reads JSON; needs
    PyYAML). The result can be passed as keyword arguments to :func:`efusion.exposure_fusion`.

    Raises:
        ParamsError: missing or unparsable file, not a mapping, an unknown key or a bad value;
            the message names the file and the key.
    """
    path = Path(path)
    if path.suffix.lower() in (".ckpt", ".pt", ".pth"):
        raise ParamsError(f"{path}: checkpoints are not read directly; export the tuned parameters to a .yaml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder, not a parameter file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ParamsError(f"{path}: cannot read ({getattr(error, 'strerror', None) or _one_line(error)})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ParamsError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ParamsError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use a .json file") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or _one_line(error)
            raise ParamsError(f"{path}: not valid YAML ({problem}{where})") from None
    if not isinstance(data, Mapping):
        kind = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ParamsError(f"{path}: expected a mapping of parameter names to values, found {kind}")
    return validate_params(data, source=str(path))


def validate_params(params: Mapping[str, Any], *, source: str = "params") -> dict[str, Any]:
    """Check fusion parameters and return them as plain Python values.

    The rules are the fusion's own (:func:`efusion.params.check_value`): exponents (contrast, saturation,
    exposure) numbers >= 0, ``mu`` a number, ``sigma`` a number > 0 (``mu`` and ``sigma`` may also
    be a list of one value per channel, e.g. R, G, B), ``levels`` ``None`` (or ``"auto"``) or a
    number >= 1 or <= -1, ``preset`` one of :data:`efusion.PRESETS`; every number finite.
    Tensors and numpy values are accepted (converted with ``.tolist()``), so a trained module's
    values can be passed directly; a one-element list becomes a number.

    Raises:
        ParamsError: naming ``source`` and the offending key.
    """
    from .presets import PRESETS

    checked: dict[str, Any] = {}
    for key, value in params.items():
        if key not in PARAM_NAMES:
            raise ParamsError(f"{source}: unknown parameter {key!r} (expected some of: {', '.join(PARAM_NAMES)})")
        if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
            value = value.tolist()  # tensors and numpy values: a number or (nested) lists
        if key in ("mu", "sigma") and isinstance(value, (list, tuple)):
            if not value or any(isinstance(v, (list, tuple)) for v in value):
                raise ParamsError(f"{source}: {key!r} must be a number or a list of numbers (one per channel), got {value!r}")
            values = [_check_param(key, v, source, []) for v in value]
            checked[key] = values[0] if len(values) == 1 else values
            continue
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise ParamsError(f"{source}: {key!r} must be a single number, got {value!r}")
            value = value[0]
        checked[key] = _check_param(key, value, source, sorted(PRESETS))
    return checked


def _check_param(key: str, value, source: str, presets: list[str]):
    """One value, checked by the library's own rules (:func:`efusion.params.check_value`, what
    :func:`efusion.exposure_fusion` applies), so a file or flag accepts exactly what the fusion does;
    files also refuse infinities, which the fusion would turn into NaN."""
    if key == "preset":
        if not isinstance(value, str) or value not in presets:
            raise ParamsError(f"{source}: 'preset' must be one of {', '.join(presets)}, got {value!r}")
        return value
    if key == "levels" and (value is None or value == "auto"):  # "auto" as on the command line
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ParamsError(f"{source}: {key!r} must be a finite number, got {value!r}")
    try:
        check_value(key, value)
    except (TypeError, ValueError) as error:
        message = str(error)
        if message.startswith(f"{key} "):
            message = f"{key!r}{message[len(key):]}"
        raise ParamsError(f"{source}: {message}") from None
    if key == "levels":
        return int(value) if isinstance(value, int) else float(value)
    return float(value)


def write_params(path: str | os.PathLike, params: Mapping[str, Any], *, overwrite: bool = True) -> Path:
    """Write fusion parameters for :func:`read_params` (and ``efusion fuse --params``).

    The values are validated first (tensors become plain numbers); ``.json`` writes JSON,
    ``.yaml``/``.yml`` writes YAML (needs PyYAML). The file appears complete or not at all
    (written aside, then renamed into place); with ``overwrite=False`` an existing file is an
    error and is left as it is.

    Raises:
        ParamsError: an unknown key, a bad value, an unsupported suffix, or (without
            ``overwrite``) the file exists.
    """
    path = Path(path)
    checked = validate_params(params, source=str(path))
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(checked, indent=2) + "\n"
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ParamsError(f"{path}: writing YAML needs PyYAML (pip install pyyaml), or use a .json file") from None
        text = yaml.safe_dump(checked, sort_keys=False)
    else:
        raise ParamsError(f"{path}: unsupported parameter file suffix {suffix or '(none)'!r} (use .json, .yaml or .yml)")
    try:
        if not overwrite and path.exists():
            raise OutputExistsError(f"{path}: already exists (pass --force / overwrite=True to replace it)")
        with _atomic_file(path, overwrite=overwrite) as fh:
            fh.write(text.encode("utf-8"))
    except ImageIOError as error:
        raise ParamsError(str(error)) from None
    return path
