"""Exposure fusion: Laplacian-pyramid blending of frames by weight maps, and the Mertens layer.

Kept for compatibility: the ops live in :mod:`efusion.functional`, the layer in
:mod:`efusion.layers`, the parameters in :mod:`efusion.params`.
"""
from .functional import blend, exposure_fusion, fuse_frames, mertens_weights
from .layers import Fusion
from .params import LEARNABLE_DEFAULT, SIGMA_FLOOR
from .params import NAMES as PARAMETER_NAMES

__all__ = [
           "LEARNABLE_DEFAULT",
           "PARAMETER_NAMES",
           "SIGMA_FLOOR",
           "Fusion",
           "blend",
           "exposure_fusion",
           "fuse_frames",
           "mertens_weights",
]
