"""Image-quality metrics for exposure fusion.

- :mod:`efusion.metrics.mef_ssim`: MEF-SSIM (Ma, Zeng and Wang, IEEE TIP 2015), the no-reference
  score of a fused image against its bracket, and :class:`MEFSSIMLoss` for training.
- :mod:`efusion.metrics.full_reference`: :func:`psnr` and :func:`ssim` (Wang et al. 2004) of an
  image against a ground truth.

Every public name is re-exported here. Note that ``efusion.metrics.mef_ssim`` is the function
(as it always was), which shadows the submodule of the same name as an attribute; reach the
module through ``sys.modules`` or ``from efusion.metrics.mef_ssim import ...``.
"""
from __future__ import annotations

from .full_reference import psnr, ssim
from .mef_ssim import MS_SSIM_WEIGHTS, RGB_TO_GRAY_WEIGHTS, MEFSSIMLoss, mef_ssim

__all__ = ["MS_SSIM_WEIGHTS", "RGB_TO_GRAY_WEIGHTS", "MEFSSIMLoss", "mef_ssim", "psnr", "ssim"]
