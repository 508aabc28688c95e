"""The two reference implementations efusion reproduces, as data.

Each :class:`Preset` pins every convention that differs between Tom Mertens' original MATLAB code
(``exposure_fusion.m``, 2007, the default) and OpenCV's ``MergeMertens`` (``modules/photo/src/
merge.cpp``): the luma weights, border modes, the saturation scale and how deep the pyramid goes.
The formulas themselves are shared (Mertens, Kautz & Van Reeth, "Exposure Fusion", Pacific
Graphics 2007, Sections 3.1-3.2).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace

import torch

from .color import MATLAB_GRAY, OPENCV_GRAY

__all__ = ["INTEGER_GRID", "PRESETS", "Preset", "get_preset"]

#: 8- and 16-bit samples are both multiples of 1/65535 (k / 255 = 257 k / 65535)
INTEGER_GRID = 65535


@dataclass(frozen=True)
class Preset:
    """Conventions of one reference implementation.

    Attributes:
        name: the preset's name.
        luma_weights: R, G, B weights of the gray image the contrast measure filters.
        laplacian_border: border of the 3x3 contrast Laplacian, ``"replicate"`` (MATLAB
            ``imfilter(..., 'replicate')``) or ``"reflect101"`` (OpenCV ``BORDER_DEFAULT``).
        luma_form: ``"sum"`` (``r*wr + g*wg + b*wb``) or ``"opencv_fma"``: in float32, OpenCV's
            vectorised ``cvtColor`` (x86-64 with FMA) rounds as ``fma(b, wb, fma(r, wr, g*wg))``;
            which gray pixels have an exactly zero Laplacian, and so OpenCV's weights in flat
            areas, depend on that rounding.
        saturation_form: ``"pairwise"``: the population standard deviation of R, G, B computed as
            ``sqrt(((r-g)^2 + (g-b)^2 + (b-r)^2) / 9)``, which is exactly 0 on gray pixels in any
            precision (MATLAB's value); ``"opencv"``: ``sqrt(sum_c (c - mean)^2)`` with OpenCV's
            order of float operations (it does not divide by 3, and its rounding decides which
            gray pixels get a tiny non-zero saturation).
        laplacian_form: ``"differences"``: the 3x3 Laplacian as a sum of neighbour differences,
            exactly 0 on flat and on symmetric patterns; ``"opencv"``: ``filter2D``'s order of
            accumulation, whose float32 rounding OpenCV's weights inherit.
        down_border: border of the 5-tap pyramid filter before decimation, ``"symmetric"``
            (half-sample mirror, MATLAB ``'symmetric'``: x[-1] = x[0]) or ``"reflect101"``
            (whole-sample mirror, OpenCV ``pyrDown``: x[-1] = x[1]).
        up_borders: (left, right) border of the coarse image in the upsampling step:
            MATLAB's ``upsample.m`` replicates both sides, OpenCV's ``pyrUp`` mirrors the first
            row/column (reflect-101) and replicates the last.
        extra_level: OpenCV's ``buildPyramid(maxlevel)`` keeps ``maxlevel + 1`` levels where
            MATLAB keeps ``floor(log2(min(H, W)))``.
        float32_depth: OpenCV computes ``log2`` with single-precision ``logf`` (which makes
            8192 and 32768 one level short); MATLAB uses double precision.
        channel_order: the order of the channels the reference code sees, for frames given to
            efusion in RGB: ``"rgb"``, or ``"bgr"`` for OpenCV as its users call it (frames read
            with ``cv2.imread``), whose ``merge.cpp`` still converts with ``COLOR_RGB2GRAY`` and so
            weights the blue channel with 0.299 and red with 0.114.
        integer_scale: ``"divide"`` (MATLAB ``im2double``: uint8 / 255) or ``"reciprocal"``
            (OpenCV ``convertTo(CV_32F, 1/255)``: times the float32 reciprocal) for integer frames
            converted to float32.
        exponent_defaults: the contrast, saturation and exposure exponents the reference code
            uses when none are given (``exposure_fusion(I, [1 1 1])``;
            ``cv2.createMergeMertens()`` has ``exposure_weight = 0``).
        flat_contrast: magnitude below which a float32 Laplacian of the gray image counts as 0
            (0: none). In float64 the gray image of 8- or 16-bit data is flat wherever the data is,
            so the Laplacian there is exactly 0; in float32 the rounding of the luma leaves residuals
            of about 1e-8, which beat the 1e-12 weight floor and flip weights between frames by up
            to 0.97. A float32 Laplacian below ``2**-19`` (an eighth of a 16-bit step) is such
            rounding, not contrast. OpenCV's own float32 arithmetic keeps its residuals (the
            ``"opencv"`` presets reproduce them).
        integer_samples: 0 (samples are taken as given), or an integer ``M`` such that every sample
            is exactly ``k / M`` for an integer ``k``, held in float32 as its nearest value. Set by
            efusion (:meth:`for_integer_frames`) when it converts 8- or 16-bit frames itself, to
            65535 (which holds both: ``k / 255 = 257 k / 65535``); not meant to be set by hand on
            float images. Where it is set, float32 computation measures contrast and saturation in
            float64 on the exact values ``k / M`` (recovered by rounding), so float32 weights of an
            8- or 16-bit bracket agree with the float64 ones: float32 cannot represent ``k / M``,
            and its rounding (~3e-8) moves Laplacians that are genuinely ~1e-7, which decide
            weights against the 1e-12 floor (issue 12). ``flat_contrast`` then has nothing to do.
    """

    name: str
    luma_weights: tuple[float, float, float]
    laplacian_border: str
    luma_form: str
    saturation_form: str
    laplacian_form: str
    down_border: str
    up_borders: tuple[str, str]
    extra_level: bool
    float32_depth: bool
    channel_order: str = "rgb"
    integer_scale: str = "divide"
    exponent_defaults: tuple[float, float, float] = (1.0, 1.0, 1.0)
    flat_contrast: float = 0.0
    integer_samples: int = 0

    def for_integer_frames(self, dtype: torch.dtype) -> Preset:
        """This preset for 8- or 16-bit frames converted to ``dtype`` by efusion: in float32, with
        :attr:`integer_samples` = 65535 where the reference code measures exact values
        (``integer_scale="divide"``: MATLAB's ``im2double`` frames); unchanged otherwise (OpenCV
        measures its float32 samples as they are)."""
        if self.integer_scale == "divide" and dtype == torch.float32:
            return replace(self, integer_samples=INTEGER_GRID)
        return self

    @property
    def rgb_index(self) -> tuple[int, int, int]:
        """Index, in an RGB stack, of the channel the reference code treats as its first, second
        and third (``(0, 1, 2)``, or ``(2, 1, 0)`` for ``channel_order="bgr"``)."""
        return (2, 1, 0) if self.channel_order == "bgr" else (0, 1, 2)

    def channels(self, x):
        """The channel views ``x[..., c:c+1, :, :]`` of a ``[..., 3, H, W]`` tensor in the reference
        code's order (what it calls R, G, B)."""
        return tuple(x[..., i:i + 1, :, :] for i in self.rgb_index)

    @property
    def luma_by_channel(self) -> tuple[float, float, float]:
        """The luma weight of each channel of an RGB stack (``luma_weights`` in ``rgb_index`` order)."""
        weights = [0.0, 0.0, 0.0]
        for weight, index in zip(self.luma_weights, self.rgb_index):
            weights[index] = weight
        return weights[0], weights[1], weights[2]

    def max_levels(self, height: int, width: int) -> int:
        """Automatic pyramid depth (levels in total, the last being the Gaussian residual), >= 1.

        MATLAB: ``floor(log(min(r, c)) / log(2))`` (``gaussian_pyramid.m``); OpenCV:
        ``(int)(logf(min) / logf(2)) + 1`` (``merge.cpp``). Both are computed the same way as
        the originals, rounding included, and clamped to at least one level.
        """
        side = min(int(height), int(width))
        if self.float32_depth:
            ratio = _f32(_f32(math.log(side)) / _f32(math.log(2.0)))
        else:
            ratio = math.log(side) / math.log(2.0)
        return max(1, math.floor(ratio) + (1 if self.extra_level else 0))


def _f32(value: float) -> float:
    """Round a double to the nearest single-precision float (to mimic C ``logf`` arithmetic)."""
    return struct.unpack("f", struct.pack("f", value))[0]


PRESETS: dict[str, Preset] = {
    # exposure_fusion.m, contrast.m, saturation.m, well_exposedness.m, downsample.m, upsample.m;
    # rgb2gray weights are MATLAB's documented exact coefficients.
    "mertens": Preset(
        name="mertens",
        luma_weights=MATLAB_GRAY,
        laplacian_border="replicate",
        luma_form="sum",
        saturation_form="pairwise",
        laplacian_form="differences",
        down_border="symmetric",
        up_borders=("replicate", "replicate"),
        extra_level=False,
        float32_depth=False,
        flat_contrast=2.0 ** -19,
    ),
    # OpenCV merge.cpp (MergeMertensImpl::process) as its users call it: frames from cv2.imread
    # (BGR), cvtColor RGB2GRAY on them, Laplacian(ksize=1), pyrDown / pyrUp, default exposure
    # weight 0 (createMergeMertens(1, 1, 0)); borders probed on opencv-python-headless 4.x/5.x
    # with unit impulses.
    "opencv": Preset(
        name="opencv",
        luma_weights=OPENCV_GRAY,
        laplacian_border="reflect101",
        luma_form="opencv_fma",
        saturation_form="opencv",
        laplacian_form="opencv",
        down_border="reflect101",
        up_borders=("reflect101", "replicate"),
        extra_level=True,
        float32_depth=True,
        channel_order="bgr",
        integer_scale="reciprocal",
        exponent_defaults=(1.0, 1.0, 0.0),
    ),
}
# OpenCV fed RGB frames (efusion's "opencv" preset before it followed cv2.imread's BGR), with
# Mertens' default exponents (1, 1, 1): the same conventions otherwise
PRESETS["opencv-rgb"] = replace(
    PRESETS["opencv"], name="opencv-rgb", channel_order=Preset.channel_order, exponent_defaults=Preset.exponent_defaults,
)


def get_preset(preset: str | Preset) -> Preset:
    """Look a preset up by name (``"mertens"``, ``"opencv"`` or ``"opencv-rgb"``) or pass a :class:`Preset` through."""
    if isinstance(preset, Preset):
        return preset
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return PRESETS[preset]
