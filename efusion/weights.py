"""Mertens' per-pixel quality measures and the normalised fusion weights.

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

from typing import Sequence

import torch
from torch import Tensor

from . import _checks
from .presets import Preset, get_preset
from .pyramid import _pad

__all__ = ["luma", "contrast", "saturation", "well_exposedness", "mertens_weights"]

#: Mertens' ``W = W + 1e-12`` (exposure_fusion.m), also OpenCV's ``+ 1e-12f``: avoids 0 / 0.
WEIGHT_FLOOR = 1e-12

ParamLike = float | Tensor


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
        red_green = (r.double() * _f32(wr) + green).float().double()
        return (b.double() * _f32(wb) + red_green).float()
    return r * wr + g * wg + b * wb


def _f32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def _laplacian(gray: Tensor, preset: Preset) -> Tensor:
    """3x3 Laplacian ``[0 1 0; 1 -4 1; 0 1 0]`` with the preset's border."""
    mode = preset.laplacian_border
    padded = _pad(_pad(gray, -1, 1, 1, mode, mode), -2, 1, 1, mode, mode)
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
    return _laplacian(luma(stack, preset), preset).abs()


def _saturation_squared(stack: Tensor, preset: Preset) -> Tensor:
    r, g, b = stack[..., 0:1, :, :], stack[..., 1:2, :, :], stack[..., 2:3, :, :]
    if preset.saturation_form == "pairwise":
        # population variance of three values = sum of squared pairwise differences / 9
        return ((r - g).square() + (g - b).square() + (b - r).square()) / 9.0
    # OpenCV: mean += c for each channel, then mean /= 3, which it evaluates as a float32
    # multiplication by 1/3 (rounding decides which gray pixels get a non-zero saturation)
    mean = ((r + g) + b) * (_f32(1.0 / 3.0) if r.dtype == torch.float32 else 1.0 / 3.0)
    return ((r - mean).square() + (g - mean).square()) + (b - mean).square()


def _safe_sqrt(x: Tensor) -> Tensor:
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
    return _safe_sqrt(_saturation_squared(stack, get_preset(preset)))


def _per_channel(value: ParamLike, like: Tensor) -> ParamLike:
    """A number, or a tensor with one value per channel viewed as ``[C, 1, 1]``."""
    if isinstance(value, Tensor):
        value = value.to(device=like.device, dtype=like.dtype)
        if value.dim() == 1:
            value = value.reshape(-1, 1, 1)
    return value


def _log_well_exposedness(stack: Tensor, mu: ParamLike, sigma: ParamLike) -> Tensor:
    mu, sigma = _per_channel(mu, stack), _per_channel(sigma, stack)
    deviation = stack - mu
    if isinstance(sigma, Tensor):
        return (deviation.square() / sigma.square()).sum(dim=-3, keepdim=True) * -0.5
    return deviation.square().sum(dim=-3, keepdim=True) * (-0.5 / (sigma * sigma))


def well_exposedness(stack: Tensor, mu: ParamLike = 0.5, sigma: ParamLike = 0.2) -> Tensor:
    """Well-exposedness: ``prod_c exp(-(I_c - mu)^2 / (2 sigma^2))`` (Mertens' ``well_exposedness.m``).

    Args:
        stack: tensor ``[..., C, H, W]`` in [0, 1].
        mu: centre, a number or a tensor (0-dim or one value per channel).
        sigma: width (> 0), a number or a tensor (0-dim or one value per channel).

    Shape:
        ``[..., C, H, W]`` -> ``[..., 1, H, W]``.
    """
    return _log_well_exposedness(stack, mu, sigma).exp()


def _power(measure: Tensor, exponent: ParamLike, log_scale: float = 1.0) -> Tensor:
    """``measure ** (exponent * log_scale)`` for ``measure >= 0``, with ``0 ** p = 0`` for p > 0,
    ``x ** 0 = 1`` (a measure switched off) and finite gradients at 0 for both arguments."""
    positive = measure > 0
    log_measure = torch.where(positive, measure, 1.0).log() * log_scale
    if isinstance(exponent, Tensor):
        alive = positive | (exponent == 0)
    else:
        alive = positive
    return torch.where(alive, (exponent * log_measure).exp(), 0.0)


def _raw_weights(
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

    def is_off(exponent: ParamLike) -> bool:
        return not isinstance(exponent, Tensor) and exponent == 0

    if not is_off(contrast_exponent):
        measure = _laplacian(luma(stack, preset), preset).abs()
        times(measure if _is_one(contrast_exponent) else _power(measure, contrast_exponent))
    if stack.shape[-3] == 3 and not is_off(saturation_exponent):
        squared = _saturation_squared(stack, preset)
        if _is_one(saturation_exponent):
            times(_safe_sqrt(squared))
        else:  # S^s = (S^2)^(s/2)
            times(_power(squared, saturation_exponent, 0.5))
    if not is_off(exposure_exponent):
        exposure_exponent = exposure_exponent.to(stack.dtype) if isinstance(exposure_exponent, Tensor) else exposure_exponent
        times((exposure_exponent * _log_well_exposedness(stack, mu, sigma)).exp())
    if weight is None:
        weight = torch.ones_like(stack[..., :1, :, :])
    return weight + WEIGHT_FLOOR


def _is_one(exponent: ParamLike) -> bool:
    return not isinstance(exponent, Tensor) and exponent == 1


def _normalise(weight: Tensor, mask: Tensor | None) -> Tensor:
    """Divide by the sum over frames (dim 1); pixels where a mask removes every frame get 0."""
    if mask is None:
        return weight / weight.sum(dim=1, keepdim=True)
    weight = weight * mask.to(weight.dtype)
    total = weight.sum(dim=1, keepdim=True)
    has_weight = total > 0
    return torch.where(has_weight, weight / torch.where(has_weight, total, 1.0), 0.0)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # 1e-12 and exp(-9.4 e) underflow in half precision: weights are computed in float32
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _cast_param(value: ParamLike, dtype: torch.dtype, device: torch.device) -> ParamLike:
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype)
    return float(value)


def check_params(contrast, saturation, exposure, mu, sigma, channels: int) -> None:
    """Validate the weight parameters (numbers or tensors); see :func:`mertens_weights`."""
    for name, value in (("contrast", contrast), ("saturation", saturation), ("exposure", exposure)):
        if isinstance(value, Tensor) and value.dim() != 0:
            raise ValueError(f"{name} must be a number or a 0-dim tensor, got shape {list(value.shape)}")
        _checks.check_scalar(value, name, minimum=0.0)
    _checks.check_scalar(mu, "mu", size=channels)
    _checks.check_scalar(sigma, "sigma", minimum=0.0, strict=True, size=channels)


def weights_5d(
    stack: Tensor,
    mask: Tensor | None,
    contrast: ParamLike,
    saturation: ParamLike,
    exposure: ParamLike,
    mu: ParamLike,
    sigma: ParamLike,
    preset: Preset,
) -> Tensor:
    """Normalised weights of a validated ``[B, N, C, H, W]`` stack -> ``[B, N, 1, H, W]``."""
    compute = _compute_dtype(stack.dtype)
    x = stack.to(compute)
    params = [_cast_param(p, compute, stack.device) for p in (contrast, saturation, exposure, mu, sigma)]
    weight = _normalise(_raw_weights(x, *params, preset), mask)
    return weight.to(stack.dtype)


def mertens_weights(
    stack: Tensor | Sequence[Tensor],
    *,
    contrast: ParamLike = 1.0,
    saturation: ParamLike = 1.0,
    exposure: ParamLike = 1.0,
    mu: ParamLike = 0.5,
    sigma: ParamLike = 0.2,
    preset: str | Preset = "mertens",
    mask: Tensor | None = None,
) -> Tensor:
    """Normalised Mertens weights ``W_n = C^c S^s E^e + 1e-12``, divided by their sum over frames.

    Mertens et al. 2007, Eq. (2) and Section 3.1; constants and conventions of the preset's
    reference code (``exposure_fusion.m`` or OpenCV ``MergeMertens``).

    Args:
        stack: frames ``[N, C, H, W]`` or ``[B, N, C, H, W]`` (or a list of ``[C, H, W]``),
            float in [0, 1]; C = 3 (RGB) or 1 (gray: no saturation measure).
        contrast, saturation, exposure: exponents >= 0 (0 switches a measure off), numbers or
            0-dim tensors (tensors carry gradients).
        mu, sigma: centre and width (> 0) of the well-exposedness Gaussian, numbers or tensors
            (0-dim or one value per channel).
        preset: ``"mertens"`` (default) or ``"opencv"``.
        mask: optional, broadcastable to ``[..., N, 1, H, W]``; multiplies the weights before
            normalisation (0 excludes a frame at a pixel; where every frame is excluded the
            weights are 0).

    Returns:
        weights ``[N, 1, H, W]`` or ``[B, N, 1, H, W]``, summing to 1 over N (where not masked).

    Example:
        >>> stack = torch.rand(3, 3, 16, 16)          # 3 RGB frames
        >>> w = mertens_weights(stack)                  # [3, 1, 16, 16]
        >>> torch.allclose(w.sum(0), torch.ones(1, 16, 16))
        True
    """
    stack5, unbatched = _checks.as_stack(stack)
    preset = get_preset(preset)
    check_params(contrast, saturation, exposure, mu, sigma, stack5.shape[2])
    mask5 = _checks.as_mask(mask, stack5, unbatched)
    weights = weights_5d(stack5, mask5, contrast, saturation, exposure, mu, sigma, preset)
    return weights.squeeze(0) if unbatched else weights
