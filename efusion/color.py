"""Gray (luma) weights of R, G, B, written once.

``MATLAB_GRAY`` are MATLAB ``rgb2gray``'s documented exact coefficients (the inverse of the
NTSC YIQ matrix's first row, as MATLAB computes it), used by Mertens' ``exposure_fusion.m`` and
by MEF-SSIM's reference code; ``OPENCV_GRAY`` are OpenCV ``cvtColor(RGB2GRAY)``'s rounded
ITU-R BT.601 weights.
"""
from __future__ import annotations

__all__ = ["MATLAB_GRAY", "OPENCV_GRAY"]

#: MATLAB ``rgb2gray``: 0.298936021293775 R + 0.587043074451121 G + 0.114020904255103 B
MATLAB_GRAY: tuple[float, float, float] = (0.298936021293775, 0.587043074451121, 0.114020904255103)

#: OpenCV ``cvtColor(..., COLOR_RGB2GRAY)``: ITU-R BT.601 luma, 0.299 R + 0.587 G + 0.114 B
OPENCV_GRAY: tuple[float, float, float] = (0.299, 0.587, 0.114)
