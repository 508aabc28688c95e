"""Former home of :func:`psnr` and :func:`ssim`, kept as a thin re-export so ``efusion.quality``
keeps working; the code lives in :mod:`efusion.metrics.full_reference`."""
from __future__ import annotations

from .metrics.full_reference import psnr, ssim

__all__ = ["psnr", "ssim"]
