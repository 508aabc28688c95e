"""Gray (luma) weights of R, G, B, written once.

``MATLAB_GRAY`` are MATLAB ``rgb2gray``'s documented exact coefficients (the inverse of the
NTSC YIQ matrix's first row, as MATLAB computes it), used by Mertens' ``exposure_fusion.m`` and
by MEF-SSIM's reference code; ``OPENCV_GRAY`` are OpenCV ``cvtColor(RGB2GRAY)``'s rounded
ITU-R BT.601 weights. :func:`rgb_to_gray` applies a weight table to a tensor.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MATLAB_GRAY", "OPENCV_GRAY", "rgb_to_gray"]

#: MATLAB ``rgb2gray``: 0.298936021293775 R + 0.587043074451121 G + 0.114020904255103 B
MATLAB_GRAY: tuple[float, float, float] = (0.298936021293775, 0.587043074451121, 0.114020904255103)

#: OpenCV ``cvtColor(..., COLOR_RGB2GRAY)``: ITU-R BT.601 luma, 0.299 R + 0.587 G + 0.114 B
OPENCV_GRAY: tuple[float, float, float] = (0.299, 0.587, 0.114)


def rgb_to_gray(images: Tensor, weights: tuple[float, float, float] = MATLAB_GRAY) -> Tensor:
    """``[..., C, H, W]`` -> ``[..., 1, H, W]``: the weighted sum of R, G, B (C = 1 passes through).

    The default weights are MATLAB ``rgb2gray``'s (:data:`MATLAB_GRAY`), as MEF-SSIM's and SSIM's
    reference code score gray images. The weights are cast to the input's dtype and device.
    """
    if images.shape[-3] == 1:
        return images
    table = torch.tensor(weights, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images * table).sum(dim=-3, keepdim=True)
