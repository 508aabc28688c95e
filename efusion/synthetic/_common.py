"""Argument checks and the luminance that the scene and the camera simulation share (public names in
a private module)."""
from __future__ import annotations

import math

import torch

from ..color import REC709_LUMA

Tensor = torch.Tensor


def check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(name: str, value, *, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    return seed


def rec709_luminance(rgb: Tensor) -> Tensor:
    """Rec. 709 luminance of ``[..., 3, H, W]`` (``[..., H, W]``); other channel counts: the mean."""
    if rgb.shape[-3] != 3:
        return rgb.mean(dim=-3)
    return torch.einsum("...chw,c->...hw", rgb, rgb.new_tensor(REC709_LUMA))
