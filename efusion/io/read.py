"""Reading images and brackets: decoding, scaling, EXIF orientation, alpha as a mask.

JPEG, PNG (8 and 16 bit) and TIFF (8, 16 bit and float). Integer samples are scaled by their own
maximum (uint8 / 255, uint16 / 65535, so 16-bit data keeps its precision); float TIFF samples are
taken as they are. EXIF orientation is applied, so a portrait phone frame comes out upright. Gray
frames stay one channel unless the bracket mixes gray and colour frames; an alpha channel becomes
the per-frame ``mask`` of :func:`efusion.exposure_fusion`. Codecs (Pillow, tifffile, OpenCV for
16-bit PNG) are imported when a function needs them; the suffix gives the format
(:data:`efusion.io.formats.FORMATS`).
"""
from __future__ import annotations

import collections.abc
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from .errors import ImageIOError, one_line
from .formats import FORMATS, IMAGE_SUFFIXES
from .metadata import EXIF_ORIENTATION, pillow_unlimited

__all__ = ["MAX_PIXELS", "Bracket", "LazyBracket", "open_bracket", "read_bracket", "read_image"]


#: frames with more pixels are refused unless ``max_pixels`` says otherwise: Pillow's own refusal
#: point (twice its ``MAX_IMAGE_PIXELS`` warning), a guard against decompression bombs (a small
#: file that claims a huge size), applied here to every format
MAX_PIXELS = 2 * 89_478_485
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# ----------------------------------------------------------------------------------------------
# Reading


@dataclass
class Bracket:
    """Frames of one bracket, read from files.

    Attributes:
        frames: ``[N, C, H, W]`` float, integer samples scaled to [0, 1] (or their 16-bit codes,
            read with ``dtype=torch.uint16``); C = 1 (every frame
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
        dtype: floating dtype of the stack, or ``torch.uint16``: the samples themselves as 16-bit
            codes (8-bit ones times 257, which keeps them exact: ``k / 255 = 257 k / 65535``), for
            brackets of 8- and 16-bit files without alpha; the fusion ops take them as they are
            and measure their exact values (:attr:`efusion.Preset.integer_samples`).
        device: where the stack lives (default CPU).
        max_pixels: refuse frames with more pixels than this (default :data:`MAX_PIXELS`, Pillow's
            decompression-bomb limit, for every format); ``None`` for no limit.

    Returns:
        a :class:`Bracket`.

    Raises:
        ImageIOError: a file is missing, unreadable, truncated, of an unsupported format, or
            the frames differ in size, or a frame has more than ``max_pixels`` pixels.
    """
    return open_bracket(paths, max_pixels=max_pixels).read(dtype=dtype, device=device)


def open_bracket(paths: Sequence[str | os.PathLike], *, max_pixels: int | None = MAX_PIXELS) -> LazyBracket:
    """Check the headers of a bracket's frames; decode no pixel yet.

    Raises the errors of :func:`read_bracket` that headers reveal (missing file, unsupported
    format, frames of different sizes); decoding errors come when a frame is read.
    """
    files = [Path(p) for p in paths]
    if not files:
        raise ImageIOError("a bracket needs at least one frame, got none")
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a whole number >= 1 or None, got {max_pixels!r}")
    infos = [_probe(p) for p in files]
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
        self._check_dtype(dtype)
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
        self._check_dtype(dtype)
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
        self._check_dtype(dtype)
        return _LazyFrames(self, dtype, device, alpha=False)

    def masks(self, *, dtype: torch.dtype = torch.float32, device=None) -> Sequence[Tensor] | None:
        """The alpha ``[1, H, W]`` of each frame, decoded when indexed (reusing the alpha decoded
        with the same frame just before), or ``None`` when no frame has an alpha channel."""
        _check_float_dtype(dtype)
        return _LazyFrames(self, dtype, device, alpha=True) if self.has_alpha else None

    def _check_dtype(self, dtype: torch.dtype) -> None:
        """A floating dtype, or uint16 where every sample is an 8- or 16-bit integer (no alpha)."""
        if dtype == torch.uint16:
            if self.bit_depth > 16 or self.has_alpha:
                raise TypeError(
                    "dtype torch.uint16 reads 8- and 16-bit frames without alpha; this bracket has "
                    + ("float samples" if self.bit_depth > 16 else "an alpha channel") + ": read it as a float dtype"
                )
            return
        _check_float_dtype(dtype)

    def _alpha(self, index: int, dtype: torch.dtype, device) -> Tensor:
        index = range(len(self))[index]
        last, self._last_alpha = self._last_alpha, None
        if last is not None and last[:3] == (index, dtype, device):
            return last[3]
        alpha = self.read_frame(index, dtype=dtype, device=device)[1]
        self._last_alpha = None
        return cast(Tensor, alpha)  # masks() exists only when some frame has alpha


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
    fmt = FORMATS.get(path.suffix.lower())
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
        raise ImageIOError(f"{path}: not a readable {fmt} image ({one_line(error)})") from None
    except Exception as error:  # noqa: BLE001 - codecs raise SyntaxError, ValueError, struct.error, ... on bad data
        raise ImageIOError(f"{path}: not a readable {fmt} image ({one_line(error)})") from None




def _probe_pillow(path: Path, fmt: str) -> _FrameInfo:
    from PIL import Image

    with pillow_unlimited(), Image.open(path, formats=["JPEG", "PNG"]) as image:  # a mislabelled suffix still reads
        found = image.format
        orientation = _valid_orientation(image.getexif().get(EXIF_ORIENTATION, 1))
        width, height = image.size
        mode = image.mode
        transparency = "transparency" in image.info
    codec, bit_depth = "pillow", 8
    if found == "PNG":
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
        page = cast("tifffile.TiffPage", tif.pages[0])
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
        raise ImageIOError(f"{info.path}: cannot decode the image ({one_line(error)})") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is a bad file
        raise ImageIOError(f"{info.path}: cannot decode the image ({one_line(error)})") from None
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
    if frame.dtype == torch.uint16:  # 16-bit codes (LazyBracket._check_dtype: no alpha, no float samples)
        frame.copy_(source[:colour].expand(frame.shape[0], -1, -1) if colour == 1 else source[:colour])
        if info.bit_depth == 8:
            frame.mul_(257)  # k / 255 = 257 k / 65535
        return
    scale = {8: 255.0, 16: 65535.0}.get(info.bit_depth)
    if scale == 65535.0 and frame.dtype not in (torch.float32, torch.float64):
        # half types cannot hold every 16-bit code value (float16 overflows above 65504): scale
        # in float64, then round once to the target type
        wide = torch.empty(frame.shape, dtype=torch.float64, device=frame.device)
        wide_alpha = None if alpha is None else torch.empty(alpha.shape, dtype=torch.float64, device=alpha.device)
        _fill(info, source, colour, scale, wide, wide_alpha, associated)
        frame.copy_(wide)
        if alpha is not None and wide_alpha is not None and info.alpha:
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
            page = cast("tifffile.TiffPage", tif.pages[0])
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
        with pillow_unlimited(), Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.verify()  # checks every chunk's CRC and the end marker: catches truncation
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            png = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        finally:
            cv2.utils.logging.setLogLevel(level)
        del data
        if png is None:
            raise ImageIOError(f"{info.path}: cannot decode the PNG image")
        if png.ndim == 3:  # OpenCV's BGR(A) order to RGB(A)
            order = [2, 1, 0, 3][: png.shape[2]]
            png = png[:, :, order]
        return png, False
    from PIL import Image

    with pillow_unlimited(), Image.open(info.path, formats=["JPEG", "PNG"]) as image:
        image.load()
        mode = image.mode
        picture: Image.Image = image
        if mode == "1":
            picture = image.convert("L")
        elif mode in ("I;16B", "I;16L"):
            return np.asarray(image).astype(np.uint16), False
        elif mode == "I":
            return np.clip(np.asarray(image), 0, 65535).astype(np.uint16), False
        elif mode in ("La", "RGBa"):
            picture = image.convert(mode.upper())
        elif mode in ("L", "RGB") and info.alpha:  # a tRNS colour key
            picture = image.convert(mode + "A")
        elif mode not in ("L", "LA", "RGB", "RGBA", "I;16", "F"):
            picture = image.convert("RGBA" if info.alpha else "RGB")
        return np.asarray(picture), False


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


