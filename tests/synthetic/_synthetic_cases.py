"""Measures of synthetic images the tests of efusion.synthetic share (Rec. 709 luminance written
here as an independent reference, not taken from the package)."""
from __future__ import annotations

import torch


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.2126, 0.7152, 0.0722], dtype=rgb.dtype, device=rgb.device)
    return torch.einsum("...chw,c->...hw", rgb, weights)


def log_range(scene: torch.Tensor) -> float:
    """log2(p99 / p1) of luminance, the dynamic range as the module defines it."""
    log_y = luminance(scene.double()).log2().flatten()
    low, high = torch.quantile(log_y, log_y.new_tensor([0.01, 0.99])).tolist()
    return high - low


def on_grid(frames: torch.Tensor, levels: int) -> bool:
    return torch.equal(torch.round(frames * levels) / levels, frames)
