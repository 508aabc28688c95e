"""efusion: differentiable Mertens exposure fusion for PyTorch.

Mertens, Kautz & Van Reeth, "Exposure Fusion", Pacific Graphics 2007, doi:10.1109/PG.2007.17.

>>> import torch, efusion
>>> stack = torch.rand(3, 3, 64, 96)       # N=3 RGB frames, float in [0, 1]
>>> efusion.exposure_fusion(stack).shape     # [C, H, W]
torch.Size([3, 64, 96])
"""
# metrics, quality and synthetic need only torch: ``efusion.metrics`` etc. work after a plain ``import efusion``
from . import backends, metrics, quality, reference, synthetic
from .align import Alignment, align  # alignment and deghosting of hand-held, moving brackets
from .deghost import deghost
from .functional import blend, exposure_fusion, fuse_frames, mertens_weights
from .layers import Fusion
from .metrics import MEFSSIMLoss, mef_ssim, psnr, ssim
from .params import LEARNABLE_DEFAULT
from .presets import PRESETS, Preset, get_preset
from .reference.measures import contrast, luma, saturation, well_exposedness
from .reference.pyramid import collapse_laplacian_pyramid, gaussian_pyramid, laplacian_pyramid, pyr_down, pyr_up

__version__ = "0.1.0"

__all__ = [
    "LEARNABLE_DEFAULT",
    "PRESETS",
    "Alignment",
    "Fusion",
    "MEFSSIMLoss",
    "Preset",
    "align",
    "backends",
    "blend",
    "collapse_laplacian_pyramid",
    "contrast",
    "deghost",
    "exposure_fusion",
    "fuse_frames",
    "gaussian_pyramid",
    "get_preset",
    "laplacian_pyramid",
    "luma",
    "mef_ssim",
    "mertens_weights",
    "metrics",
    "psnr",
    "pyr_down",
    "pyr_up",
    "quality",
    "reference",
    "saturation",
    "ssim",
    "synthetic",
    "well_exposedness",
]
