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

import math

import torch
from torch import Tensor

from .. import _checks
from .._util import ParamLike, f32, is_one, is_zero
from ..presets import Preset, get_preset
from .masks import fill_masked
from .pyramid import pad

__all__ = [
    "WEIGHT_FLOOR",
    "cast_param",
    "channel_sum",
    "compute_dtype",
    "contrast",
    "exact_samples",
    "fusion_weights",
    "laplacian",
    "log_normalise",
    "log_weights",
    "log_well_exposedness",
    "luma",
    "may_overflow",
    "measure_terms",
    "normalise",
    "per_channel",
    "power",
    "product_weights",
    "raw_weights",
    "safe_sqrt",
    "saturation",
    "saturation_squared",
    "well_exposedness",
]

#: Mertens' ``W = W + 1e-12`` (exposure_fusion.m), also OpenCV's ``+ 1e-12f``: avoids 0 / 0.
WEIGHT_FLOOR = 1e-12


def exact_samples(stack: Tensor, preset: Preset) -> Tensor:
    """The samples contrast and saturation are measured on: ``stack`` itself, or, for a float32
    stack of integer frames (``preset.integer_samples = M``), the exact values ``k / M`` in float64
    (``round(x M) / M``; the gradient passes straight through the rounding, as if it were exact).
    See :attr:`~efusion.presets.Preset.integer_samples`."""
    grid = preset.integer_samples
    if not grid or stack.dtype != torch.float32:
        return stack
    wide = stack.double()
    return wide + ((wide * grid).round() / grid - wide).detach()


def luma(stack: Tensor, preset: str | Preset = "mertens") -> Tensor:
    """Gray image with the preset's luma weights (MATLAB ``rgb2gray`` or OpenCV ``RGB2GRAY``).

    Shape:
        ``[..., C, H, W]`` -> ``[..., 1, H, W]`` (C = 1 is returned as is).
    """
    if stack.shape[-3] == 1:
        return stack
    preset = get_preset(preset)
    wr, wg, wb = preset.luma_weights
    r, g, b = preset.channels(stack)
    if preset.luma_form == "opencv_fma" and stack.dtype == torch.float32:
        # OpenCV's vectorised cvtColor evaluates fma(b, wb, fma(r, wr, g * wg)) in float32; an
        # fma is exact products and one rounding, which float64 arithmetic reproduces here.
        green = (g * wg).double()
        red_green = (r.double() * f32(wr) + green).float().double()
        return (b.double() * f32(wb) + red_green).float()
    return r * wr + g * wg + b * wb


def laplacian(gray: Tensor, preset: Preset) -> Tensor:
    """3x3 Laplacian ``[0 1 0; 1 -4 1; 0 1 0]`` with the preset's border; in float32, magnitudes
    below the preset's ``flat_contrast`` (luma rounding, see :class:`~efusion.presets.Preset`) are 0."""
    response = _laplacian(gray, preset)
    if preset.flat_contrast and response.dtype == torch.float32:
        return torch.where(response.abs() < preset.flat_contrast, 0.0, response)
    return response


def _laplacian(gray: Tensor, preset: Preset) -> Tensor:
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
    r, g, b = preset.channels(stack)
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
    alive, log_measure = _log_measure(measure, exponent, log_scale)
    return torch.where(alive, (exponent * log_measure).exp(), 0.0)


def _log_measure(measure: Tensor, exponent: ParamLike, log_scale: float) -> tuple[Tensor, Tensor]:
    """``(alive, log(measure) * log_scale)``: ``alive`` where ``measure ** exponent`` is not 0
    (measure > 0, or a tensor exponent of 0), the log with 1 put where the measure is 0 (the
    double-``where`` pattern: finite gradients there)."""
    positive = measure > 0
    log_measure = torch.where(positive, measure, 1.0).log() * log_scale
    alive = positive | (exponent == 0) if isinstance(exponent, Tensor) else positive
    return alive, log_measure


def measure_terms(
    stack: Tensor,
    contrast_exponent: ParamLike,
    saturation_exponent: ParamLike,
    exposure_exponent: ParamLike,
    mu: ParamLike,
    sigma: ParamLike,
    preset: Preset,
) -> list[tuple[str, Tensor, ParamLike]]:
    """The measures a weight multiplies, as ``(form, map [..., 1, H, W], exponent)``: ``"plain"``
    (the contrast ``C``, weighed as ``C^c``), ``"squared"`` (``S^2``, weighed as ``(S^2)^(s/2)``)
    and ``"log"`` (``log E``, weighed as ``exp(e log E)``); measures switched off are left out."""
    terms: list[tuple[str, Tensor, ParamLike]] = []
    exact = exact_samples(stack, preset)
    if not is_zero(contrast_exponent):
        terms.append(("plain", laplacian(luma(exact, preset), preset).abs().to(stack.dtype), contrast_exponent))
    if stack.shape[-3] == 3 and not is_zero(saturation_exponent):
        terms.append(("squared", saturation_squared(exact, preset).to(stack.dtype), saturation_exponent))
    if not is_zero(exposure_exponent):
        exposure_exponent = exposure_exponent.to(stack.dtype) if isinstance(exposure_exponent, Tensor) else exposure_exponent
        terms.append(("log", log_well_exposedness(stack, mu, sigma), exposure_exponent))
    return terms


def product_weights(terms: list[tuple[str, Tensor, ParamLike]], like: Tensor, skip: Tensor | None = None,
                    large: list[Tensor] | None = None) -> Tensor:
    """``C^c * S^s * E^e + 1e-12`` from :func:`measure_terms`; where ``skip`` is true every factor is
    1 (no inf there, nor in the gradient: pixels the log-domain weights take over). ``large``, when
    given, receives a map of where a factor exceeds the square root of the dtype's largest value
    (a product, or its gradient, may overflow there)."""
    weight: Tensor | None = None
    for form, measure, exponent in terms:
        if skip is not None:
            measure = torch.where(skip, 0.0 if form == "log" else 1.0, measure)
        if form == "plain":
            factor = measure if is_one(exponent) else power(measure, exponent)
        elif form == "squared":  # S^s = (S^2)^(s/2)
            factor = safe_sqrt(measure) if is_one(exponent) else power(measure, exponent, 0.5)
        else:
            factor = (exponent * measure).exp()
        if large is not None:
            beyond = factor.detach() > math.sqrt(torch.finfo(factor.dtype).max)
            large.append(beyond if not large else large.pop() | beyond)
        weight = factor if weight is None else weight * factor
    if weight is None:
        weight = torch.ones_like(like[..., :1, :, :])
    return weight + WEIGHT_FLOOR


def log_weights(terms: list[tuple[str, Tensor, ParamLike]], like: Tensor) -> Tensor:
    """``log(C^c * S^s * E^e + 1e-12)`` from :func:`measure_terms`, computed as
    ``logaddexp(c log C + s log S + e log E, log 1e-12)``: finite for any finite exponents >= 0,
    with finite gradients (``log 0`` by the double-``where`` pattern, as :func:`power`)."""
    total: Tensor | None = None
    for form, measure, exponent in terms:
        if form == "log":
            term = exponent * measure
        else:
            alive, log_measure = _log_measure(measure, exponent, 0.5 if form == "squared" else 1.0)
            term = torch.where(alive, exponent * log_measure, -math.inf)
        total = term if total is None else total + term
    if total is None:
        total = torch.zeros_like(like[..., :1, :, :])
    # new_full fills on the device (torch.tensor(..., device=) would copy from the host: a sync on a GPU)
    return torch.logaddexp(total, total.new_full((), math.log(WEIGHT_FLOOR)))


def raw_weights(
    stack: Tensor,
    contrast_exponent: ParamLike,
    saturation_exponent: ParamLike,
    exposure_exponent: ParamLike,
    mu: ParamLike,
    sigma: ParamLike,
    preset: Preset,
) -> Tensor:
    """``C^c * S^s * E^e + 1e-12`` for a stack ``[..., C, H, W]`` -> ``[..., 1, H, W]`` (may overflow
    to inf for large exponents; :func:`fusion_weights` then normalises in the log domain)."""
    terms = measure_terms(stack, contrast_exponent, saturation_exponent, exposure_exponent, mu, sigma, preset)
    return product_weights(terms, stack)


def normalise(weight: Tensor, mask: Tensor | None) -> Tensor:
    """Divide by the sum over frames (dim 1); pixels where a mask removes every frame get 0."""
    if mask is None:
        return weight / weight.sum(dim=1, keepdim=True)
    weight = weight * mask.to(weight.dtype)
    total = weight.sum(dim=1, keepdim=True)
    has_weight = total > 0
    return torch.where(has_weight, weight / torch.where(has_weight, total, 1.0), 0.0)


def log_normalise(log_weight: Tensor, mask: Tensor | None) -> Tensor:
    """:func:`normalise` of ``exp(log_weight)`` without overflow: the largest log weight over the
    frames (dim 1) is subtracted before ``exp`` (a softmax); pixels where a mask removes every
    frame get 0."""
    if mask is not None:
        mask = mask.to(log_weight.dtype)
        kept = mask > 0
        log_weight = torch.where(kept, log_weight + torch.where(kept, mask, 1.0).log(), -math.inf)
    peak = log_weight.detach().amax(dim=1, keepdim=True)  # a softmax does not depend on it: no gradient
    weight = (log_weight - torch.where(peak.isfinite(), peak, 0.0)).exp()
    total = weight.sum(dim=1, keepdim=True)
    has_weight = total > 0
    return torch.where(has_weight, weight / torch.where(has_weight, total, 1.0), 0.0)


def may_overflow(contrast_exponent: ParamLike, saturation_exponent: ParamLike, frames: int, dtype: torch.dtype) -> bool:
    """Whether ``C^c S^s E^e`` summed over ``frames`` may overflow ``dtype`` for samples within
    ``[-MAX_SAMPLE, MAX_SAMPLE]`` (``C <= 16``, ``S <= 4``, ``E <= 1``): a bound for the kernels,
    which have no log-domain fallback. Tensor exponents off the CPU are not read (that would wait
    for the device) and count as safe."""
    bound = math.log(max(frames, 1))
    for exponent, largest in ((contrast_exponent, 8.0 * _checks.MAX_SAMPLE), (saturation_exponent, 2.0 * _checks.MAX_SAMPLE)):
        if isinstance(exponent, Tensor):
            if exponent.device.type != "cpu" or torch.compiler.is_compiling():
                continue
            exponent = float(exponent.detach().max())
        bound += exponent * math.log(largest)
    return bound > math.log(torch.finfo(compute_dtype(dtype)).max) - 1.0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # 1e-12 and exp(-9.4 e) underflow in half precision: weights are computed in float32
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def cast_param(value: ParamLike, dtype: torch.dtype, device: torch.device) -> ParamLike:
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype)
    return float(value)


def fusion_weights(stack, mask, contrast, saturation, exposure, mu, sigma, preset: Preset, *, filled: bool = False) -> Tensor:
    """Normalised weights of a validated ``[B, N, C, H, W]`` stack -> ``[B, N, 1, H, W]`` by the
    reference code (plain tensor operations, differentiable to any order).

    The weights are measured on :func:`~efusion.reference.masks.fill_masked`'s stack (``filled``:
    the stack is filled already), so pixels under ``mask = 0`` do not reach them. Where the
    product ``C^c S^s E^e`` overflows (or its sum over frames does, or one of its factors exceeds
    the square root of the dtype's largest value, where its gradient could overflow), the pixel's
    weights come from the log domain (:func:`log_weights`, :func:`log_normalise`); elsewhere they
    are the product's, bit for bit.
    """
    compute = compute_dtype(stack.dtype)
    x = stack.to(compute)
    if mask is not None and not filled:
        x = fill_masked(x, mask, preset)
    c, s, e, m, w = (cast_param(p, compute, stack.device) for p in (contrast, saturation, exposure, mu, sigma))
    terms = measure_terms(x, c, s, e, m, w, preset)
    large: list[Tensor] = []
    raw = product_weights(terms, x, large=large)
    masked = raw if mask is None else raw * mask.to(raw.dtype)
    overflow = masked.detach().sum(dim=1, keepdim=True).isfinite().logical_not()
    if large:  # a factor beyond sqrt(max): finite here, but its gradient (huge times tiny) may not be
        overflow = overflow | large[0].any(dim=1, keepdim=True)
    # a CPU tensor answers without a device sync; elsewhere both paths are computed, no host read
    if stack.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(overflow.any()):
        weight = normalise(raw, mask)
    else:
        direct = normalise(product_weights(terms, x, overflow), mask)
        weight = torch.where(overflow, log_normalise(log_weights(terms, x), mask), direct)
    return weight.to(stack.dtype)
