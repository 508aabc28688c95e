"""Small helpers that several efusion modules share (public names inside a private module).

A parameter may be a Python number or a tensor. A number can be tested for 0 and 1 on the host:
an exponent of 0 switches its measure off and a factor of 1 is skipped, which both the
reference code and the kernels rely on. A tensor never counts as 0 or 1: its value may change
and it needs a gradient.

The other helpers are small facts two modules need (a Gaussian window, a masked mean, a number
check), written here once.
"""
from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import Tensor

ParamLike = float | Tensor
_T = TypeVar("_T")
# the five weight parameters in their fixed order: contrast, saturation, exposure, mu, sigma
WeightParams = tuple[ParamLike, ParamLike, ParamLike, ParamLike, ParamLike]


def is_one(value: ParamLike) -> bool:
    """Whether ``value`` is the number 1 (a tensor never is: its value may change, and it needs a gradient)."""
    return not isinstance(value, Tensor) and value == 1


def is_zero(value: ParamLike) -> bool:
    """Whether ``value`` is the number 0 (an exponent that switches its measure off)."""
    return not isinstance(value, Tensor) and value == 0


def scale_(x: Tensor, factor: ParamLike) -> Tensor:
    """``x *= factor`` in place, skipped when ``factor`` is the number 1."""
    return x if is_one(factor) else x.mul_(factor)


def scaled(coefficient: ParamLike, x: Tensor) -> Tensor:
    """``coefficient * x`` out of place, ``x`` itself when the coefficient is the number 1."""
    return x if is_one(coefficient) else coefficient * x


def f32(value: float) -> float:
    """``value`` rounded to single precision (for emulating float32 constants of C code)."""
    return float(torch.tensor(value, dtype=torch.float32))


def number(value: ParamLike) -> ParamLike:
    """A 0-dim CPU tensor as a number (other values as they are)."""
    if isinstance(value, Tensor) and value.dim() == 0 and value.device.type == "cpu":
        return value.item()
    return value


def needs_grad(*values) -> bool:
    """Whether autograd records a call with these inputs (non-tensors are ignored)."""
    return torch.is_grad_enabled() and any(isinstance(v, Tensor) and v.requires_grad for v in values)


def is_positive_number(value) -> bool:
    """Whether ``value`` is a finite real Python number > 0 (``bool`` and tensors are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def gaussian_taps(size: int, sigma: float, *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """1-D factor of MATLAB's ``fspecial('gaussian', size, sigma)``, normalised to sum 1: ``[size]``.

    Computed in ``dtype`` on ``device`` (``.tolist()`` of the float64 default gives host
    numbers). ``fspecial`` also zeroes 2-D entries below eps times the peak; for the 11 x 11,
    sigma 1.5 window of SSIM and MEF-SSIM the smallest entry is exp(-11.1) of the peak, so that
    never applies.
    """
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    taps = torch.exp(-coords.square() / (2.0 * sigma * sigma))
    return taps / taps.sum()


def masked_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``[B, C, H, W]`` over C, H, W per image (``[B]``), counting only pixels where the
    validity map ``valid`` (``[B, 1, H, W]`` or ``values``' shape; None: all) is non-zero."""
    if valid is None:
        return values.mean(dim=(1, 2, 3))
    valid = valid.to(values.dtype).expand_as(values)
    return (values * valid).sum(dim=(1, 2, 3)) / valid.sum(dim=(1, 2, 3)).clamp(min=1.0)


def present(value: _T | None) -> _T:
    """``value``, which the caller's logic guarantees is not ``None`` (a real check, unlike ``assert``:
    it also holds under ``python -O``, and it tells readers and mypy the same)."""
    if value is None:
        raise RuntimeError("efusion internal error: a value that must exist here is missing")
    return value
