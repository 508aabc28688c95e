"""Colour facts written once: gray/luma weights of R, G, B, and the sRGB transfer function.

``MATLAB_GRAY`` are MATLAB ``rgb2gray``'s documented exact coefficients (the inverse of the
NTSC YIQ matrix's first row, as MATLAB computes it), used by Mertens' ``exposure_fusion.m`` and
by MEF-SSIM's reference code; ``OPENCV_GRAY`` are OpenCV ``cvtColor(RGB2GRAY)``'s rounded
ITU-R BT.601 weights; ``REC709_LUMA`` are the Rec. ITU-R BT.709-6 luminance weights of linear
RGB (sRGB shares the Rec. 709 primaries). :func:`rgb_to_gray` applies a weight table to a
tensor; :func:`srgb_encode` is the sRGB transfer function (IEC 61966-2-1:1999, section 5.2).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MATLAB_GRAY", "OPENCV_GRAY", "REC709_LUMA", "rgb_to_gray", "srgb_encode"]

#: MATLAB ``rgb2gray``: 0.298936021293775 R + 0.587043074451121 G + 0.114020904255103 B
MATLAB_GRAY: tuple[float, float, float] = (0.298936021293775, 0.587043074451121, 0.114020904255103)

#: OpenCV ``cvtColor(..., COLOR_RGB2GRAY)``: ITU-R BT.601 luma, 0.299 R + 0.587 G + 0.114 B
OPENCV_GRAY: tuple[float, float, float] = (0.299, 0.587, 0.114)

#: Rec. ITU-R BT.709-6 luminance weights of linear RGB (also sRGB's, which shares the primaries)
REC709_LUMA: tuple[float, float, float] = (0.2126, 0.7152, 0.0722)

# sRGB encoding (IEC 61966-2-1:1999, section 5.2): 12.92 v for v <= 0.0031308, else
# 1.055 v^(1/2.4) - 0.055
_SRGB_KNEE = 0.0031308
_SRGB_TOE_SLOPE = 12.92
_SRGB_GAMMA = 2.4
_SRGB_SCALE = 1.055
_SRGB_OFFSET = 0.055


def rgb_to_gray(images: Tensor, weights: tuple[float, float, float] = MATLAB_GRAY) -> Tensor:
    """``[..., C, H, W]`` -> ``[..., 1, H, W]``: the weighted sum of R, G, B (C = 1 passes through).

    The default weights are MATLAB ``rgb2gray``'s (:data:`MATLAB_GRAY`), as MEF-SSIM's and SSIM's
    reference code score gray images. The weights are cast to the input's dtype and device.
    """
    if images.shape[-3] == 1:
        return images
    table = torch.tensor(weights, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images * table).sum(dim=-3, keepdim=True)


def srgb_encode(linear: Tensor, *, inplace: bool = False) -> Tensor:
    """The sRGB transfer function (IEC 61966-2-1:1999, section 5.2), elementwise, no clipping:
    ``12.92 v`` for ``v <= 0.0031308``, else ``1.055 v**(1/2.4) - 0.055``. Any shape.

    ``inplace=True`` overwrites ``linear`` (no autograd; saves a copy of a large image);
    otherwise the result is a new tensor and differentiable. Both give the same bits.
    """
    low = linear <= _SRGB_KNEE
    if inplace:
        toe = linear * _SRGB_TOE_SLOPE
        linear.clamp_(min=_SRGB_KNEE).pow_(1 / _SRGB_GAMMA).mul_(_SRGB_SCALE).sub_(_SRGB_OFFSET)
        return torch.where(low, toe, linear, out=linear)
    return torch.where(
        low, _SRGB_TOE_SLOPE * linear, _SRGB_SCALE * linear.clamp(min=_SRGB_KNEE) ** (1 / _SRGB_GAMMA) - _SRGB_OFFSET
    )
