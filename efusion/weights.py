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
from .pyramid import Workspace, _border_index, _pad, band_rows, needs_grad, reference_gradients, use_kernels

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
        return _channel_sum(deviation.square() / sigma.square()) * -0.5
    return _channel_sum(deviation.square()) * (-0.5 / (sigma * sigma))


def _channel_sum(x: Tensor) -> Tensor:
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

    if not _is_zero(contrast_exponent):
        measure = _laplacian(luma(stack, preset), preset).abs()
        times(measure if _is_one(contrast_exponent) else _power(measure, contrast_exponent))
    if stack.shape[-3] == 3 and not _is_zero(saturation_exponent):
        squared = _saturation_squared(stack, preset)
        if _is_one(saturation_exponent):
            times(_safe_sqrt(squared))
        else:  # S^s = (S^2)^(s/2)
            times(_power(squared, saturation_exponent, 0.5))
    if not _is_zero(exposure_exponent):
        exposure_exponent = exposure_exponent.to(stack.dtype) if isinstance(exposure_exponent, Tensor) else exposure_exponent
        times((exposure_exponent * _log_well_exposedness(stack, mu, sigma)).exp())
    if weight is None:
        weight = torch.ones_like(stack[..., :1, :, :])
    return weight + WEIGHT_FLOOR


def _is_one(value: ParamLike) -> bool:
    """Whether ``value`` is the number 1 (a tensor never is: its value may change, and it needs a gradient)."""
    return not isinstance(value, Tensor) and value == 1


def _is_zero(value: ParamLike) -> bool:
    """Whether ``value`` is the number 0 (an exponent that switches its measure off)."""
    return not isinstance(value, Tensor) and value == 0


def _scale_(x: Tensor, factor: ParamLike) -> Tensor:
    """``x *= factor`` in place, skipped when ``factor`` is the number 1."""
    return x if _is_one(factor) else x.mul_(factor)


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


def _kernel_params(params: Sequence[ParamLike], dtype: torch.dtype, device: torch.device) -> list[ParamLike]:
    """``(contrast, saturation, exposure, mu, sigma)`` for the band kernels: cast, and on a CPU the
    three exponents as numbers even when they are tensors.

    A number exponent takes ``pow``'s scalar paths (1 is a copy, 0.5 a square root; a 0-dim tensor
    always takes the general one, several times slower) and lets the kernels skip a power of 1, as
    for the defaults. Values are unchanged (``m ** 1 == m``); which exponents get a gradient is
    decided by the backward's ``wanted``, not by their type. Off the CPU they stay tensors (reading
    one would wait for the device).
    """
    values = [_cast_param(p, dtype, device) for p in params]
    return [_number(v) for v in values[:3]] + values[3:]


def check_params(contrast, saturation, exposure, mu, sigma, channels: int) -> tuple[ParamLike, ParamLike]:
    """Validate the weight parameters (numbers or tensors; see :func:`mertens_weights`) and return
    ``mu, sigma`` with per-channel lists turned into tensors."""
    for name, value in (("contrast", contrast), ("saturation", saturation), ("exposure", exposure)):
        if isinstance(value, Tensor) and value.dim() != 0:
            raise ValueError(f"{name} must be a number or a 0-dim tensor, got shape {list(value.shape)}")
        _checks.check_scalar(value, name, minimum=0.0)
    mu, sigma = _checks.as_channel_param(mu, "mu"), _checks.as_channel_param(sigma, "sigma")
    _checks.check_scalar(mu, "mu", size=channels)
    _checks.check_scalar(sigma, "sigma", minimum=0.0, strict=True, size=channels)
    return mu, sigma


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
    params = (contrast, saturation, exposure, mu, sigma)
    if use_kernels(stack, mask, *params) and not needs_grad(mask):
        mask = None if mask is None else mask.to(stack.dtype)
        if needs_grad(stack, *params):
            return WeightsFunction.apply(stack, mask, *params, preset)
        out = torch.empty_like(stack[:, :, :1])
        weights_into(stack, out, mask, *params, preset, Workspace(stack), band_rows(stack[:, 0].shape, stack.device))
        return out
    return _reference_weights(stack, mask, contrast, saturation, exposure, mu, sigma, preset)


def _reference_weights(stack, mask, contrast, saturation, exposure, mu, sigma, preset: Preset) -> Tensor:
    """:func:`weights_5d` by the reference code (plain tensor operations, differentiable to any order)."""
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
        mu, sigma: centre and width (> 0) of the well-exposedness Gaussian, numbers, or one
            value per channel as a list or a tensor (tensors, also 0-dim, carry gradients).
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
    mu, sigma = check_params(contrast, saturation, exposure, mu, sigma, stack5.shape[2])
    mask5 = _checks.as_mask(mask, stack5, unbatched)
    weights = weights_5d(stack5, mask5, contrast, saturation, exposure, mu, sigma, preset)
    return weights.squeeze(0) if unbatched else weights


# ----------------------------------------------------------------------------------------------
# Band kernel for the fast paths (no autograd)
#
# The same operations as ``_raw_weights`` and ``_normalise`` in the same order (so the same bits),
# written into reusable buffers one band of rows at a time: the ~30 elementwise passes of the
# three measures then run on data in cache, and the normalisation of a band over all frames
# happens while the band's weights are still there.


def _luma_band_into(frame: Tensor, r0: int, r1: int, out: Tensor, preset: Preset, ws: Workspace) -> None:
    """Gray rows ``[r0, r1)`` of ``frame [..., C, H, W]`` into ``out [..., 1, r1 - r0, W]``."""
    x = frame[..., r0:r1, :]
    if x.shape[-3] == 1:
        out.copy_(x)
        return
    wr, wg, wb = preset.luma_weights
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    if preset.luma_form == "opencv_fma" and x.dtype == torch.float32:
        # luma()'s float64 emulation of OpenCV's fma(b, wb, fma(r, wr, g * wg))
        single = ws.get("luma_f32", out.shape)
        green, acc = ws.get("luma_f64a", out.shape, torch.float64), ws.get("luma_f64b", out.shape, torch.float64)
        torch.mul(g, wg, out=single)
        green.copy_(single)
        acc.copy_(r).mul_(_f32(wr)).add_(green)
        single.copy_(acc)
        green.copy_(single)
        acc.copy_(b).mul_(_f32(wb)).add_(green)
        out.copy_(acc)
        return
    term = ws.get("luma_term", out.shape)
    torch.mul(r, wr, out=out)
    out.add_(torch.mul(g, wg, out=term))
    out.add_(torch.mul(b, wb, out=term))


def _contrast_band_into(frame: Tensor, r0: int, r1: int, out: Tensor, preset: Preset, ws: Workspace) -> None:
    """``|Laplacian(luma)|`` rows ``[r0, r1)`` into ``out [..., 1, r1 - r0, W]``."""
    _laplacian_band_into(frame, r0, r1, out, preset, ws)
    out.abs_()


def _laplacian_band_into(frame: Tensor, r0: int, r1: int, out: Tensor, preset: Preset, ws: Workspace) -> None:
    """``Laplacian(luma)`` (signed) rows ``[r0, r1)`` into ``out [..., 1, r1 - r0, W]``."""
    height, width = frame.shape[-2:]
    mode = preset.laplacian_border
    # gray rows r0 - 1 .. r1 with one column of border on each side
    shape = list(out.shape)
    shape[-2], shape[-1] = r1 - r0 + 2, width + 2
    gray = ws.get("gray", shape)
    lo, hi = max(r0 - 1, 0), min(r1 + 1, height)
    _luma_band_into(frame, lo, hi, gray[..., lo - r0 + 1:hi - r0 + 1, 1:width + 1], preset, ws)
    if r0 == 0:
        gray[..., 0, 1:width + 1].copy_(gray[..., _border_index(-1, height, mode) + 1, 1:width + 1])
    if r1 == height:
        gray[..., -1, 1:width + 1].copy_(gray[..., _border_index(height, height, mode) - r0 + 1, 1:width + 1])
    gray[..., 0].copy_(gray[..., _border_index(-1, width, mode) + 1])
    gray[..., -1].copy_(gray[..., _border_index(width, width, mode) + 1])
    centre = gray[..., 1:-1, 1:-1]
    up, down = gray[..., :-2, 1:-1], gray[..., 2:, 1:-1]
    left, right = gray[..., 1:-1, :-2], gray[..., 1:-1, 2:]
    if preset.laplacian_form == "differences":  # as _laplacian(): exact zeros where neighbours cancel
        pair, other = ws.get("lap_a", out.shape), ws.get("lap_b", out.shape)
        torch.sub(up, centre, out=out)
        out.add_(torch.sub(down, centre, out=pair))
        torch.sub(left, centre, out=pair)
        pair.add_(torch.sub(right, centre, out=other))
        out.add_(pair)
    else:
        term = ws.get("lap_a", out.shape)
        torch.add(up, left, out=out)
        out.add_(torch.mul(centre, -4.0, out=term))
        out.add_(right)
        out.add_(down)


def _saturation_squared_band_into(x: Tensor, out: Tensor, preset: Preset, ws: Workspace) -> None:
    """``_saturation_squared`` of the band ``x [..., 3, k, W]`` into ``out [..., 1, k, W]``."""
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    term = ws.get("sat_term", out.shape)
    if preset.saturation_form == "pairwise":
        torch.sub(r, g, out=out).square_()
        out.add_(torch.sub(g, b, out=term).square_())
        out.add_(torch.sub(b, r, out=term).square_())
        out.div_(9.0)
        return
    mean = ws.get("sat_mean", out.shape)
    torch.add(r, g, out=mean).add_(b).mul_(_f32(1.0 / 3.0) if x.dtype == torch.float32 else 1.0 / 3.0)
    torch.sub(r, mean, out=out).square_()
    out.add_(torch.sub(g, mean, out=term).square_())
    out.add_(torch.sub(b, mean, out=term).square_())


def _log_well_exposedness_band_into(x: Tensor, out: Tensor, mu: ParamLike, sigma: ParamLike, ws: Workspace) -> None:
    """``_log_well_exposedness`` of the band ``x [..., C, k, W]`` into ``out [..., 1, k, W]``."""
    mu, sigma = _per_channel(mu, x), _per_channel(sigma, x)
    term = ws.get("exp_term", out.shape)
    for c in range(x.shape[-3]):
        target = out if c == 0 else term
        torch.sub(x[..., c:c + 1, :, :], _channel_value(mu, c), out=target).square_()
        if isinstance(sigma, Tensor):
            target.div_(_channel_value(sigma, c).square())
        if c:
            out.add_(term)
    out.mul_(-0.5 if isinstance(sigma, Tensor) else -0.5 / (sigma * sigma))


def _channel_value(value: ParamLike, channel: int) -> ParamLike:
    """Channel ``channel``'s entry of a ``_per_channel`` value (a number, 0-dim or ``[C or 1, 1, 1]``)."""
    if isinstance(value, Tensor) and value.dim() == 3:
        return value[channel if value.shape[0] > 1 else 0]
    return value


def _power_(measure: Tensor, exponent: ParamLike, log_scale: float, ws: Workspace) -> None:
    """``_power(measure, exponent, log_scale)`` in place, as ``measure ** (exponent * log_scale)``.

    ``pow`` has ``_power``'s values where they matter, 0 ** p = 0 for p > 0 and x ** 0 = 1 (also
    at 0), in one pass instead of ``exp(p * log(x))``'s several; elsewhere they differ by rounding.
    """
    measure.pow_(exponent * log_scale if log_scale != 1.0 else exponent)


def _raw_weights_band_into(
    frame: Tensor, r0: int, r1: int, out: Tensor, contrast_exponent, saturation_exponent, exposure_exponent,
    mu, sigma, preset: Preset, ws: Workspace,
) -> None:
    """``_raw_weights`` of rows ``[r0, r1)`` of ``frame [..., C, H, W]`` into ``out [..., 1, r1 - r0, W]``."""

    x = frame[..., r0:r1, :]
    started = False
    factor = ws.get("factor", out.shape)
    if not _is_zero(contrast_exponent):
        _contrast_band_into(frame, r0, r1, out, preset, ws)
        if not _is_one(contrast_exponent):
            _power_(out, contrast_exponent, 1.0, ws)
        started = True
    if x.shape[-3] == 3 and not _is_zero(saturation_exponent):
        target = factor if started else out
        _saturation_squared_band_into(x, target, preset, ws)
        if _is_one(saturation_exponent):
            target.sqrt_()
        else:
            _power_(target, saturation_exponent, 0.5, ws)
        if started:
            out.mul_(factor)
        started = True
    if not _is_zero(exposure_exponent):
        target = factor if started else out
        _log_well_exposedness_band_into(x, target, mu, sigma, ws)
        if isinstance(exposure_exponent, Tensor):
            target.mul_(exposure_exponent.to(x.dtype))
        elif exposure_exponent != 1:
            target.mul_(exposure_exponent)
        target.exp_()
        if started:
            out.mul_(factor)
        started = True
    if not started:
        out.fill_(1.0)
    out.add_(WEIGHT_FLOOR)


def weights_into(
    stack: Tensor,
    out: Tensor,
    mask: Tensor | None,
    contrast: ParamLike,
    saturation: ParamLike,
    exposure: ParamLike,
    mu: ParamLike,
    sigma: ParamLike,
    preset: Preset,
    ws: Workspace,
    rows: int,
    total: Tensor | None = None,
) -> None:
    """:func:`weights_5d` of a float32/float64 ``[B, N, C, H, W]`` stack into ``out [B, N, 1, H, W]``.

    Band by band: the raw weights of every frame for a band of rows, then their normalisation.
    ``total [B, 1, 1, H, W]``, when given, receives the normaliser (1 where nothing is left).
    """
    height = stack.shape[-2]
    params = _kernel_params((contrast, saturation, exposure, mu, sigma), stack.dtype, stack.device)
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        band = out[..., r0:r1, :]
        for n in range(stack.shape[1]):
            _raw_weights_band_into(stack[:, n], r0, r1, band[:, n], *params, preset, ws)
        _normalise_band_(band, _rows(mask, r0, r1), ws, None if total is None else total[..., r0:r1, :])


def _rows(x: Tensor | None, r0: int, r1: int) -> Tensor | None:
    """Rows ``[r0, r1)`` of a map that may broadcast along rows (size 1) or be absent."""
    if x is None or x.shape[-2] == 1:
        return x
    return x[..., r0:r1, :]


def raw_weights_into(
    frame: Tensor,
    out: Tensor,
    contrast: ParamLike,
    saturation: ParamLike,
    exposure: ParamLike,
    mu: ParamLike,
    sigma: ParamLike,
    preset: Preset,
    ws: Workspace,
    rows: int,
) -> None:
    """Unnormalised weights ``C^c S^s E^e + 1e-12`` of a float32/float64 frame ``[B, C, H, W]``
    into ``out [B, 1, H, W]``, band by band (the streaming path normalises them itself)."""
    params = _kernel_params((contrast, saturation, exposure, mu, sigma), frame.dtype, frame.device)
    for r0 in range(0, frame.shape[-2], rows):
        r1 = min(r0 + rows, frame.shape[-2])
        _raw_weights_band_into(frame, r0, r1, out[..., r0:r1, :], *params, preset, ws)


def _normalise_band_(weight: Tensor, mask: Tensor | None, ws: Workspace, total: Tensor | None = None) -> None:
    """``_normalise`` in place on a band ``[B, N, 1, k, W]`` (the normaliser into ``total``)."""
    shape = list(weight.shape)
    shape[1] = 1
    total = ws.get("total", shape) if total is None else total
    if mask is None:
        weight.div_(torch.sum(weight, dim=1, keepdim=True, out=total))
        return
    weight.mul_(mask)
    torch.sum(weight, dim=1, keepdim=True, out=total)
    no_weight = torch.logical_not(torch.gt(total, 0, out=ws.get("has_weight", shape, torch.bool)),
                                  out=ws.get("no_weight", shape, torch.bool))
    weight.div_(total.masked_fill_(no_weight, 1.0))
    weight.masked_fill_(no_weight, 0.0)


class WeightsFunction(torch.autograd.Function):
    """:func:`weights_5d` (float32/float64, eager) as an autograd function.

    Forward: the band kernels. Backward: :func:`weights_backward` (the normalisation's gradient in
    closed form, then the measures recomputed and differentiated by hand, band by band), or, when
    autograd records the backward (``create_graph=True``), the reference code's gradient
    (:func:`~efusion.pyramid.reference_gradients`), so second derivatives work.
    ``apply(stack, mask, contrast, saturation, exposure, mu, sigma, preset)``; the mask gets no
    gradient.
    """

    @staticmethod
    def forward(ctx, stack, mask, contrast, saturation, exposure, mu, sigma, preset):
        params = (contrast, saturation, exposure, mu, sigma)
        weights = torch.empty_like(stack[:, :, :1])
        total = torch.empty_like(weights[:, :1])
        weights_into(stack, weights, mask, *params, preset, Workspace(stack), band_rows(stack[:, 0].shape, stack.device), total)
        ctx.preset = preset
        ctx.numbers = [None if isinstance(p, Tensor) else p for p in params]
        ctx.save_for_backward(stack, mask, weights, total, *[p if isinstance(p, Tensor) else None for p in params])
        return weights

    @staticmethod
    def backward(ctx, grad):
        stack, mask, weights, total, *tensors = ctx.saved_tensors
        params = [t if t is not None else number for t, number in zip(tensors, ctx.numbers)]
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True
            grads = reference_gradients(lambda: _reference_weights(stack, mask, *params, ctx.preset),
                                        [stack, mask, *params], needs[:7], grad)
            return (*grads, None)
        grads = weights_backward(stack, mask, weights, total, params, grad, ctx.preset, needs[0], needs[2:7])
        return (grads[0], None, *grads[1:], None)


def weights_backward(stack, mask, weights, total, params, grad, preset, stack_needs_grad, params_need_grad, grad_stack=None,
                     ws: Workspace | None = None):
    """Gradients of :class:`WeightsFunction` for the stack and the five parameters.

    The stack's is added into ``grad_stack`` when given (else a new tensor); returns
    ``[grad_stack, grad_contrast, ..., grad_sigma]`` (``None`` where not needed or not used).
    See :class:`WeightsBackward`, which takes the weights' gradient ``grad`` band by band.
    """
    backward = WeightsBackward(stack, mask, weights, total, params, preset, stack_needs_grad, params_need_grad,
                               grad_stack, ws)
    height = stack.shape[-2]
    for r0 in range(0, height, backward.rows):
        r1 = min(r0 + backward.rows, height)
        backward.band(grad[..., r0:r1, :], r0, r1)
    return backward.result()


class WeightsBackward:
    """:func:`weights_backward` one band of rows at a time (``band(grad_rows, r0, r1)`` for the bands
    of :attr:`rows` rows, then :meth:`result`), so that a caller can produce the weights' gradient
    band by band and hand each over while it is in cache.

    Per band: the normalisation's gradient in closed form, then each frame's measures are
    recomputed by the band kernels and differentiated by hand (:func:`_raw_weights_backward_band`),
    with the reference code's conventions at the kinks (0 where a measure is 0).
    """

    names = ("contrast", "saturation", "exposure", "mu", "sigma")

    def __init__(self, stack, mask, weights, total, params, preset, stack_needs_grad, params_need_grad,
                 grad_stack=None, ws: Workspace | None = None) -> None:
        self.stack, self.mask, self.weights, self.total, self.params, self.preset = stack, mask, weights, total, params, preset
        self.rows = band_rows(stack[:, 0].shape, stack.device)
        self.ws = Workspace(stack) if ws is None else ws
        if stack_needs_grad and grad_stack is None:
            grad_stack = torch.zeros_like(stack)
        self.grad_stack = grad_stack if stack_needs_grad else None
        self.values = _kernel_params(params, stack.dtype, stack.device)
        self.sums: dict[str, Tensor] = {}
        self.wanted = {name for name, need in zip(self.names, params_need_grad) if need}

    def band(self, band_grad: Tensor, r0: int, r1: int) -> None:
        """Backpropagate rows ``[r0, r1)`` of the weights' gradient (``band_grad [B, N, 1, r1 - r0, W]``)."""
        ws = self.ws
        # w_n = m_n W_n / T with T = sum_k m_k W_k, so dL/dW_n = m_n (g_n - sum_k g_k w_k) / T
        shape = list(band_grad.shape)
        raw_grad = ws.get("raw_grad", shape)
        torch.mul(band_grad, self.weights[..., r0:r1, :], out=raw_grad)
        shape[1] = 1
        dot = torch.sum(raw_grad, dim=1, keepdim=True, out=ws.get("dot", shape))
        torch.sub(band_grad, dot, out=raw_grad).div_(self.total[..., r0:r1, :])
        if self.mask is not None:
            raw_grad.mul_(_rows(self.mask, r0, r1))
        for n in range(self.stack.shape[1]):
            _raw_weights_backward_band(
                self.stack[:, n], r0, r1, raw_grad[:, n], None if self.grad_stack is None else self.grad_stack[:, n],
                self.values, self.wanted, self.sums, self.preset, ws,
            )

    def result(self) -> list:
        """``[grad_stack, grad_contrast, ..., grad_sigma]`` once every band is done."""
        out = [self.grad_stack]
        for name, p in zip(self.names, self.params):
            total_grad = self.sums.get(name)
            if name not in self.wanted or total_grad is None:  # not needed, or the parameter was not used
                out.append(None)
                continue
            out.append(total_grad.reshape(p.shape).to(p.dtype))
        return out


def _add_sum(sums: dict, name: str, value: Tensor) -> None:
    sums[name] = value if name not in sums else sums[name] + value


def _raw_weights_backward_band(frame, r0, r1, raw_grad, grad_frame, values, wanted, sums, preset, ws) -> None:
    """Backpropagate ``raw_grad`` (the gradient of rows ``[r0, r1)`` of ``_raw_weights(frame)``)
    into ``grad_frame`` (when given) and the parameter sums.

    ``W = P + 1e-12`` where ``P`` multiplies the factors ``m ** (p k)`` of the contrast
    (``m = |Laplacian|``, k = 1) and the saturation (``m = S^2``, k = 1/2) with the exposure's
    ``exp(e log E)``. All gradients go through one map, ``Q = raw_grad * P``:
    ``d/dp = k sum(Q log m)``, ``d/dm = Q p k / m`` and ``d/d(log E) = Q e``, ``d/de = sum(Q log E)``.
    Where a measure is 0 either ``P`` is 0 or the exponent is, so taking the log of (and dividing
    by) 1 there gives the reference's gradients, 0 (``_power``'s and ``_safe_sqrt``'s convention;
    the Laplacian's ``sign`` is 0 there too).
    """
    contrast_exponent, saturation_exponent, exposure_exponent, mu, sigma = values
    x = frame[..., r0:r1, :]
    shape = raw_grad.shape

    def used(name: str, exponent: ParamLike) -> bool:
        return name in wanted or isinstance(exponent, Tensor) or exponent != 0

    # the measures, then P as the product of their factors (see _raw_weights_band_into)
    measures = []  # (name, measure, its exponent, k)
    if used("contrast", contrast_exponent):
        laplacian = ws.get("bw_laplacian", shape)
        _laplacian_band_into(frame, r0, r1, laplacian, preset, ws)
        measures.append(("contrast", torch.abs(laplacian, out=ws.get("bw_contrast", shape)), contrast_exponent, 1.0))
    if x.shape[-3] == 3 and used("saturation", saturation_exponent):
        squared = ws.get("bw_saturation_squared", shape)
        _saturation_squared_band_into(x, squared, preset, ws)
        measures.append(("saturation", squared, saturation_exponent, 0.5))
    exposure = used("exposure", exposure_exponent)
    if not measures and not exposure:
        return  # W is a constant
    q = ws.get("bw_q", shape)
    factor = ws.get("bw_factor", shape)
    for i, (_, measure, exponent, k) in enumerate(measures):
        torch.pow(measure, exponent * k if k != 1.0 else exponent, out=q if i == 0 else factor)
        if i:
            q.mul_(factor)
    if exposure:
        log_e = ws.get("bw_log_exposure", shape)
        _log_well_exposedness_band_into(x, log_e, mu, sigma, ws)
        target = q if not measures else factor
        if _is_one(exposure_exponent):
            torch.exp(log_e, out=target)
        else:
            torch.mul(log_e, exposure_exponent, out=target).exp_()
        if measures:
            q.mul_(factor)
    q.mul_(raw_grad)  # Q
    band_grad = None if grad_frame is None else grad_frame[..., r0:r1, :]  # added into directly
    measure_grad = ws.get("bw_measure_grad", shape)
    for name, measure, exponent, k in measures:
        if name not in wanted and grad_frame is None:
            continue
        zero = torch.eq(measure, 0, out=ws.get("bw_zero", shape))  # 1.0 where the measure is 0
        # the measure with 1 where it is 0, for log m and (saturation) Q / m
        safe = torch.add(measure, zero, out=factor) if name in wanted or name == "saturation" else None
        if grad_frame is not None:
            if name == "contrast":  # d/dL = Q c / L: the sign of L included, 1 put where L is 0
                torch.div(q, torch.add(laplacian, zero, out=measure_grad), out=measure_grad)
                _scale_(measure_grad, exponent)
                _laplacian_adjoint_add_(measure_grad, r0, r1, grad_frame, _luma_gradient_weights(frame, preset), preset, ws)
            else:
                _scale_(torch.div(q, safe, out=measure_grad), exponent * k)
                _saturation_squared_backward_add_(x, measure_grad, band_grad, preset, ws)
        if name in wanted:
            _add_sum(sums, name, torch.dot(q.view(-1), safe.log_().view(-1)) * k)
    if exposure:
        if "exposure" in wanted:
            _add_sum(sums, "exposure", torch.dot(q.view(-1), log_e.view(-1)))
        if band_grad is not None or {"mu", "sigma"} & wanted:
            exposure_grad = q if _is_one(exposure_exponent) else torch.mul(q, exposure_exponent, out=measure_grad)
            _log_well_exposedness_backward_(x, exposure_grad, band_grad, mu, sigma, wanted, sums, ws, log_e)


def _luma_gradient_weights(frame: Tensor, preset: Preset) -> tuple[float, ...]:
    """d gray / d channel (the float32 weights of OpenCV's cvtColor for its emulation)."""
    if frame.shape[-3] == 1:
        return (1.0,)
    if preset.luma_form == "opencv_fma" and frame.dtype == torch.float32:
        return tuple(_f32(w) for w in preset.luma_weights)
    return preset.luma_weights


def _laplacian_adjoint_add_(grad: Tensor, r0: int, r1: int, grad_frame: Tensor, luma_weights, preset: Preset,
                            ws: Workspace) -> None:
    """``grad_frame += luma^T Laplacian^T grad`` for the Laplacian rows ``[r0, r1)``.

    The band's share is scattered into rows ``r0 - 1 .. r1`` (neighbouring bands add theirs);
    taps the Laplacian read beyond the image (border copies) are folded back onto their sources.
    """
    height, width = grad_frame.shape[-2:]
    mode = preset.laplacian_border
    shape = list(grad.shape)
    shape[-2], shape[-1] = r1 - r0 + 2, width + 2
    spread = ws.get("bw_spread", shape)  # rows r0 - 1 .. r1, columns -1 .. width
    spread.zero_()
    torch.mul(grad, -4.0, out=spread[..., 1:-1, 1:-1])
    spread[..., :-2, 1:-1].add_(grad)
    spread[..., 2:, 1:-1].add_(grad)
    spread[..., 1:-1, :-2].add_(grad)
    spread[..., 1:-1, 2:].add_(grad)
    spread[..., _border_index(-1, width, mode) + 1].add_(spread[..., 0])
    spread[..., _border_index(width, width, mode) + 1].add_(spread[..., -1])
    if r0 == 0:
        spread[..., _border_index(-1, height, mode) + 1, :].add_(spread[..., 0, :])
    if r1 == height:
        spread[..., _border_index(height, height, mode) - r0 + 1, :].add_(spread[..., -1, :])
    lo, hi = max(r0 - 1, 0), min(r1 + 1, height)
    source = spread[..., lo - r0 + 1:hi - r0 + 1, 1:-1]
    for c, weight in enumerate(luma_weights):
        grad_frame[..., c:c + 1, lo:hi, :].add_(source, alpha=weight)


def _saturation_squared_backward_add_(x: Tensor, grad: Tensor, out: Tensor, preset: Preset, ws: Workspace) -> None:
    """``out [..., 3, k, W] += d _saturation_squared(x) / dx * grad``.

    The derivative of the forward's operations as they are rounded (as autograd through them
    would take it): near gray pixels the saturation's gradient ``(c - m) / S`` is a ratio of
    rounding-sized numbers, which the reference path's gradients decide.
    """
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    shape = grad.shape
    if preset.saturation_form == "pairwise":  # s2 = ((r-g)^2 + (g-b)^2 + (b-r)^2) / 9
        red_green, green_blue, blue_red = (ws.get(f"bw_pair{i}", shape) for i in range(3))
        torch.sub(r, g, out=red_green)
        torch.sub(g, b, out=green_blue)
        torch.sub(b, r, out=blue_red)
        difference = ws.get("bw_diff", shape)
        out[..., 0:1, :, :].addcmul_(grad, torch.sub(red_green, blue_red, out=difference), value=2.0 / 9.0)
        out[..., 1:2, :, :].addcmul_(grad, torch.sub(green_blue, red_green, out=difference), value=2.0 / 9.0)
        out[..., 2:3, :, :].addcmul_(grad, torch.sub(blue_red, green_blue, out=difference), value=2.0 / 9.0)
        return
    # s2 = sum_c (c - m)^2 with m = (r + g + b) k: d s2 / dc = 2 (c - m) - 2 k sum_c' (c' - m)
    third = _f32(1.0 / 3.0) if x.dtype == torch.float32 else 1.0 / 3.0
    mean = ws.get("bw_mean", shape)
    torch.add(r, g, out=mean).add_(b).mul_(third)
    deviations = [torch.sub(channel, mean, out=ws.get(f"bw_dev{i}", shape)) for i, channel in enumerate((r, g, b))]
    shared = ws.get("bw_shared", shape)
    torch.add(deviations[0], deviations[1], out=shared).add_(deviations[2]).mul_(third)
    for c, deviation in enumerate(deviations):
        out[..., c:c + 1, :, :].addcmul_(grad, deviation.sub_(shared), value=2.0)


def _number(value: ParamLike) -> ParamLike:
    """A 0-dim CPU tensor as a number (other values as they are)."""
    if isinstance(value, Tensor) and value.dim() == 0 and value.device.type == "cpu":
        return value.item()
    return value


def _log_well_exposedness_backward_(x: Tensor, grad: Tensor, out: Tensor | None, mu, sigma, wanted: set, sums: dict,
                                    ws: Workspace, log_e: Tensor | None = None) -> None:
    """Backpropagate ``grad`` of ``_log_well_exposedness(x, mu, sigma)`` into ``out`` and mu, sigma.

    log E = -1/2 sum_c (x_c - mu_c)^2 / sigma_c^2: d/dx_c = -(x_c - mu_c) / sigma_c^2 = -d/dmu_c,
    d/dsigma_c = (x_c - mu_c)^2 / sigma_c^3. With one sigma for every channel the latter sum to
    ``-2 log E / sigma``, taken from ``log_e`` (the forward value) when given.
    """
    mu_c_all, sigma_c_all = _per_channel(mu, x), _per_channel(sigma, x)
    channels = x.shape[-3]
    want_mu = "mu" in wanted and isinstance(mu, Tensor)
    want_sigma = "sigma" in wanted and isinstance(sigma, Tensor)
    mu_sums, sigma_sums = [], []
    if want_sigma and log_e is not None and sigma.numel() == 1:
        sigma_sums.append(torch.dot(grad.view(-1), log_e.view(-1)) * (-2.0 / _number(sigma.reshape(()))))
        want_sigma = False
    deviation = ws.get("bw_deviation", grad.shape)
    for c in range(channels):
        sigma_c = _number(_channel_value(sigma_c_all, c))
        inverse_variance = 1.0 / (sigma_c * sigma_c)
        torch.sub(x[..., c:c + 1, :, :], _channel_value(mu_c_all, c), out=deviation)
        if want_mu:  # d/dmu_c = -d/dx_c
            mu_sums.append(torch.dot(deviation.view(-1), grad.view(-1)) * inverse_variance)
        if want_sigma:
            weighted = torch.mul(deviation, grad, out=ws.get("bw_weighted_deviation", grad.shape))
            sigma_sums.append(torch.dot(weighted.view(-1), deviation.view(-1)) * inverse_variance / sigma_c)
        if out is not None:
            if isinstance(inverse_variance, Tensor):
                out[..., c:c + 1, :, :].addcmul_(deviation.mul_(inverse_variance), grad, value=-1.0)
            else:
                out[..., c:c + 1, :, :].addcmul_(deviation, grad, value=-inverse_variance)
    for name, parts, value in (("mu", mu_sums, mu), ("sigma", sigma_sums, sigma)):
        if parts:
            per_channel = isinstance(value, Tensor) and value.dim() == 1 and value.numel() == channels and channels > 1
            _add_sum(sums, name, torch.stack(parts) if per_channel else torch.stack(parts).sum())
