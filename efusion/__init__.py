"""efusion: differentiable Mertens exposure fusion for PyTorch.

Mertens, Kautz & Van Reeth, "Exposure Fusion", Pacific Graphics 2007, doi:10.1109/PG.2007.17.

>>> import torch, efusion
>>> stack = torch.rand(3, 3, 64, 96)       # N=3 RGB frames, float in [0, 1]
>>> efusion.exposure_fusion(stack).shape     # [C, H, W]
torch.Size([3, 64, 96])
"""
from . import backends, reference
from .functional import blend, exposure_fusion, fuse_frames, mertens_weights
from .layers import Fusion
from .params import LEARNABLE_DEFAULT
from .presets import PRESETS, Preset, get_preset
from .reference.pyramid import (
    collapse_laplacian_pyramid,
    gaussian_pyramid,
    laplacian_pyramid,
    pyr_down,
    pyr_up,
)
from .reference.measures import contrast, luma, saturation, well_exposedness

# they need only torch: ``efusion.metrics`` etc. work after a plain ``import efusion``
from . import metrics, quality, synthetic
from .metrics import MEFSSIMLoss, mef_ssim, psnr, ssim

# alignment and deghosting of hand-held, moving brackets
from .align import Alignment, align
from .deghost import deghost

__version__ = "0.1.0"

__all__ = [
    "exposure_fusion",
    "fuse_frames",
    "mertens_weights",
    "blend",
    "Fusion",
    "LEARNABLE_DEFAULT",
    "Preset",
    "PRESETS",
    "get_preset",
    "pyr_down",
    "pyr_up",
    "gaussian_pyramid",
    "laplacian_pyramid",
    "collapse_laplacian_pyramid",
    "luma",
    "contrast",
    "saturation",
    "well_exposedness",
    "mef_ssim",
    "MEFSSIMLoss",
    "psnr",
    "ssim",
    "metrics",
    "quality",
    "synthetic",
    "backends",
    "reference",
    "align",
    "Alignment",
    "deghost",
]
