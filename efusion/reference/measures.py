"""Mertens' per-pixel quality measures and the normalised fusion weights, in plain torch.

Mertens, Kautz & Van Reeth, "Exposure Fusion", Pacific Graphics 2007, Section 3.1,
doi:10.1109/PG.2007.17: contrast ``C`` (absolute Laplacian of the gray image), saturation ``S``
(standard deviation of R, G, B), well-exposedness ``E`` (Gaussian around ``mu``), combined as
``W = C^c * S^s * E^e`` (+ 1e-12, as in the reference code) and normalised over the frames.

Every function takes a stack ``[..., C, H, W]`` (any leading dimensions) with values in [0, 1]
and returns maps ``[..., 1, H, W]``. Gray stacks (C = 1) have no saturation: its measure is 0
and :func:`mertens_weights` leaves it out (exponent ignored), as OpenCV does.

All maps are differentiable with finite gradients everywhere, including where a measure is 0:
``0 ** s`` and ``sqrt(0)`` are evaluated with the double-``where`` pattern, never with an epsilon,
so values are exactly the reference code's.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks
from .._util import ParamLike, f32, is_one, is_zero
from ..presets import Preset, get_preset
from .pyramid import pad

__all__ = [
    "WEIGHT_FLOOR", "luma", "laplacian", "contrast", "saturation_squared", "safe_sqrt", "saturation",
    "per_channel", "log_well_exposedness", "channel_sum", "well_exposedness", "power", "raw_weights",
    "normalise", "compute_dtype", "cast_param", "fusion_weights",
]

#: Mertens' ``W = W + 1e-12`` (exposure_fusion.m), also OpenCV's ``+ 1e-12f``: avoids 0 / 0.
WEIGHT_FLOOR = 1e-12


def luma(stack: Tensor, preset: str | Preset = "mertens") -> Tensor:
    """Gray image with the preset's luma weights (MATLAB ``rgb2gray`` or OpenCV ``RGB2GRAY``).

    Shape:
        ``[..., C, H, W]`` -> ``[..., 1, H, W]`` (C = 1 is returned as is).
    """
    if stack.shape[-3] == 1:
        return stack
    preset = get_preset(preset)
    wr, wg, wb = preset.luma_weights
    r, g, b = stack[..., 0:1, :, :], stack[..., 1:2, :, :], stack[..., 2:3, :, :]
    if preset.luma_form == "opencv_fma" and stack.dtype == torch.float32:
        # OpenCV's vectorised cvtColor evaluates fma(b, wb, fma(r, wr, g * wg)) in float32; an
        # fma is exact products and one rounding, which float64 arithmetic reproduces here.
        green = (g * wg).double()
        red_green = (r.double() * f32(wr) + green).float().double()
        return (b.double() * f32(wb) + red_green).float()
    return r * wr + g * wg + b * wb


def laplacian(gray: Tensor, preset: Preset) -> Tensor:
    """3x3 Laplacian ``[0 1 0; 1 -4 1; 0 1 0]`` with the preset's border."""
    mode = preset.laplacian_border
    padded = pad(pad(gray, -1, 1, 1, mode, mode), -2, 1, 1, mode, mode)
    up, down = padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]
    left, right = padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]
    if preset.laplacian_form == "differences":
        # exactly 0 wherever the neighbours cancel, in any precision
        return ((up - gray) + (down - gray)) + ((left - gray) + (right - gray))
    # OpenCV filter2D: accumulates the non-zero taps row by row
    return (((up + left) + gray * -4.0) + right) + down


def contrast(stack: Tensor, preset: str | Preset = "mertens") -> Tensor:
    """Contrast measure: absolute response of the 3x3 Laplacian to the gray image.

    Mertens' ``contrast.m`` (``abs(imfilter(rgb2gray(I), h, 'replicate'))``) or OpenCV's
    ``abs(Laplacian(gray))`` with reflect-101 borders, by preset.

    Shape:
        ``[..., C, H, W]`` -> ``[..., 1, H, W]``.

    Example:
        >>> contrast(torch.full((2, 3, 4, 4), 0.5)).abs().max().item()
        0.0
    """
    preset = get_preset(preset)
    return laplacian(luma(stack, preset), preset).abs()


def saturation_squared(stack: Tensor, preset: Preset) -> Tensor:
    r, g, b = stack[..., 0:1, :, :], stack[..., 1:2, :, :], stack[..., 2:3, :, :]
    if preset.saturation_form == "pairwise":
        # population variance of three values = sum of squared pairwise differences / 9
        return ((r - g).square() + (g - b).square() + (b - r).square()) / 9.0
    # OpenCV: mean += c for each channel, then mean /= 3, which it evaluates as a float32
    # multiplication by 1/3 (rounding decides which gray pixels get a non-zero saturation)
    mean = ((r + g) + b) * (f32(1.0 / 3.0) if r.dtype == torch.float32 else 1.0 / 3.0)
    return ((r - mean).square() + (g - mean).square()) + (b - mean).square()


def safe_sqrt(x: Tensor) -> Tensor:
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).sqrt(), 0.0)


def saturation(stack: Tensor, preset: str | Preset = "mertens") -> Tensor:
    """Saturation measure: standard deviation of R, G, B at each pixel.

    Mertens' ``saturation.m`` (population standard deviation) or OpenCV's
    ``sqrt(sum_c (c - mean)^2)`` (not divided by 3), by preset. Gray stacks give zeros.

    Shape:
        ``[..., C, H, W]`` -> ``[..., 1, H, W]``.
    """
    if stack.shape[-3] == 1:
        return torch.zeros_like(stack)
    return safe_sqrt(saturation_squared(stack, get_preset(preset)))


def per_channel(value: ParamLike, like: Tensor) -> ParamLike:
    """A number, or a tensor with one value per channel viewed as ``[C, 1, 1]``."""
    if isinstance(value, Tensor):
        value = value.to(device=like.device, dtype=like.dtype)
        if value.dim() == 1:
            value = value.reshape(-1, 1, 1)
    return value


def log_well_exposedness(stack: Tensor, mu: ParamLike, sigma: ParamLike) -> Tensor:
    mu, sigma = per_channel(mu, stack), per_channel(sigma, stack)
    deviation = stack - mu
    if isinstance(sigma, Tensor):
        return channel_sum(deviation.square() / sigma.square()) * -0.5
    return channel_sum(deviation.square()) * (-0.5 / (sigma * sigma))


def channel_sum(x: Tensor) -> Tensor:
    """Sum over channels (dim -3) in a fixed order, ``(x0 + x1) + x2``, which the band kernel repeats."""
    total = x[..., 0:1, :, :]
    for c in range(1, x.shape[-3]):
        total = total + x[..., c:c + 1, :, :]
    return total


def well_exposedness(stack: Tensor, mu: ParamLike = 0.5, sigma: ParamLike = 0.2) -> Tensor:
    """Well-exposedness: ``prod_c exp(-(I_c - mu)^2 / (2 sigma^2))`` (Mertens' ``well_exposedness.m``).

    Args:
        stack: tensor ``[..., C, H, W]`` in [0, 1].
        mu: centre, a number, or one value per channel (a list or a tensor; tensors, also 0-dim, carry gradients).
        sigma: width (> 0), as ``mu``.

    Shape:
        ``[..., C, H, W]`` -> ``[..., 1, H, W]``.
    """
    mu, sigma = _checks.as_channel_param(mu, "mu"), _checks.as_channel_param(sigma, "sigma")
    return log_well_exposedness(stack, mu, sigma).exp()


def power(measure: Tensor, exponent: ParamLike, log_scale: float = 1.0) -> Tensor:
    """``measure ** (exponent * log_scale)`` for ``measure >= 0``, with ``0 ** p = 0`` for p > 0,
    ``x ** 0 = 1`` (a measure switched off) and finite gradients at 0 for both arguments."""
    positive = measure > 0
    log_measure = torch.where(positive, measure, 1.0).log() * log_scale
    if isinstance(exponent, Tensor):
        alive = positive | (exponent == 0)
    else:
        alive = positive
    return torch.where(alive, (exponent * log_measure).exp(), 0.0)


def raw_weights(
    stack: Tensor,
    contrast_exponent: ParamLike,
    saturation_exponent: ParamLike,
    exposure_exponent: ParamLike,
    mu: ParamLike,
    sigma: ParamLike,
    preset: Preset,
) -> Tensor:
    """``C^c * S^s * E^e + 1e-12`` for a stack ``[..., C, H, W]`` -> ``[..., 1, H, W]``."""
    weight: Tensor | None = None

    def times(factor: Tensor) -> None:
        nonlocal weight
        weight = factor if weight is None else weight * factor

    if not is_zero(contrast_exponent):
        measure = laplacian(luma(stack, preset), preset).abs()
        times(measure if is_one(contrast_exponent) else power(measure, contrast_exponent))
    if stack.shape[-3] == 3 and not is_zero(saturation_exponent):
        squared = saturation_squared(stack, preset)
        if is_one(saturation_exponent):
            times(safe_sqrt(squared))
        else:  # S^s = (S^2)^(s/2)
            times(power(squared, saturation_exponent, 0.5))
    if not is_zero(exposure_exponent):
        exposure_exponent = exposure_exponent.to(stack.dtype) if isinstance(exposure_exponent, Tensor) else exposure_exponent
        times((exposure_exponent * log_well_exposedness(stack, mu, sigma)).exp())
    if weight is None:
        weight = torch.ones_like(stack[..., :1, :, :])
    return weight + WEIGHT_FLOOR


def normalise(weight: Tensor, mask: Tensor | None) -> Tensor:
    """Divide by the sum over frames (dim 1); pixels where a mask removes every frame get 0."""
    if mask is None:
        return weight / weight.sum(dim=1, keepdim=True)
    weight = weight * mask.to(weight.dtype)
    total = weight.sum(dim=1, keepdim=True)
    has_weight = total > 0
    return torch.where(has_weight, weight / torch.where(has_weight, total, 1.0), 0.0)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # 1e-12 and exp(-9.4 e) underflow in half precision: weights are computed in float32
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def cast_param(value: ParamLike, dtype: torch.dtype, device: torch.device) -> ParamLike:
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype)
    return float(value)


def fusion_weights(stack, mask, contrast, saturation, exposure, mu, sigma, preset: Preset) -> Tensor:
    """Normalised weights of a validated ``[B, N, C, H, W]`` stack -> ``[B, N, 1, H, W]`` by the reference code (plain tensor operations, differentiable to any order)."""
    compute = compute_dtype(stack.dtype)
    x = stack.to(compute)
    params = [cast_param(p, compute, stack.device) for p in (contrast, saturation, exposure, mu, sigma)]
    weight = normalise(raw_weights(x, *params, preset), mask)
    return weight.to(stack.dtype)

