"""Pyramid depth: ``levels`` (absolute, relative, fractional or a tensor) -> per-level collapse coefficients.

Mertens, Kautz & Van Reeth, "Exposure Fusion", Pacific Graphics 2007, Section 3.2; the
automatic depth is the preset's (:meth:`efusion.presets.Preset.max_levels`); negative depths
count from the maximum as enfuse's ``--levels`` does.

``levels`` counts pyramid levels in total, the last being the Gaussian residual (Mertens'
convention): 1 is a plain per-pixel weighted average, the automatic depth is the preset's
maximum, ``floor(log2(min(H, W)))`` for ``"mertens"``. A depth larger than an image allows is
clamped to that image's maximum. A negative depth counts from the maximum, as enfuse does
(-1 = the maximum, -2 = one level fewer), so a learned relative depth carries over to images of
other sizes as "so many levels short of full depth"; a positive one as an absolute count.

A non-integer depth ``L = k + t`` interpolates linearly between the results at depths ``k`` and
``k + 1``: ``(1 - t) R(k) + t R(k + 1)``. Both share their first ``k - 1`` band-pass levels, so
this costs one pyramid: level ``k - 1`` contributes ``t`` times its band plus ``1 - t`` times its
Gaussian residual, and level ``k`` ``t`` times its residual. An integer reproduces the discrete
result exactly. The gradient with respect to a tensor depth is ``R(k + 1) - R(k)``, one-sided at
integers (from above, and from below at the maximum), so a learnable depth sitting on an integer
still moves; outside ``[1, max]`` the value is clamped but the gradient of the nearest valid
segment is kept, so an optimiser can bring it back.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
from collections.abc import Iterator

import torch
from torch import Tensor

from .presets import Preset

__all__ = ["TRACED_LEVELS", "Coefficient", "depth_plan", "traced_depth_plan", "traced_levels"]

Coefficient = float | Tensor


def depth_plan(
    levels, height: int, width: int, preset: Preset, dtype: torch.dtype, device: torch.device, relative: bool | None,
    sparse: bool = False,
) -> tuple[list[Coefficient], list[Coefficient]]:
    """Per-level coefficients ``(band, residual)`` of the collapse (see the module docstring).

    The result is ``sum_l up^l(band_l * B_l + residual_l * G_l)`` where ``B_l`` is the blended
    band-pass level and ``G_l`` the blended Gaussian level. Python zeros mark skipped terms.

    A tensor depth gives tensor coefficients for every level, computed without reading the
    depth (no host-device sync, one graph for ``torch.compile``). With ``sparse`` and a CPU
    tensor, the depth is read and only the three coefficients that depend on it stay tensors
    (the others are constants 0 and 1, exactly their dense values, with zero gradient), and the
    levels past the depth are dropped: the same result and gradients for much less work.
    """
    if isinstance(height, torch.SymInt) or isinstance(width, torch.SymInt):
        return traced_depth_plan(levels, height, width, preset, dtype, device, relative)
    maximum = preset.max_levels(height, width)
    if levels is None:
        levels = maximum
    if isinstance(levels, numbers.Real):
        return _number_plan(float(levels), maximum)
    if maximum == 1:  # a single level: the depth has nothing to choose
        return [0.0], [1.0]
    return _tensor_plan(levels.to(device=device, dtype=dtype), maximum, relative, sparse)


def _number_plan(asked: float, maximum: int) -> tuple[list[Coefficient], list[Coefficient]]:
    """:func:`depth_plan` of a Python number: constant coefficients."""
    depth = asked if asked >= 1 else maximum + 1 + asked
    depth = min(max(depth, 1.0), float(maximum))
    k = math.floor(depth)
    t = depth - k
    top = k + 1 if t > 0 else k
    band: list[Coefficient] = [1.0 if l < k - 1 else 0.0 for l in range(top)]
    residual: list[Coefficient] = [0.0] * top
    if t > 0:
        band[k - 1], residual[k - 1], residual[k] = t, 1.0 - t, t
    else:
        residual[k - 1] = 1.0
    return band, residual


def _tensor_plan(value: Tensor, maximum: int, relative: bool | None,
                 sparse: bool) -> tuple[list[Coefficient], list[Coefficient]]:
    """:func:`depth_plan` of a 0-dim tensor (already in the computation's dtype and device)."""
    if relative is None:
        depth = torch.where(value < 0, value + (maximum + 1), value)
    else:
        depth = value + (maximum + 1) if relative else value
    k = depth.detach().floor().clamp(1, maximum - 1)
    t = depth - k
    t = t + (t.clamp(0.0, 1.0) - t).detach()  # clamped value, gradient of the nearest segment
    if sparse and depth.device.type == "cpu":
        below: list[Coefficient] = [1.0] * (int(k) - 1)
        return below + [t, 0.0], [0.0 for _ in below] + [1.0 - t, t]
    level = torch.arange(maximum, device=depth.device, dtype=depth.dtype)
    at_k_minus_1 = (level == k - 1).to(depth.dtype)
    band_t = (level < k - 1).to(depth.dtype) + t * at_k_minus_1
    residual_t = (1.0 - t) * at_k_minus_1 + t * (level == k).to(depth.dtype)
    band_list: list[Coefficient] = [band_t[l] for l in range(maximum - 1)] + [0.0]
    return band_list, [residual_t[l] for l in range(maximum)]


#: levels a graph traced with symbolic sizes holds by default (:func:`traced_depth_plan`): the
#: automatic depth of every image whose shorter side is below 2^17 = 131072 pixels (2^16 for ``"opencv"``)
TRACED_LEVELS = 16
_traced_levels: contextvars.ContextVar[int] = contextvars.ContextVar("efusion_traced_levels", default=TRACED_LEVELS)


@contextlib.contextmanager
def traced_levels(levels: int) -> Iterator[None]:
    """Unroll graphs traced inside the block to ``levels`` pyramid levels (default
    :data:`TRACED_LEVELS`): fewer levels trace faster, and cap the depth of larger images."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"traced levels must be an integer >= 1, got {levels!r}")
    token = _traced_levels.set(levels)
    try:
        yield
    finally:
        _traced_levels.reset(token)


def traced_depth_plan(
    levels, height, width, preset: Preset, dtype: torch.dtype, device: torch.device, relative: bool | None,
    unrolled: int | None = None,
) -> tuple[list[Coefficient], list[Coefficient]]:
    """:func:`depth_plan` computed inside a traced graph, for sizes that are symbolic.

    Used by ``torch.export`` (and so :mod:`efusion.export`) with dynamic height and width: the
    pyramid is unrolled to ``unrolled`` levels and every coefficient is a tensor computed from
    the input's shape (``unrolled``: default :data:`TRACED_LEVELS` or :func:`traced_levels`'s). The rule is the preset's own (:meth:`~efusion.presets.Preset.max_levels`),
    evaluated as ``maximum = 1 + sum_d [min(H, W) >= s_d]`` where ``s_d`` is the smallest side
    whose automatic depth is ``d`` (found once, at trace time, from ``max_levels`` itself, so
    OpenCV's float32 rounding is kept); it is capped at ``unrolled``. A number or tensor
    ``levels`` then gives the same coefficients as :func:`depth_plan` (an integer depth as a
    band-pass term with coefficient 1 and the Gaussian term with coefficient 0 at the level
    below the top, which sums to the same values).
    """
    unrolled = _traced_levels.get() if unrolled is None else unrolled
    side = torch.minimum(
        torch.scalar_tensor(height, dtype=torch.int64, device=device),
        torch.scalar_tensor(width, dtype=torch.int64, device=device),
    )
    thresholds = torch.tensor([_smallest_side(preset, d) for d in range(2, unrolled + 1)], device=device)
    maximum = (1 + (side >= thresholds).sum()).to(dtype)
    depth: Tensor
    if levels is None:
        depth = maximum
    elif isinstance(levels, numbers.Real):
        value = torch.tensor(float(levels), dtype=dtype, device=device)
        depth = value if float(levels) >= 1 else value + (maximum + 1)
    else:
        value = levels.to(device=device, dtype=dtype)
        if relative is None:
            depth = torch.where(value < 0, value + (maximum + 1), value)
        else:
            depth = value + (maximum + 1) if relative else value
    if not isinstance(levels, Tensor):
        depth = torch.minimum(depth.clamp(min=1.0), maximum)
    k = torch.minimum(depth.detach().floor().clamp(min=1.0), (maximum - 1).clamp(min=1.0))
    t = depth - k
    t = t + (t.clamp(0.0, 1.0) - t).detach()  # clamped value, gradient of the nearest segment
    level = torch.arange(unrolled, device=device, dtype=dtype)
    at_k_minus_1 = (level == k - 1).to(dtype)
    band_t = (level < k - 1).to(dtype) + t * at_k_minus_1
    residual_t = (1.0 - t) * at_k_minus_1 + t * (level == k).to(dtype)
    band: list[Coefficient] = [band_t[l] for l in range(unrolled - 1)] + [0.0]
    return band, [residual_t[l] for l in range(unrolled)]


def _smallest_side(preset: Preset, depth: int) -> int:
    """The smallest square side whose automatic depth is at least ``depth`` (depth grows with the side)."""
    low, high = 1, 2 ** (depth + 1)
    while low < high:
        middle = (low + high) // 2
        if preset.max_levels(middle, middle) >= depth:
            high = middle
        else:
            low = middle + 1
    return low
