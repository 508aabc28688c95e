"""Deghosting: per-pixel weights that remove what moved between the frames of a bracket.

Each frame is mapped to the reference frame's exposure by an intensity mapping function (IMF)
estimated per channel from the joint histogram of the two frames over pixels both expose well:
the conditional mean of the reference given the frame's value (the comparametric view of Mann
1996), regularised towards the IMF of histogram specification (Grossberg & Nayar 2003) where the
joint histogram is thin, and made monotone. Where the mapped frame and the reference disagree
by more than the noise expected there (a robust per-frame scale, plus the frame's quantisation
step magnified by the IMF's slope), something moved: the normalised disagreement goes through a
smooth threshold, and a morphological opening (min then max pooling, which removes isolated
detections) and closing (max then min pooling, which fills holes in an object) clean it up; a
final dilation covers the object's blurred outline. This follows the consistency-check family of
deghosting methods reviewed by Tursun et al. (2015); the reference frame's weights are all 1.

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
from ._imf import BINS, imf_table, lookup
from .align import reference_index

__all__ = ["deghost"]

_CLIP = (0.02, 0.98)   # per channel: values outside carry only a bound on the scene
_THRESHOLD = (3.0, 6.0) # disagreement in noise units: below the first agrees, above the second moved
_PRIOR = 16.0          # pixels' worth of weight of the histogram-specification IMF in each bin


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
    b, n, c, h, w = stack5.shape
    dtype = torch.float64 if stack5.dtype == torch.float64 else torch.float32
    x = stack5.to(dtype)
    rows = torch.arange(b, device=x.device)
    target = x[rows, ref].unsqueeze(1).expand_as(x)
    valid = torch.ones(b, n, 1, h, w, dtype=torch.bool, device=x.device) if mask5 is None else (mask5 >= 0.5).expand(b, n, 1, h, w)
    valid = valid & valid[rows, ref].unsqueeze(1)
    lo, hi = _CLIP
    frame_ok = (x > lo) & (x < hi)
    target_ok = (target > lo) & (target < hi)
    both = (frame_ok & target_ok & valid).to(dtype)

    m = b * n * c
    xf, tf = x.reshape(m, -1), target.reshape(m, -1)
    prior = imf_table(xf, tf, valid.expand(b, n, c, h, w).reshape(m, -1))
    # conditional mean of the reference per bin of the frame, over pixels both expose well
    index = (xf.clamp(0, 1) * BINS).long().clamp_(0, BINS - 1)
    sums = torch.zeros(m, BINS, dtype=dtype, device=x.device).scatter_add_(1, index, tf * both.reshape(m, -1))
    counts = torch.zeros(m, BINS, dtype=dtype, device=x.device).scatter_add_(1, index, both.reshape(m, -1))
    table = (sums + _PRIOR * prior) / (counts + _PRIOR)
    table = table.cummax(dim=1).values  # a camera response is monotone, so is the IMF
    mapped = lookup(table, xf).view_as(x)
    slope = (lookup(table, (xf + 0.5 / BINS).clamp(0, 1)) - lookup(table, (xf - 0.5 / BINS).clamp(0, 1))).view_as(x)

    difference = mapped - target
    # one-sided where exactly one of the two is clipped: a clipped value bounds the scene
    frame_high, frame_low = x >= hi, x <= lo
    target_high, target_low = target >= hi, target <= lo
    at_hi = lookup(table, torch.full_like(xf[:, :1], hi)).view(b, n, c, 1, 1)
    at_lo = lookup(table, torch.full_like(xf[:, :1], lo)).view(b, n, c, 1, 1)
    difference = torch.where(frame_high & target_ok, (at_hi - target).clamp_min(0), difference)
    difference = torch.where(frame_low & target_ok, (target - at_lo).clamp_min(0), difference)
    difference = torch.where(target_high & frame_ok, (hi - mapped).clamp_min(0), difference)
    difference = torch.where(target_low & frame_ok, (mapped - lo).clamp_min(0), difference)
    comparable = (frame_ok | target_ok) & valid
    # robust scale of the disagreement over well-exposed pixels (moving objects are a minority)
    masked = torch.where(both > 0, difference.abs(), torch.nan).flatten(3)
    scale = 1.4826 * masked.nanmedian(dim=3).values.nan_to_num(0.0).view(b, n, c, 1, 1)
    noise = torch.sqrt(scale.clamp_min(1.0 / 255) ** 2 + (slope.abs() * 0.5) ** 2)
    score = torch.where(comparable, difference.abs() / noise, torch.zeros_like(difference)).amax(dim=2)  # [B, N, H, W]
    # a 3 x 3 mean keeps single noisy pixels from crossing the threshold
    score = F.avg_pool2d(score.reshape(b * n, 1, h, w), 3, stride=1, padding=1, count_include_pad=False)
    t0, t1 = _THRESHOLD
    s = ((score - t0) / (t1 - t0)).clamp(0, 1)
    ghost = s * s * (3 - 2 * s)  # smoothstep
    ghost = _dilate(_erode(ghost, 1), 1)   # opening: drop specks
    ghost = _erode(_dilate(ghost, 2), 2)   # closing: fill holes inside objects
    ghost = _dilate(ghost, 2)              # cover the blurred outline
    weights = (1 - ghost).reshape(b, n, 1, h, w)
    is_ref = torch.arange(n, device=x.device).view(1, n) == ref.view(b, 1)
    weights = torch.where(is_ref.view(b, n, 1, 1, 1), torch.ones_like(weights), weights)
    return weights.to(stack5.dtype)


def _dilate(x: Tensor, radius: int) -> Tensor:
    return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius)


def _erode(x: Tensor, radius: int) -> Tensor:
    return -F.max_pool2d(-x, 2 * radius + 1, stride=1, padding=radius)
