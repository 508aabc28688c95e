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
from ._imf import BINS, chunks, imf_table, inverse_cdf, lookup
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
    """Weights of frames ``x [B, M, C, H, W]`` against the reference frames ``target [B, 1, C, H, W]``: ``[B, M, 1, H, W]``.

    The mappings and the robust scales are global (histograms of whole frames; scales at a fixed
    subsample of pixels); the per-pixel work then runs over bands of rows with a margin of
    ``_HALO`` rows, so that its temporaries stay small (whole-frame ones of a 3 MP frame were
    36 MB each, and the allocator handed each one back to the system and faulted it in again:
    8-10 s for 3 x 3 MP, 4.7 million page faults). Every pixel gets the values the whole-frame
    computation gives (the margin covers what the neighbourhood operations reach).
    """
    b, n, _, h, w = x.shape
    target = target.expand_as(x)
    rows = max(_HALO, _BAND_ELEMENTS // max(1, b * n * x.shape[2] * w))
    whole = rows >= h  # one band: the scales from its own disagreement, no sampled pass
    forward, backward = _Mapping(x, target, valid, whole), _Mapping(target, x, valid, whole)
    out = torch.empty(b, n, 1, h, w, dtype=x.dtype, device=x.device)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        lo, hi = max(0, r0 - _HALO), min(h, r1 + _HALO)
        band = slice(lo, hi)
        forward_score, gain = forward.disagreement(x[..., band, :], target[..., band, :], valid[..., band, :])
        backward_score, _ = backward.disagreement(target[..., band, :], x[..., band, :], valid[..., band, :])
        # compared in the exposure that resolves the scene better: the frame mapped to the reference's
        # where the mapping expands (gain >= 1), the reference mapped to the frame's where it compresses
        # (a dark or nearly clipped reference spans too few levels there to show what the frame shows)
        score = torch.where(gain < 1, backward_score, forward_score).amax(dim=2)  # [B, M, rows, W]
        out[..., r0:r1, :] = _clean(score)[..., r0 - lo : r1 - lo, :]
    return out


#: rows of margin around a band: what the neighbourhood operations after the reference's 3 x 3
#: interval reach (1), the 3 x 3 mean (1), the opening (1 + 1), closing (2 + 2) and dilation (2)
_HALO = 10
#: elements of a band's [B, M, C, rows, W] temporaries, about (4 MiB in float32)
_BAND_ELEMENTS = 1 << 20


def _clean(score: Tensor) -> Tensor:
    """Disagreement ``[B, M, H, W]`` (noise units) -> weights ``[B, M, 1, H, W]``: a 3 x 3 mean, a smooth
    threshold and morphology."""
    b, n, h, w = score.shape
    # a 3 x 3 mean keeps single noisy pixels from crossing the threshold
    score = F.avg_pool2d(score.reshape(b * n, 1, h, w), 3, stride=1, padding=1, count_include_pad=False)
    t0, t1 = _THRESHOLD
    s = ((score - t0) / (t1 - t0)).clamp(0, 1)
    ghost = s * s * (3 - 2 * s)  # smoothstep
    ghost = _dilate(_erode(ghost, 1), 1)   # opening: drop specks
    ghost = _erode(_dilate(ghost, 2), 2)   # closing: fill holes inside objects
    ghost = _dilate(ghost, 2)              # cover the blurred outline
    return (1 - ghost).reshape(b, n, 1, h, w)


class _Mapping:
    """``x`` mapped to ``target``'s exposure (``[B, N, C, H, W]`` each): the intensity mapping, its
    spread and the robust scales of the disagreement, from the whole frames; :meth:`disagreement`
    then compares any band of rows (``whole``: the first band compared is the whole frame, and the
    scales are taken from its disagreement rather than from a sampled pass of their own)."""

    def __init__(self, x: Tensor, target: Tensor, valid: Tensor, whole: bool = False) -> None:
        b, n, c, h, w = x.shape
        lo, hi = _CLIP
        frame_ok = (x > lo) & (x < hi)
        target_ok = (target > lo) & (target < hi)
        both = frame_ok & target_ok & valid
        m = b * n * c
        xf, tf = x.reshape(m, -1), target.reshape(m, -1)
        prior = imf_table(xf, tf, valid.expand(b, n, c, h, w).reshape(m, -1))
        quartiles = _conditional_quantiles(xf, tf, (frame_ok & valid).reshape(m, -1), prior, (0.25, 0.5, 0.75))
        self.table = quartiles[..., 1].cummax(dim=1).values  # a camera response is monotone, so is the IMF
        # how far one global mapping is from the reference at each level of the frame: the narrower
        # half of the conditional interquartile range (an object inside the bin widens one side)
        below, above = quartiles[..., 1] - quartiles[..., 0], quartiles[..., 2] - quartiles[..., 1]
        self.spread = torch.minimum(below, above) / 0.6745
        self.at_hi = lookup(self.table, torch.full_like(xf[:, :1], hi)).view(b, n, c, 1, 1)
        self.at_lo = lookup(self.table, torch.full_like(xf[:, :1], lo)).view(b, n, c, 1, 1)
        # robust scale of the disagreement over well-exposed pixels (moving objects are a minority),
        # and apart over those where another channel clips: there the camera's colour processing no
        # longer maps each channel on its own, so one channel's mapping is looser
        some_clipped = (~(frame_ok & target_ok)).any(dim=2, keepdim=True)
        partly = both & some_clipped
        self.enough = partly.flatten(3).sum(3).view(b, n, c, 1, 1) >= _MIN_SHARE * h * w
        # the scales' pixels: every step-th of each plane (flat index), about _SCALE_SAMPLES of them
        self.index = torch.arange(0, h * w, -(-(h * w) // _SCALE_SAMPLES), device=x.device)
        self.scale = self.partly_scale = x.new_empty(0)
        # whole: the masks the scales need wait for the whole frame's disagreement
        self.pending: tuple[Tensor, Tensor] | None = (both, partly) if whole else None
        if not whole:
            self._sampled_scales(x, target, both, partly)

    def at(self, t: Tensor) -> Tensor:
        """``[B, N, C', H, W]`` -> ``[B, N, C', 1, S]``: the values at the scales' sampled pixels."""
        return t.flatten(3)[..., self.index].unsqueeze(3)

    def _sampled_scales(self, x: Tensor, target: Tensor, both: Tensor, partly: Tensor) -> None:
        """The robust scales from the disagreement at the sampled pixels only."""
        h, w = x.shape[-2:]
        lo, hi = _CLIP
        at = self.at
        ys, xs = torch.div(self.index, w, rounding_mode="floor"), self.index % w

        # the reference's 3 x 3 interval at the sampled pixels: its neighbours' flat indices, clamped
        # to the frame (a repeated in-frame neighbour changes neither the minimum nor the maximum)
        neighbours = [(ys + dy).clamp(0, h - 1) * w + (xs + dx).clamp(0, w - 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        around = torch.stack([target.flatten(3)[..., k] for k in neighbours], dim=-1)  # [B, N, C, S, 9]
        target_min = torch.where(around <= lo, -1.0, around).amin(-1).unsqueeze(3)
        target_max = torch.where(around >= hi, 2.0, around).amax(-1).unsqueeze(3)
        self._scales(self._difference(at(x), target_min, target_max), at(both), at(partly))

    def _scales(self, difference: Tensor, both: Tensor, partly: Tensor) -> None:
        """The robust scales (well-exposed pixels; those where another channel clips) from the sampled pixels' values."""
        self.scale = _robust_scale(difference, both).clamp_min(1.0 / 255)
        self.partly_scale = torch.maximum(self.scale, _robust_scale(difference, partly))

    def _difference(self, x: Tensor, target_min: Tensor, target_max: Tensor) -> Tensor:
        """The gap between the interval of scene values ``x`` allows, mapped, and the reference's."""
        b, n, c = x.shape[:3]
        lo, hi = _CLIP
        mapped = lookup(self.table, x.reshape(b * n * c, -1)).view_as(x)
        frame_high, frame_low = x >= hi, x <= lo
        below_all, above_all = torch.full_like(x, -1.0), torch.full_like(x, 2.0)
        frame_min = torch.where(frame_low, below_all, torch.where(frame_high, self.at_hi.expand_as(x), mapped))
        frame_max = torch.where(frame_high, above_all, torch.where(frame_low, self.at_lo.expand_as(x), mapped))
        return torch.maximum(frame_min - target_max, target_min - frame_max).clamp_min(0)

    def disagreement(self, x: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Disagreement in noise units (0 where not comparable) and the mapping's gain d target / d x
        of a band of rows (``[B, N, C, rows, W]`` each, as the frames the mapping was made from)."""
        b, n, c, h, w = x.shape
        m = b * n * c
        lo, hi = _CLIP
        frame_ok = (x > lo) & (x < hi)
        target_ok = (target > lo) & (target < hi)
        xf = x.reshape(m, -1)
        slope = (lookup(self.table, (xf + 0.5 / BINS).clamp(0, 1)) - lookup(self.table, (xf - 0.5 / BINS).clamp(0, 1))).view_as(x)
        spread = lookup(self.spread, xf).view_as(x)
        # each value as the interval of scene values it allows (a clipped value only bounds the scene),
        # the reference's widened to its 3 x 3 neighbourhood (edges a pixel apart, mixed differently
        # by clipping and resampling, are no motion); the disagreement is the gap between the two
        below_all, above_all = torch.full_like(x, -1.0), torch.full_like(x, 2.0)
        target_min = _erode(torch.where(target <= lo, below_all, target).reshape(m, 1, h, w), 1).view_as(x)
        target_max = _dilate(torch.where(target >= hi, above_all, target).reshape(m, 1, h, w), 1).view_as(x)
        difference = self._difference(x, target_min, target_max)
        if self.pending is not None:  # the whole frame: the scales from its own disagreement
            both, partly = self.pending
            self._scales(self.at(difference), self.at(both), self.at(partly))
            self.pending = None
        comparable = (frame_ok | target_ok) & valid
        some_clipped = (~(frame_ok & target_ok)).any(dim=2, keepdim=True)
        scale = torch.where(some_clipped & self.enough, self.partly_scale, self.scale)
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
    joint = torch.zeros(m, BINS * BINS, dtype=frame.dtype, device=frame.device)
    for part in chunks(frame.shape[1], m):  # small temporaries (counts: the same sums in any order)
        row = (frame[:, part].clamp(0, 1) * BINS).long().clamp_(0, BINS - 1)
        col = (target[:, part].clamp(0, 1) * BINS).long().clamp_(0, BINS - 1)
        joint.scatter_add_(1, row * BINS + col, weight[:, part].to(frame.dtype))
    prior_col = (prior.clamp(0, 1) * BINS).long().clamp_(0, BINS - 1)
    cells = torch.arange(BINS, device=frame.device).view(1, BINS) * BINS + prior_col
    joint.scatter_add_(1, cells, torch.full_like(prior, _PRIOR))
    joint = joint.view(m, BINS, BINS)
    cumulative = joint.cumsum(-1) / joint.sum(-1, keepdim=True)
    q = torch.tensor(quantiles, dtype=frame.dtype, device=frame.device).expand(m, BINS, len(quantiles))
    return inverse_cdf(cumulative, q)


def _robust_scale(difference: Tensor, where: Tensor) -> Tensor:
    """1.4826 x the median of ``|difference|`` over ``where`` (``[B, N, C, 1, S]``: the sampled pixels), per
    frame and channel: ``[B, N, C, 1, 1]`` (0 where empty)."""
    masked = torch.where(where, difference.abs(), torch.nan).flatten(3)
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
