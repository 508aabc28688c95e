"""Deghosting: per-pixel weights that remove what moved between the frames of a bracket.

Each frame is compared with the reference frame once their exposures are matched by an intensity
mapping function (IMF), estimated per channel from the joint histogram of the two frames over
every pixel the mapped frame exposes well: the conditional median of the other frame's value
given this one's (the comparametric view of Mann 2000; a median, so that a moving object does
not drag the mapping where it covers less than half of a level), with the IMF of histogram
specification (Grossberg & Nayar 2003) as a prior where the joint histogram is thin, made
monotone. The comparison runs in the exposure that resolves the scene better at each pixel: the
frame mapped to the reference where the IMF expands, the reference mapped to the frame where it
compresses (where the reference is dark or nearly clipped, a few of its levels cover what the
frame shows with many). Each value is an interval of the scene values it allows (a clipped one
only bounds the scene), the reference's widened to its 3 x 3 neighbourhood so that edges mixed
differently by clipping and resampling are no motion, and the disagreement is the gap between the
two intervals, in units of the noise expected there: a robust per-frame scale (a looser one where
another channel clips), the spread of the reference at that level of the frame (how far one
global mapping is from the data), and the quantisation step magnified by the IMF's slope.
Where it is large, something moved: the normalised disagreement goes through a smooth threshold,
and a morphological opening (min then max pooling, which removes isolated detections) and closing
(max then min pooling, which fills holes in an object) clean it up; a final dilation covers the
object's blurred outline. This follows the consistency-check family of deghosting methods reviewed
by Tursun et al. (2015); the reference frame's weights are all 1.

References: M. D. Grossberg and S. K. Nayar, "Determining the camera response from images: what
is knowable?", IEEE TPAMI 25(11), 2003, doi:10.1109/TPAMI.2003.1240119; S. Mann, "Comparametric
equations with practical applications in quantigraphic image processing", IEEE TIP 9(8), 2000,
doi:10.1109/83.855431; O. T. Tursun, A. O. Akyuz, A. Erdem and E. Erdem, "The state of the art in
HDR deghosting: a survey and evaluation", Computer Graphics Forum 34(2), 2015,
doi:10.1111/cgf.12593.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks
from ._imf import BINS, imf_table, inverse_cdf, lookup
from .align import reference_index

__all__ = ["deghost"]

_CLIP = (0.02, 0.98)   # per channel: values outside carry only a bound on the scene
_THRESHOLD = (3.25, 6.5)  # disagreement in noise units: below the first agrees, above the second moved (chosen on ../shared's brackets)
_PRIOR = 16.0          # pixels' worth of weight of the histogram-specification IMF in each bin
_MIN_SHARE = 0.01      # a class of pixels needs this share of the frame for a scale of its own
_SCALE_SAMPLES = 1 << 16  # pixels a robust scale is taken over, at most


def deghost(stack: Tensor, *, reference: int | None = None, mask: Tensor | None = None) -> Tensor:
    """Soft weights, 1 where a frame agrees with the reference frame once exposures are matched, 0 where something moved.

    Pass them to fusion as a mask (with an alignment's mask): ``exposure_fusion(a.frames,
    mask=a.mask * deghost(a.frames))``. The result is computed without gradients (it is a
    detection, not a differentiable weight).

    Args:
        stack: ``[N, C, H, W]`` or ``[B, N, C, H, W]`` frames in [0, 1], aligned (see
            :func:`efusion.align`).
        reference: the frame whose content is kept (negative counts from the end); ``None``: the
            frame of median mean brightness, as :func:`efusion.align` picks it.
        mask: optional validity, broadcastable to ``[..., N, 1, H, W]`` (e.g. ``align``'s mask):
            pixels with mask < 0.5 are left out of the estimation (their weight is 1 here; the
            caller's mask removes them).

    Returns:
        ``[..., N, 1, H, W]`` weights in [0, 1], all 1 for the reference frame.

    Shape:
        stack ``[B, N, C, H, W]`` -> ``[B, N, 1, H, W]`` (no ``B`` for an unbatched stack).

    Example:
        >>> import torch, efusion
        >>> stack = torch.rand(3, 3, 32, 48)
        >>> efusion.deghost(stack, reference=1).shape
        torch.Size([3, 1, 32, 48])

    IMF by joint histogram (Mann 2000) and histogram specification (Grossberg & Nayar 2003),
    consistency check and morphology as surveyed by Tursun et al. (2015); see the module docstring.
    """
    stack5, unbatched = _checks.as_stack(stack)
    ref = reference_index(stack5, reference)
    mask5 = _checks.as_mask(mask, stack5, unbatched)
    with torch.no_grad():
        weights = _deghost5(stack5.detach(), ref, None if mask5 is None else mask5.detach())
    return weights[0] if unbatched else weights


def _deghost5(stack5: Tensor, ref: Tensor, mask5: Tensor | None) -> Tensor:
    b, n, _, h, w = stack5.shape
    dtype = torch.float64 if stack5.dtype == torch.float64 else torch.float32
    x = stack5.to(dtype)
    rows = torch.arange(b, device=x.device)
    target = x[rows, ref].unsqueeze(1)  # [B, 1, C, H, W]
    valid = torch.ones(b, n, 1, h, w, dtype=torch.bool, device=x.device) if mask5 is None else (mask5 >= 0.5).expand(b, n, 1, h, w)
    valid = valid & valid[rows, ref].unsqueeze(1)
    is_ref = torch.arange(n, device=x.device).view(1, n) == ref.view(b, 1)
    weights = torch.ones(b, n, 1, h, w, dtype=dtype, device=x.device)
    # frame by frame (every step is per frame; a third of the temporaries for 3 frames, and the
    # reference frame, whose weights are 1, skipped where every item has it at the same place)
    for k in range(n):
        if bool(is_ref[:, k].all()):
            continue
        weights[:, k : k + 1] = _frame_weights(x[:, k : k + 1], target, valid[:, k : k + 1])
    weights = torch.where(is_ref.view(b, n, 1, 1, 1), torch.ones_like(weights), weights)
    return weights.to(stack5.dtype)


def _frame_weights(x: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Weights of frames ``x [B, M, C, H, W]`` against the reference frames ``target [B, 1, C, H, W]``: ``[B, M, 1, H, W]``."""
    b, n, _, h, w = x.shape
    target = target.expand_as(x)
    # compared in the exposure that resolves the scene better: the frame mapped to the reference's
    # where the mapping expands (gain >= 1), the reference mapped to the frame's where it compresses
    # (a dark or nearly clipped reference spans too few levels there to show what the frame shows)
    forward, gain = _disagreement(x, target, valid)
    backward, _ = _disagreement(target, x, valid)
    score = torch.where(gain < 1, backward, forward).amax(dim=2)  # [B, M, H, W]
    # a 3 x 3 mean keeps single noisy pixels from crossing the threshold
    score = F.avg_pool2d(score.reshape(b * n, 1, h, w), 3, stride=1, padding=1, count_include_pad=False)
    t0, t1 = _THRESHOLD
    s = ((score - t0) / (t1 - t0)).clamp(0, 1)
    ghost = s * s * (3 - 2 * s)  # smoothstep
    ghost = _dilate(_erode(ghost, 1), 1)   # opening: drop specks
    ghost = _erode(_dilate(ghost, 2), 2)   # closing: fill holes inside objects
    ghost = _dilate(ghost, 2)              # cover the blurred outline
    return (1 - ghost).reshape(b, n, 1, h, w)


def _disagreement(x: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` mapped to ``target``'s exposure against ``target`` (``[B, N, C, H, W]`` each).

    Returns the disagreement in noise units (0 where not comparable) and the IMF's gain
    d target / d x at each pixel, both ``[B, N, C, H, W]``.
    """
    b, n, c, h, w = x.shape
    lo, hi = _CLIP
    frame_ok = (x > lo) & (x < hi)
    target_ok = (target > lo) & (target < hi)
    both = frame_ok & target_ok & valid

    m = b * n * c
    xf, tf = x.reshape(m, -1), target.reshape(m, -1)
    prior = imf_table(xf, tf, valid.expand(b, n, c, h, w).reshape(m, -1))
    quartiles = _conditional_quantiles(xf, tf, (frame_ok & valid).reshape(m, -1), prior, (0.25, 0.5, 0.75))
    table = quartiles[..., 1].cummax(dim=1).values  # a camera response is monotone, so is the IMF
    mapped = lookup(table, xf).view_as(x)
    slope = (lookup(table, (xf + 0.5 / BINS).clamp(0, 1)) - lookup(table, (xf - 0.5 / BINS).clamp(0, 1))).view_as(x)
    # how far one global mapping is from the reference at each level of the frame: the narrower
    # half of the conditional interquartile range (an object inside the bin widens one side)
    below, above = quartiles[..., 1] - quartiles[..., 0], quartiles[..., 2] - quartiles[..., 1]
    spread = lookup(torch.minimum(below, above) / 0.6745, xf).view_as(x)

    # each value as the interval of scene values it allows (a clipped value only bounds the scene),
    # the reference's widened to its 3 x 3 neighbourhood (edges a pixel apart, mixed differently
    # by clipping and resampling, are no motion); the disagreement is the gap between the two
    frame_high, frame_low = x >= hi, x <= lo
    at_hi = lookup(table, torch.full_like(xf[:, :1], hi)).view(b, n, c, 1, 1).expand_as(x)
    at_lo = lookup(table, torch.full_like(xf[:, :1], lo)).view(b, n, c, 1, 1).expand_as(x)
    below_all, above_all = torch.full_like(x, -1.0), torch.full_like(x, 2.0)
    frame_min = torch.where(frame_low, below_all, torch.where(frame_high, at_hi, mapped))
    frame_max = torch.where(frame_high, above_all, torch.where(frame_low, at_lo, mapped))
    target_min = _erode(torch.where(target <= lo, below_all, target).reshape(m, 1, h, w), 1).view_as(x)
    target_max = _dilate(torch.where(target >= hi, above_all, target).reshape(m, 1, h, w), 1).view_as(x)
    difference = torch.maximum(frame_min - target_max, target_min - frame_max).clamp_min(0)
    comparable = (frame_ok | target_ok) & valid

    # robust scale of the disagreement over well-exposed pixels (moving objects are a minority),
    # and apart over those where another channel clips: there the camera's colour processing no
    # longer maps each channel on its own, so one channel's mapping is looser
    scale = _robust_scale(difference, both).clamp_min(1.0 / 255)
    some_clipped = (~(frame_ok & target_ok)).any(dim=2, keepdim=True)
    partly = both & some_clipped
    enough = partly.flatten(3).sum(3).view(b, n, c, 1, 1) >= _MIN_SHARE * h * w
    scale = torch.where(some_clipped & enough, torch.maximum(scale, _robust_scale(difference, partly)), scale)
    noise = torch.sqrt(torch.maximum(scale, spread) ** 2 + (slope.abs() * 0.5) ** 2)
    return torch.where(comparable, difference / noise, torch.zeros_like(difference)), slope * BINS


def _conditional_quantiles(frame: Tensor, target: Tensor, weight: Tensor, prior: Tensor, quantiles: tuple[float, ...]) -> Tensor:
    """Quantiles of ``target`` per bin of ``frame`` (``[M, P]`` each), with ``_PRIOR`` pixels at ``prior [M, K]``: ``[M, K, Q]``.

    Every pixel the frame exposes well counts, whatever the target's value (a target clipped dark
    still says the mapping is dark there: leaving such pixels out would let a moving object
    outvote the few that remain); the median keeps an object that covers less than half of a bin
    from moving its value.
    """
    m = frame.shape[0]
    row = (frame.clamp(0, 1) * BINS).long().clamp_(0, BINS - 1)
    col = (target.clamp(0, 1) * BINS).long().clamp_(0, BINS - 1)
    joint = torch.zeros(m, BINS * BINS, dtype=frame.dtype, device=frame.device)
    joint.scatter_add_(1, row * BINS + col, weight.to(frame.dtype))
    prior_col = (prior.clamp(0, 1) * BINS).long().clamp_(0, BINS - 1)
    cells = torch.arange(BINS, device=frame.device).view(1, BINS) * BINS + prior_col
    joint.scatter_add_(1, cells, torch.full_like(prior, _PRIOR))
    joint = joint.view(m, BINS, BINS)
    cumulative = joint.cumsum(-1) / joint.sum(-1, keepdim=True)
    q = torch.tensor(quantiles, dtype=frame.dtype, device=frame.device).expand(m, BINS, len(quantiles))
    return inverse_cdf(cumulative, q)


def _robust_scale(difference: Tensor, where: Tensor) -> Tensor:
    """1.4826 x the median of ``|difference|`` over ``where``, per frame and channel: ``[B, N, C, 1, 1]`` (0 where empty).

    Over at most about ``_SCALE_SAMPLES`` pixels, evenly spaced (a median needs no more).
    """
    masked = torch.where(where, difference.abs(), torch.nan).flatten(3)
    masked = masked[..., :: -(-masked.shape[-1] // _SCALE_SAMPLES)]
    return 1.4826 * masked.nanmedian(dim=3).values.nan_to_num(0.0)[..., None, None]


def _dilate(x: Tensor, radius: int) -> Tensor:
    """Maximum over the ``(2 radius + 1)``-square around each pixel of ``x [M, 1, H, W]`` (what
    ``max_pool2d`` with stride 1 gives, without its indices), one direction at a time."""
    for dim in (-1, -2):
        size = x.shape[dim]
        padded = F.pad(x, (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius), value=-torch.inf)
        out = padded.narrow(dim, 0, size)
        for shift in range(1, 2 * radius + 1):
            out = torch.maximum(out, padded.narrow(dim, shift, size))
        x = out
    return x


def _erode(x: Tensor, radius: int) -> Tensor:
    return -_dilate(-x, radius)
