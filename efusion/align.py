"""Exposure-invariant alignment of a bracket: a global transform per frame, then a differentiable warp.

Two stages, both batched over ``[B, N]`` with no per-pixel Python:

1. **Coarse translation** by median threshold bitmaps (Ward 2003) on a small level of efusion's
   Gaussian pyramid: each frame is thresholded at its own median, pixels near the median are
   excluded, and the mismatch count is evaluated for *every* shift up to ~15 % of the frame at
   once as cross-correlations by FFT (Ward searches a pyramid of +-1 px steps; the exhaustive
   search at one coarse level captures hand-held motion of a tenth of the frame).
2. **Refinement** of the full model (translation, euclidean, similarity, homography) by
   inverse-compositional Gauss-Newton (Baker & Matthews 2004) coarse to fine, on frames mapped to
   the reference's exposure by the intensity mapping function of histogram specification
   (Grossberg & Nayar 2003), with clipped pixels excluded and a Huber weight on the residuals;
   a homography's parameters beyond a similarity are fitted on the finest level only.

Speed: the pyramid is built on gray frames area-averaged to at most ``_WORK_SIDE`` pixels a side;
on each level Gauss-Newton uses at most ``_SAMPLES`` reference pixels, the strongest gradients of
each cell of a 16 x 16 grid (the pixels that carry the motion, spread over the frame), so an
iteration costs the same at any size; frames larger than the work size get a last pass on
full-resolution pixels read from the frames at those points only (the work level's error would
otherwise grow by the averaging factor). Only the non-reference frames are refined; each burst
stops when its steps fall below 1e-3 px on the last level (1e-2 px on the levels before it).

The warp (``grid_sample``, bilinear, one frame and one band of rows at a time) is differentiable
with respect to the frames and the homographies; the estimation runs without gradients in float32
(float64 for float64 stacks).

References: G. Ward, "Fast, robust image registration for compositing high dynamic range
photographs from hand-held exposures", J. Graphics Tools 8(2), 2003,
doi:10.1080/10867651.2003.10487583; S. Baker and I. Matthews, "Lucas-Kanade 20 years on: a
unifying framework", IJCV 56(3), 2004, doi:10.1023/B:VISI.0000011205.11775.fd; M. D. Grossberg
and S. K. Nayar, "Determining the camera response from images: what is knowable?", IEEE TPAMI
25(11), 2003, doi:10.1109/TPAMI.2003.1240119.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks, _imf
from .color import OPENCV_GRAY
from .reference.pyramid import gaussian_pyramid

__all__ = ["MODELS", "Alignment", "align", "warp"]

#: the motion models, each a subgroup of the next but one (euclidean < similarity < homography)
MODELS = ("translation", "euclidean", "similarity", "homography")
_PARAMS = {"translation": 2, "euclidean": 3, "similarity": 4, "homography": 8}

_COARSE_SIDE = 128   # the bitmap search runs at the first pyramid level this small (longer side)
_WORK_SIDE = 1024    # estimation runs on gray frames area-averaged by an integer factor to this (longer side)
_SAMPLES = 32768     # Gauss-Newton uses at most this many reference pixels per level
_BAND = 1 << 20      # the warp computes its sampling grid for bands of rows of about this many pixels
_SEARCH = 0.15       # bitmap search range, a fraction of each side
#: gray values outside are clipped or nearly: no information on motion. The upper bound leaves out
#: the shoulder of the tone curve too, where one channel is often clipped already (the luma of such a
#: pixel no longer follows the scene) and highlights are compressed (0.95 rather than 0.98: Ostrow's
#: worst corner RMS at 256 px 0.58 -> 0.43 px, frobisher 0.79 -> 0.51 px)
_CLIP = (0.02, 0.95)


class Alignment(NamedTuple):
    """Result of :func:`align`.

    Attributes:
        frames: the stack warped onto the reference frame, ``[..., N, C, H, W]`` like the input.
        mask: ``[..., N, 1, H, W]``, 1 where the warped frame has data, 0 outside it.
        homographies: ``[..., N, 3, 3]``, pixel coordinates ``(x, y, 1)`` of the reference frame
            (x = column, y = row, pixel centres at integers) to those of each frame.
        model: the motion model that was fitted.
    """

    frames: Tensor
    mask: Tensor
    homographies: Tensor
    model: str


def align(stack: Tensor, *, model: str = "homography", reference: int | None = None, mask: Tensor | None = None) -> Alignment:
    """Align the frames of a bracket to one of them, whatever their exposures.

    Ward's median threshold bitmaps find a coarse translation (up to ~15 % of each side), then
    inverse-compositional Gauss-Newton refines ``model`` on exposure-matched frames, coarse to fine.

    Args:
        stack: ``[N, C, H, W]`` or ``[B, N, C, H, W]`` frames in [0, 1], any float dtype/device.
        model: ``"translation"``, ``"euclidean"`` (rotation + translation), ``"similarity"``
            (+ uniform scale) or ``"homography"``.
        reference: index of the frame the others are aligned to (negative counts from the end);
            ``None`` picks, per burst, the frame of median mean brightness (the middle exposure,
            which shares the most well-exposed pixels with both ends of the bracket).
        mask: optional, broadcastable to ``[..., N, 1, H, W]``: pixels with mask < 0.5 are left
            out of the estimation; the mask is warped with the frames and multiplies the result.

    Returns:
        :class:`Alignment` ``(frames, mask, homographies, model)``; gradients flow from ``frames``
        to ``stack`` through the bilinear warp (the transforms themselves are estimated without
        gradients and returned in float64 for float64 stacks, float32 otherwise).

    Shape:
        stack ``[B, N, C, H, W]`` -> frames ``[B, N, C, H, W]``, mask ``[B, N, 1, H, W]``,
        homographies ``[B, N, 3, 3]`` (no ``B`` for an unbatched stack).

    Example:
        >>> import torch, efusion
        >>> stack = torch.rand(3, 3, 64, 80)
        >>> result = efusion.align(stack, model="translation", reference=1)
        >>> result.frames.shape, result.homographies.shape
        (torch.Size([3, 3, 64, 80]), torch.Size([3, 3, 3]))

    Ward (2003) for the coarse search, Baker & Matthews (2004) for the refinement, Grossberg &
    Nayar (2003) for the exposure matching (see the module docstring).
    """
    stack5, unbatched = _checks.as_stack(stack)
    _check_model(model)
    b, n, _, h, w = stack5.shape
    if min(h, w) < 2:
        raise ValueError(f"align needs frames of at least 2 x 2 pixels (a motion in 2-D), got {h} x {w}")
    ref = reference_index(stack5, reference)
    mask5 = _checks.as_mask(mask, stack5, unbatched)
    if mask5 is not None:
        mask5 = mask5.expand(b, n, 1, h, w)
    with torch.no_grad(), _calling_thread_only(stack5.device):
        homographies = _estimate(stack5.detach(), ref, None if mask5 is None else mask5.detach(), model)
    frames, valid = _warp5(stack5, homographies, mask5, ref)
    if unbatched:
        frames, valid, homographies = frames[0], valid[0], homographies[0]
    return Alignment(frames, valid, homographies, model)


@contextlib.contextmanager
def _calling_thread_only(device: torch.device) -> Iterator[None]:
    """CPU operators inside run on the calling thread. The estimation is thousands of small
    operators on the work copy; as parallel regions, each waits at its barrier for a thread the OS
    has descheduled in favour of another process: beside busy jobs (load ~4 on 2 cores), 3 x 3 MP
    took 2.4-21 s on 2 threads, 0.66-1.1 s on one."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def warp(stack: Tensor, homographies: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Resample each frame onto the reference's pixel grid: ``out(x) = frame(H x)``.

    Bilinear (``grid_sample``, ``align_corners=True`` on pixel centres), border values outside the
    frame; differentiable with respect to the frames (and the homographies).

    Args:
        stack: ``[N, C, H, W]`` or ``[B, N, C, H, W]`` frames.
        homographies: ``[..., N, 3, 3]``: reference pixel ``(x, y, 1)`` -> frame pixel.
        mask: optional validity of the input frames, broadcastable to ``[..., N, 1, H, W]``.

    Returns:
        ``(frames, mask)``: the warped stack (same shape) and ``[..., N, 1, H, W]``, 1 where the
        sample fell inside the frame (times the warped input mask).
    """
    stack5, unbatched = _checks.as_stack(stack)
    b, n, _, h, w = stack5.shape
    if not isinstance(homographies, Tensor) or not homographies.is_floating_point():
        raise TypeError(f"homographies must be a floating-point tensor, got {type(homographies).__name__}")
    expected = (n, 3, 3) if unbatched else (b, n, 3, 3)
    if tuple(homographies.shape) != expected:
        raise ValueError(f"homographies must have shape {list(expected)}, got {list(homographies.shape)}")
    mask5 = _checks.as_mask(mask, stack5, unbatched)
    if mask5 is not None:
        mask5 = mask5.expand(b, n, 1, h, w)
    frames, valid = _warp5(stack5, homographies.reshape(b, n, 3, 3), mask5)
    return (frames[0], valid[0]) if unbatched else (frames, valid)


def reference_index(stack5: Tensor, reference: int | None) -> Tensor:
    """The reference frame of each burst of a ``[B, N, C, H, W]`` stack as a long tensor ``[B]``.

    ``None``: the frame of median mean brightness (the lower median for even ``N``).
    """
    b, n = stack5.shape[:2]
    if reference is None:
        brightness = stack5.detach().mean(dim=(2, 3, 4))
        order = brightness.argsort(dim=1)
        return order[:, (n - 1) // 2]
    if isinstance(reference, bool) or not isinstance(reference, int):
        raise TypeError(f"reference must be None or an int frame index, got {type(reference).__name__}")
    if not -n <= reference < n:
        raise ValueError(f"reference must be a frame index in [{-n}, {n - 1}] for N = {n} frames, got {reference}")
    return torch.full((b,), reference % n, dtype=torch.long, device=stack5.device)


def _check_model(model) -> None:
    if not isinstance(model, str):
        raise TypeError(f"model must be a string, one of {MODELS}, got {type(model).__name__}")
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")


# ---------------------------------------------------------------------------------------------
# warping


def _warp5(stack5: Tensor, homographies: Tensor, mask5: Tensor | None, ref: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Warp ``[B, N, C, H, W]`` frame by frame and band by band of about _BAND pixels (the sampling
    grid of one band at a time: memory flat in N and H, and the grid stays in cache); the frames
    ``ref`` ``[B]`` are returned as they came (not resampled at their own pixel centres)."""
    b, n, c, h, w = stack5.shape
    compute = stack5.dtype if stack5.dtype in (torch.float32, torch.float64) else torch.float32
    device = stack5.device
    # reference pixel -> frame pixel -> grid_sample's unit coordinates (align_corners=True)
    to_unit = torch.tensor([[2.0 / max(w - 1, 1), 0, -1], [0, 2.0 / max(h - 1, 1), -1], [0, 0, 1]], dtype=torch.float64)
    unit = to_unit.to(device, homographies.dtype) @ homographies.reshape(b * n, 3, 3)
    unit = (unit / unit[:, 2:, 2:]).to(compute)
    # the last rows decide (on the host, once) which frames need the perspective division
    projective = (unit.detach()[:, 2, :2] != 0).any(dim=1).tolist()
    refs = [-1] * b if ref is None else ref.tolist()
    xs = torch.arange(w, device=device, dtype=compute)
    # a sample is inside when it falls within 1e-3 px of the end pixels' centres
    bound_x, bound_y = 1 + 2e-3 / max(w - 1, 1), 1 + 2e-3 / max(h - 1, 1)
    frames = torch.empty((b, n, c, h, w), device=device, dtype=compute)
    valid = torch.empty((b, n, 1, h, w), device=device, dtype=compute)
    for i in range(b * n):
        bi, ni = divmod(i, n)
        if refs[bi] == ni:
            frames[bi, ni] = stack5[bi, ni]
            valid[bi, ni] = 1.0 if mask5 is None else mask5[bi, ni]
            continue
        a = unit[i]
        source = stack5[bi, ni : ni + 1].to(compute)
        source_mask = None if mask5 is None else mask5[bi, ni : ni + 1].to(compute)
        band = max(1, _BAND // w)
        for top in range(0, h, band):
            rows = slice(top, min(top + band, h))
            ys = torch.arange(rows.start, rows.stop, device=device, dtype=compute).view(-1, 1)
            grid = _band_grid(a, xs, ys, projective[i]).unsqueeze(0)
            frames[bi, ni, :, rows] = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
            inside = (grid[0, ..., 0].detach().abs() <= bound_x) & (grid[0, ..., 1].detach().abs() <= bound_y)
            if source_mask is None:
                valid[bi, ni, 0, rows] = inside
            else:
                warped_mask = F.grid_sample(source_mask, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
                valid[bi, ni, 0, rows] = inside * warped_mask[0, 0]
    return frames.to(stack5.dtype), valid.to(stack5.dtype)


def _band_grid(a: Tensor, xs: Tensor, ys: Tensor, projective: bool) -> Tensor:
    """grid_sample's grid ``[rows, w, 2]`` of a band: ``a [3, 3]`` applied to columns ``xs [w]`` and rows ``ys [rows, 1]``."""
    if a.requires_grad and torch.is_grad_enabled():
        # always divided: the last row's gradient is not zero where its value is
        den = a[2, 0] * xs + (a[2, 1] * ys + a[2, 2])
        gx = (a[0, 0] * xs + (a[0, 1] * ys + a[0, 2])) / den
        gy = (a[1, 0] * xs + (a[1, 1] * ys + a[1, 2])) / den
        return torch.stack((gx, gy), dim=-1)
    # without autograd, each coordinate is written straight into its interleaved place (4 times
    # faster than computing both and stacking them)
    grid = torch.empty((ys.shape[0], xs.shape[0], 2), device=xs.device, dtype=xs.dtype)
    if projective:
        den = a[2, 0] * xs + (a[2, 1] * ys + a[2, 2])
        torch.div(a[0, 0] * xs + (a[0, 1] * ys + a[0, 2]), den, out=grid[..., 0])
        torch.div(a[1, 0] * xs + (a[1, 1] * ys + a[1, 2]), den, out=grid[..., 1])
    else:
        torch.add(a[0, 0] * xs, a[0, 1] * ys + a[0, 2], out=grid[..., 0])
        torch.add(a[1, 0] * xs, a[1, 1] * ys + a[1, 2], out=grid[..., 1])
    return grid


def _apply(hom: Tensor, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """Apply homographies ``[M, 3, 3]`` to points ``xs, ys`` of shape ``[M, P]`` -> two ``[M, P]``."""
    hm = hom.unsqueeze(-1)
    den = hm[:, 2, 0] * xs + hm[:, 2, 1] * ys + hm[:, 2, 2]
    px = (hm[:, 0, 0] * xs + hm[:, 0, 1] * ys + hm[:, 0, 2]) / den
    py = (hm[:, 1, 0] * xs + hm[:, 1, 1] * ys + hm[:, 1, 2]) / den
    return px, py


def _to_unit(coord: Tensor, size: int) -> Tensor:
    """Pixel coordinate -> grid_sample's [-1, 1] with align_corners=True (centres of the end pixels)."""
    return coord * (2.0 / max(size - 1, 1)) - 1.0


# ---------------------------------------------------------------------------------------------
# estimation


def _gray(stack5: Tensor, dtype: torch.dtype) -> Tensor:
    """Luma ``[B, N, H, W]`` (Rec. 601 weights, :data:`efusion.color.OPENCV_GRAY`, as Ward's bitmaps use a gray image)."""
    x = stack5.to(dtype)
    if x.shape[2] == 1:
        return x[:, :, 0]
    red, green, blue = OPENCV_GRAY
    return red * x[:, :, 0] + green * x[:, :, 1] + blue * x[:, :, 2]


def _estimate(stack5: Tensor, ref: Tensor, mask5: Tensor | None, model: str) -> Tensor:
    b, n, c, h, w = stack5.shape
    dtype = torch.float64 if stack5.dtype == torch.float64 else torch.float32
    device = stack5.device
    eye = torch.eye(3, dtype=dtype, device=device)
    hom = eye.expand(b, n, 3, 3).clone()
    if n == 1:
        return hom
    # the pyramid is built on gray frames area-averaged by an integer factor to at most _WORK_SIDE:
    # work pixel i covers full pixels factor * i ... factor * i + factor - 1
    # (and leaving at least 3 work pixels across a thin strip: its border pixels are not used)
    factor = max(1, min(math.ceil(max(h, w) / _WORK_SIDE), min(h, w) // 3))
    frames = stack5.reshape(b * n, c, h, w).to(dtype)
    if factor > 1:
        frames = F.avg_pool2d(frames, factor)
    gray = _gray(frames.view(b, n, c, *frames.shape[-2:]), dtype)
    hw, ww = gray.shape[-2:]

    def side(level: int) -> int:
        return max(math.ceil(hw / 2 ** level), math.ceil(ww / 2 ** level))

    def across(level: int) -> int:
        return min(math.ceil(hw / 2 ** level), math.ceil(ww / 2 ** level))

    coarse = 0  # a thin strip stops coarsening while its shorter side still has interior pixels
    while side(coarse) > _COARSE_SIDE and across(coarse + 1) >= 3:
        coarse += 1
    grays = gaussian_pyramid(gray, coarse + 1)
    valid = None if mask5 is None else (mask5[:, :, 0] >= 0.5).to(dtype)
    if valid is None:
        valids = [torch.ones_like(g, dtype=torch.bool) for g in grays]
    else:
        valids = [v > 0.999 for v in gaussian_pyramid(F.avg_pool2d(valid, factor) if factor > 1 else valid, coarse + 1)]
    # level l, pixel j sits at full-resolution pixel factor * 2^l * j + (factor - 1) / 2
    offset = (factor - 1) / 2
    rows = torch.arange(b, device=device)
    order = torch.arange(n, device=device).expand(b, n)
    others = order[order != ref.view(b, 1)].view(b, n - 1)
    # 1. coarse translation from Ward's bitmaps
    shift = _mtb_shift(grays[coarse], valids[coarse], ref)
    hom[..., 0, 2] = shift[..., 0] * factor * 2 ** coarse
    hom[..., 1, 2] = shift[..., 1] * factor * 2 ** coarse
    # 2. inverse-compositional Gauss-Newton, coarse to fine, in normalised coordinates
    scale = max(h, w) / 2.0
    norm = torch.tensor([[1 / scale, 0, -(w - 1) / 2 / scale], [0, 1 / scale, -(h - 1) / 2 / scale], [0, 0, 1]], dtype=dtype, device=device)
    denorm = torch.linalg.inv(norm)
    hom_n = (norm @ hom @ denorm)[rows.view(b, 1), others].reshape(-1, 3, 3)
    full_pass = factor > 1 and min(h, w) >= 3
    for level in range(coarse, -1, -1):
        geometry = (factor * 2 ** level, offset, scale, (h, w))
        points, sample = _level(grays[level], valids[level], ref, others, geometry)
        # a level that a finer one refines stops at steps of 1e-2 of its pixels, the last at 1e-3
        tolerance = 1e-3 if level == 0 and not full_pass else 1e-2
        if level == coarse and model != "translation":
            # the bitmaps' integer shift first becomes a sub-pixel one: a better start for more parameters
            hom_n = _refine(points, sample, hom_n, "translation", geometry, 20, 1e-2)
        # a homography's four parameters beyond a similarity (shear, aspect, perspective) only on
        # the finest level (and the full-resolution pass): on a coarse level they are barely
        # determined and, pulled by what the exposure matching leaves unexplained, lead the fit into
        # a basin the finest level does not leave (seed_taipei at 256 px: 0.60 -> 0.27 px corner RMS)
        level_model = "similarity" if model == "homography" and level > 0 else model
        hom_n = _refine(points, sample, hom_n, level_model, geometry, 30 if level == coarse else 10, tolerance)
    if full_pass:
        # the work level's error is multiplied by the factor at full resolution: a last pass on
        # full-resolution pixels (the work level's, sampled from the frames themselves)
        geometry = (1, 0.0, scale, (h, w))
        points, sample = _full_level(stack5, valid, ref, others, points, factor, dtype)
        hom_n = _refine(points, sample, hom_n, model, geometry, 10, 1e-3)
    hom[rows.view(b, 1), others] = denorm @ hom_n.view(b, n - 1, 3, 3) @ norm
    hom = hom / hom[..., 2:, 2:]
    is_ref = order == ref.view(b, 1)
    return torch.where(is_ref.view(b, n, 1, 1), eye, hom)


def _mtb_shift(gray: Tensor, valid: Tensor, ref: Tensor) -> Tensor:
    """Integer shifts ``[B, N, 2]`` (x, y) with ``frame(p + shift) ~ reference(p)`` by median threshold bitmaps.

    Ward (2003): bitmap = gray > median, exclusion bitmap = |gray - median| > 4/256 (noise near the
    median flips bits); the cost of a shift is the number of differing bits where both exclusion
    bitmaps are set. All shifts are scored at once: with XOR(a, b) = a + b - 2ab the count is a sum
    of three cross-correlations, computed by FFT, normalised by the overlap of the exclusion maps.
    """
    b, n, h, w = gray.shape
    rows = torch.arange(b, device=gray.device)
    # Ward thresholds at the median and suggests other percentiles for very dark or bright frames;
    # here each frame and the reference are thresholded at one common percentile, the middle of
    # the range of percentiles where both are unclipped, so that the two bitmaps split the scene
    # at the same radiance whatever the exposures.
    valid_f = valid.to(gray.dtype)
    cdf = _imf.cdf(gray, valid, dims=2)
    lo, hi = _CLIP
    at_lo = cdf[..., int(lo * _imf.BINS)]
    at_hi = cdf[..., min(int(hi * _imf.BINS), _imf.BINS - 1) - 1]
    q_lo = torch.maximum(at_lo, at_lo[rows, ref].unsqueeze(1))
    q_hi = torch.minimum(at_hi, at_hi[rows, ref].unsqueeze(1))
    q = torch.where(q_hi > q_lo, 0.5 * (q_lo + q_hi), torch.full_like(q_lo, 0.5))
    threshold = _imf.inverse_cdf(cdf, q.unsqueeze(-1)).view(b, n, 1, 1)
    ref_gray = gray[rows, ref].unsqueeze(1)
    ref_threshold = _imf.inverse_cdf(cdf[rows, ref].unsqueeze(1).expand_as(cdf).contiguous(), q.unsqueeze(-1)).view(b, n, 1, 1)
    bits = (gray > threshold).to(gray.dtype)
    keep = ((gray - threshold).abs() > 4.0 / 256.0).to(gray.dtype) * valid_f
    ref_bits = (ref_gray > ref_threshold).to(gray.dtype)
    ref_keep = ((ref_gray - ref_threshold).abs() > 4.0 / 256.0).to(gray.dtype) * valid_f[rows, ref].unsqueeze(1)
    sy, sx = max(1, math.ceil(_SEARCH * h)), max(1, math.ceil(_SEARCH * w))
    size = (h + sy, w + sx)

    def spectrum(x: Tensor) -> Tensor:
        return torch.fft.rfft2(x, s=size)

    fk, fkb = spectrum(keep), spectrum(keep * bits)
    rk, rkb = spectrum(ref_keep).conj(), spectrum(ref_keep * ref_bits).conj()

    def corr(r: Tensor, f: Tensor) -> Tensor:
        # c[s] = sum_p r(p) f(p + s), s taken modulo the padded size
        return torch.fft.irfft2(r * f, s=size)

    mismatch = corr(rkb, fk) + corr(rk, fkb) - 2 * corr(rkb, fkb)
    overlap = corr(rk, fk)
    # shifts -s..s: indices 0..s and size-s..size-1
    iy = torch.cat((torch.arange(0, sy + 1), torch.arange(-sy, 0))).to(gray.device)
    ix = torch.cat((torch.arange(0, sx + 1), torch.arange(-sx, 0))).to(gray.device)
    mismatch, overlap = mismatch[..., iy % size[0], :][..., ix % size[1]], overlap[..., iy % size[0], :][..., ix % size[1]]
    total = ref_keep.sum(dim=(-2, -1), keepdim=True)
    cost = mismatch / overlap.clamp_min(1.0)
    # a shift must keep a good part of the reference's informative pixels in view
    cost = torch.where(overlap > 0.3 * total, cost, torch.inf)
    # ties (flat regions) go to the smaller shift
    cost = cost + 1e-6 * (iy.view(-1, 1).abs() + ix.view(1, -1).abs()).to(cost.dtype)
    best = cost.flatten(2).argmin(dim=2)
    dy, dx = iy[best // ix.numel()], ix[best % ix.numel()]
    return torch.stack((dx, dy), dim=-1).to(gray.dtype)


def _jacobian(model: str, u: Tensor, v: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """d(warped u)/dp and d(warped v)/dp at the identity, per parameter (lists of tensors/scalars)."""
    one, zero = torch.ones_like(u), torch.zeros_like(u)
    if model == "translation":
        return [one, zero], [zero, one]
    if model == "euclidean":  # (tx, ty, angle)
        return [one, zero, -v], [zero, one, u]
    if model == "similarity":  # (tx, ty, a, b): [[1 + a, -b], [b, 1 + a]]
        return [one, zero, u, -v], [zero, one, v, u]
    # homography: I + [[p0, p1, p2], [p3, p4, p5], [p6, p7, 0]]
    return [u, v, one, zero, zero, zero, -u * u, -u * v], [zero, zero, zero, u, v, one, -u * v, -v * v]


def _increment(model: str, dp: Tensor) -> Tensor:
    """The warp ``[M, 3, 3]`` of parameters ``dp [M, K]`` (exact group elements for the rigid models)."""
    m = dp.shape[0]
    out = torch.eye(3, dtype=dp.dtype, device=dp.device).repeat(m, 1, 1)
    out[:, 0, 2], out[:, 1, 2] = dp[:, 0], dp[:, 1]
    if model == "euclidean":
        c, s = torch.cos(dp[:, 2]), torch.sin(dp[:, 2])
        out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    elif model == "similarity":
        out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = 1 + dp[:, 2], -dp[:, 3], dp[:, 3], 1 + dp[:, 2]
    elif model == "homography":
        out[:, 0, 0], out[:, 0, 1], out[:, 0, 2] = 1 + dp[:, 0], dp[:, 1], dp[:, 2]
        out[:, 1, 0], out[:, 1, 1], out[:, 1, 2] = dp[:, 3], 1 + dp[:, 4], dp[:, 5]
        out[:, 2, 0], out[:, 2, 1] = dp[:, 6], dp[:, 7]
    return out


class _Points(NamedTuple):
    """The reference's pixels Gauss-Newton uses on one level, ``[B, S]`` each (S the same for all bursts)."""

    xs: Tensor      # level pixel coordinates
    ys: Tensor
    value: Tensor   # the reference's gray there
    gx: Tensor      # and its gradient per level pixel
    gy: Tensor
    use: Tensor     # bool: in the cost (valid, unclipped, not on the border)
    valid: Tensor   # bool: in the histograms of the exposure matching (valid)


def _level(gray: Tensor, valid: Tensor, ref: Tensor, others: Tensor, geometry):
    """The points of one pyramid level ``[B, N, h, w]`` and a sampler of the other frames there."""
    b, _, hl, wl = gray.shape
    rows = torch.arange(b, device=gray.device)
    template = gray[rows, ref]  # [B, hl, wl]
    gy, gx = torch.gradient(template, dim=(-2, -1))
    lo, hi = _CLIP
    ref_ok = valid[rows, ref] & (template > lo) & (template < hi)
    # the border row/column has one-sided differences: leave it out
    ref_ok[..., 0, :] = ref_ok[..., -1, :] = False
    ref_ok[..., :, 0] = ref_ok[..., :, -1] = False
    index, real = _select(gx * gx + gy * gy, ref_ok)  # [B, S]

    def at(x: Tensor) -> Tensor:
        return x.flatten(1).gather(1, index)

    points = _Points(
        (index % wl).to(gray.dtype), torch.div(index, wl, rounding_mode="floor").to(gray.dtype), at(template),
        at(gx), at(gy), real & at(ref_ok), real & at(valid[rows, ref]),
    )
    moving, moving_valid = gray[rows.view(b, 1), others], valid[rows.view(b, 1), others]
    frame_ok = moving_valid & (moving > lo) & (moving < hi)
    m = others.numel()
    source = torch.stack((moving, frame_ok.to(gray.dtype), moving_valid.to(gray.dtype)), dim=2).reshape(m, 3, hl, wl)

    def sample(px: Tensor, py: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # [M, S] level pixel coordinates -> gray, usable, valid [M, S]; 0 outside the frame
        grid = torch.stack((_to_unit(px, wl), _to_unit(py, hl)), dim=-1).unsqueeze(1)
        warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, :, 0]
        return warped[:, 0], warped[:, 1] > 0.999, warped[:, 2] > 0.999

    return points, sample


def _full_level(stack5: Tensor, valid: Tensor | None, ref: Tensor, others: Tensor, work: _Points, factor: int, dtype):
    """The work level's points moved to full resolution (a pixel near each one's centre), and a
    sampler of the other frames there: the frames are read at the points only, never converted whole."""
    b, n, c, h, w = stack5.shape
    rows = torch.arange(b, device=stack5.device)
    xs = (work.xs * factor + (factor - 1) // 2).long().clamp_(1, w - 2)
    ys = (work.ys * factor + (factor - 1) // 2).long().clamp_(1, h - 2)
    flat = stack5.reshape(b * n, c, h * w)  # a view: the reference is read at the points only
    batch, frame = rows.view(b, 1), (rows * n + ref).view(b, 1)

    def gray_at(y: Tensor, x: Tensor) -> Tensor:  # [B, S] integer pixels of the reference -> gray
        return _gray(flat[frame, :, y * w + x][..., None, None], dtype)[..., 0, 0]  # [B, S, C, 1, 1] -> [B, S]

    value = gray_at(ys, xs)
    gx = 0.5 * (gray_at(ys, xs + 1) - gray_at(ys, xs - 1))
    gy = 0.5 * (gray_at(ys + 1, xs) - gray_at(ys - 1, xs))
    lo, hi = _CLIP
    ref_valid = work.valid if valid is None else work.valid & (valid[batch, ref.view(b, 1), ys, xs] > 0.5)
    use = work.use & ref_valid & (value > lo) & (value < hi)
    points = _Points(xs.to(dtype), ys.to(dtype), value, gx, gy, use, ref_valid)
    pairs = list(zip(batch.expand_as(others).flatten().tolist(), others.flatten().tolist()))
    sources = [stack5[bi, ni : ni + 1].to(dtype) for bi, ni in pairs]  # no copy for float32/64 stacks

    def sample(px: Tensor, py: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        grid = torch.stack((_to_unit(px, w), _to_unit(py, h)), dim=-1).unsqueeze(1)  # [M, 1, S, 2]
        gray, ok = [], []
        for i, (bi, ni) in enumerate(pairs):
            frame = F.grid_sample(sources[i], grid[i : i + 1], "bilinear", "zeros", align_corners=True)  # [1, C, 1, S]
            gray.append(_gray(frame.unsqueeze(0), dtype)[0, 0, 0])
            if valid is not None:
                valid_at = F.grid_sample(valid[bi, ni].view(1, 1, h, w), grid[i : i + 1], "bilinear", "zeros", align_corners=True)
                ok.append(valid_at[0, 0, 0] > 0.999)
        gray_t = torch.stack(gray)
        inside = (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
        frame_valid = inside if valid is None else inside & torch.stack(ok)
        return gray_t, frame_valid & (gray_t > lo) & (gray_t < hi), frame_valid

    return points, sample


def _refine(points: _Points, sample, hom_n: Tensor, model: str, geometry, iterations: int, tolerance: float) -> Tensor:
    """Inverse-compositional Gauss-Newton on one level (Baker & Matthews 2004, Sec. 3.2).

    The template is the reference at ``points`` (its steepest-descent images are computed once);
    each other frame ``hom_n [M, 3, 3]`` (M = B (N - 1), normalised coordinates), mapped to the
    reference's exposure, is sampled at those points through the current estimate; the update
    solves the Huber-weighted normal equations and composes the inverse increment. ``geometry``:
    (level pixel -> full pixel step, offset, normalising scale, full size).
    """
    step, offset, scale, (h, w) = geometry
    dtype, device = hom_n.dtype, hom_n.device
    m, b = hom_n.shape[0], points.xs.shape[0]
    u = (points.xs * step + offset - (w - 1) / 2) / scale
    v = (points.ys * step + offset - (h - 1) / 2) / scale
    gx, gy = points.gx * (scale / step), points.gy * (scale / step)  # d/du = d/dx * dx/du
    jx, jy = _jacobian(model, u, v)
    sd = torch.stack([gx * a + gy * c for a, c in zip(jx, jy)], dim=-1)  # [B, S, K]

    def per_frame(x: Tensor) -> Tensor:  # [B, ...] -> [M, ...]
        return x.unsqueeze(1).expand(b, m // b, *x.shape[1:]).reshape(m, *x.shape[1:])

    samples = points.xs.shape[1]
    sd, use, xs, ys = per_frame(sd), per_frame(points.use), per_frame(points.xs), per_frame(points.ys)
    target, ref_valid = per_frame(points.value), per_frame(points.valid)
    norm_to_px = torch.tensor(
        [[scale / step, 0, ((w - 1) / 2 - offset) / step], [0, scale / step, ((h - 1) / 2 - offset) / step], [0, 0, 1]],
        dtype=dtype, device=device,
    )
    px_to_norm = torch.linalg.inv(norm_to_px)
    hom = hom_n.clone()
    eye_k = torch.eye(sd.shape[-1], dtype=dtype, device=device)
    best_cost = torch.full((m,), torch.inf, dtype=dtype, device=device)
    best = hom.clone()
    enough_pixels = max(4 * sd.shape[-1], 0.05 * samples)
    # each burst iterates until its frames' steps are all small, then evaluates that last step and
    # stops (so a burst's result does not depend on the others it is batched with)
    live = torch.ones(m, dtype=torch.bool, device=device)
    last = torch.zeros_like(live)
    for iteration in range(iterations + 1):
        # level pixel -> normalised -> frame (normalised) -> frame level pixel
        px, py = _apply(norm_to_px @ hom @ px_to_norm, xs, ys)
        warped_gray, frame_ok, frame_valid = sample(px, py)
        ok = use & frame_ok
        okf = ok.to(dtype)
        count = okf.sum(1)
        if iteration % 5 == 0:
            # exposure matching on the pixels both frames see under the current estimate:
            # histograms of one region, so their quantiles correspond (a global histogram of
            # two differently framed views would bias the mapping and with it the motion)
            table = _imf.imf_table(warped_gray, target, (frame_valid & ref_valid).to(dtype))
        error = (_imf.lookup(table, warped_gray) - target) * okf
        # Huber weight with a robust scale (mean absolute residual of a Gaussian is 0.8 sigma)
        sigma = (1.253 * error.abs().sum(1) / count.clamp_min(1.0)).clamp_min(1.0 / 255.0)
        k = 1.345 * sigma.unsqueeze(1)
        small = error.abs() <= k
        weight = okf * torch.where(small, torch.ones_like(error), k / error.abs().clamp_min(1e-12))
        # keep, per frame, the estimate of lowest mean Huber cost with a fixed scale (the one of
        # the start), so that a frame with too little to align on cannot wander off
        if iteration == 0:
            k0 = k
        loss = torch.where(error.abs() <= k0, 0.5 * error ** 2, k0 * (error.abs() - 0.5 * k0)) * okf
        enough = count >= enough_pixels
        cost = torch.where(enough, loss.sum(1) / count.clamp_min(1.0), torch.full_like(count, torch.inf))
        better = (cost < best_cost) & live
        best = torch.where(better.view(m, 1, 1), hom, best)
        best_cost = torch.where(better, cost, best_cost)
        live = live & ~last
        if iteration == iterations or not bool(live.any()):
            break
        wsd = sd * weight.unsqueeze(-1)
        hessian = wsd.transpose(1, 2) @ sd + 1e-9 * eye_k
        grad = (wsd.transpose(1, 2) @ error.unsqueeze(-1)).squeeze(-1)
        dp = torch.linalg.solve(hessian, grad) * enough.unsqueeze(1).to(dtype)
        updated = hom @ torch.linalg.inv(_increment(model, dp))
        hom = torch.where(live.view(m, 1, 1), updated / updated[:, 2:, 2:], hom)
        # converged when the increment moves no pixel of the level by more than the tolerance
        moved = (dp.abs().amax(dim=1) * (scale / step)).view(b, -1).amax(dim=1)
        last = live & (moved < tolerance).repeat_interleave(m // b)
    # frames without enough pixels keep their start
    return best


def _select(strength: Tensor, ok: Tensor) -> tuple[Tensor, Tensor]:
    """Flat indices ``[B, S]`` of the pixels Gauss-Newton uses on a level ``[B, h, w]``, and which are real (not padding).

    All pixels of a small level; on a larger one the strongest gradients of each cell of a grid
    of about 16 x 16 cells (the ones that carry the motion, spread over the frame so that the
    perspective parameters stay determined), at most _SAMPLES in all.
    """
    b, hl, wl = strength.shape
    if hl * wl <= _SAMPLES:
        index = torch.arange(hl * wl, device=strength.device).expand(b, hl * wl)
        return index, torch.ones_like(index, dtype=torch.bool)
    cell = max(1, math.ceil(max(hl, wl) / 16))
    cy, cx = math.ceil(hl / cell), math.ceil(wl / cell)
    per_cell = max(1, _SAMPLES // (cy * cx))
    # usable pixels first, then the others of the level, then the padding
    score = F.pad(torch.where(ok, strength, -1.0), (0, cx * cell - wl, 0, cy * cell - hl), value=-2.0)
    cells = score.view(b, cy, cell, cx, cell).permute(0, 1, 3, 2, 4).reshape(b, cy * cx, cell * cell)
    local = cells.topk(min(per_cell, cell * cell), dim=-1, sorted=False).indices  # [B, cells, k]
    cell_y = torch.arange(cy, device=strength.device).view(cy, 1).expand(cy, cx).reshape(1, cy * cx, 1)
    cell_x = torch.arange(cx, device=strength.device).view(1, cx).expand(cy, cx).reshape(1, cy * cx, 1)
    y = cell_y * cell + torch.div(local, cell, rounding_mode="floor")
    x = cell_x * cell + local % cell
    real = (y < hl) & (x < wl)
    index = (y.clamp_max(hl - 1) * wl + x.clamp_max(wl - 1)).flatten(1)
    return index, real.flatten(1)
