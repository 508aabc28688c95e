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
   (Grossberg & Nayar 2003), with clipped pixels excluded and a Huber weight on the residuals.

The warp (``grid_sample``, bilinear) is differentiable with respect to the frames; the estimation
runs without gradients in float32 (float64 for float64 stacks).

References: G. Ward, "Fast, robust image registration for compositing high dynamic range
photographs from hand-held exposures", J. Graphics Tools 8(2), 2003,
doi:10.1080/10867651.2003.10487583; S. Baker and I. Matthews, "Lucas-Kanade 20 years on: a
unifying framework", IJCV 56(3), 2004, doi:10.1023/B:VISI.0000011205.11775.fd; M. D. Grossberg
and S. K. Nayar, "Determining the camera response from images: what is knowable?", IEEE TPAMI
25(11), 2003, doi:10.1109/TPAMI.2003.1240119.
"""
from __future__ import annotations

import math
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
_FINEST_SIDE = 2048  # refinement stops at the first level this small: 12 MP frames refine at 3 MP
_SEARCH = 0.15       # bitmap search range, a fraction of each side
_CLIP = (0.02, 0.98) # gray values outside are clipped (or nearly): no information on motion


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
    ref = reference_index(stack5, reference)
    mask5 = _checks.as_mask(mask, stack5, unbatched)
    if mask5 is not None:
        mask5 = mask5.expand(b, n, 1, h, w)
    with torch.no_grad():
        homographies = _estimate(stack5.detach(), ref, None if mask5 is None else mask5.detach(), model)
    frames, valid = _warp5(stack5, homographies, mask5)
    is_ref = torch.arange(n, device=stack5.device).view(1, n) == ref.view(b, 1)
    # the reference is returned as it came (not resampled at its own pixel centres)
    frames = torch.where(is_ref.view(b, n, 1, 1, 1), stack5, frames)
    if unbatched:
        frames, valid, homographies = frames[0], valid[0], homographies[0]
    return Alignment(frames, valid, homographies, model)


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


def _warp5(stack5: Tensor, homographies: Tensor, mask5: Tensor | None) -> tuple[Tensor, Tensor]:
    b, n, c, h, w = stack5.shape
    compute = stack5.dtype if stack5.dtype in (torch.float32, torch.float64) else torch.float32
    hom = homographies.to(device=stack5.device, dtype=torch.float64 if compute == torch.float64 else torch.float32)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=stack5.device, dtype=hom.dtype),
        torch.arange(w, device=stack5.device, dtype=hom.dtype),
        indexing="ij",
    )
    px, py = _apply(hom.reshape(b * n, 3, 3), xs, ys)
    inside = (px > -1e-3) & (px < w - 1 + 1e-3) & (py > -1e-3) & (py < h - 1 + 1e-3)
    grid = torch.stack((_to_unit(px, w), _to_unit(py, h)), dim=-1).to(compute)
    frames = F.grid_sample(
        stack5.reshape(b * n, c, h, w).to(compute), grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    valid = inside.to(compute).unsqueeze(1)
    if mask5 is not None:
        warped_mask = F.grid_sample(
            mask5.reshape(b * n, 1, h, w).to(compute), grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        valid = valid * warped_mask
    return frames.reshape(b, n, c, h, w).to(stack5.dtype), valid.reshape(b, n, 1, h, w).to(stack5.dtype)


def _apply(hom: Tensor, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """Apply ``[M, 3, 3]`` homographies to a grid of points ``[h, w]`` -> two ``[M, h, w]``."""
    hm = hom.view(-1, 3, 3, 1, 1)
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
    b, n, _, h, w = stack5.shape
    dtype = torch.float64 if stack5.dtype == torch.float64 else torch.float32
    gray = _gray(stack5, dtype)
    valid = torch.ones_like(gray) if mask5 is None else (mask5[:, :, 0] >= 0.5).to(dtype)
    def side(level: int) -> int:
        return max(math.ceil(h / 2 ** level), math.ceil(w / 2 ** level))

    coarse = 0
    while side(coarse) > _COARSE_SIDE:
        coarse += 1
    finest = 0
    while side(finest) > _FINEST_SIDE:
        finest += 1
    grays = gaussian_pyramid(gray, coarse + 1)
    valids = gaussian_pyramid(valid, coarse + 1) if mask5 is not None else [torch.ones_like(g) for g in grays]

    eye = torch.eye(3, dtype=dtype, device=gray.device)
    hom = eye.expand(b, n, 3, 3).clone()
    if n == 1:
        return hom
    # 1. coarse translation from Ward's bitmaps
    shift = _mtb_shift(grays[coarse], valids[coarse] > 0.999, ref)
    hom[..., 0, 2] = shift[..., 0] * 2 ** coarse
    hom[..., 1, 2] = shift[..., 1] * 2 ** coarse
    # 2. inverse-compositional Gauss-Newton, coarse to fine, in normalised coordinates
    scale = max(h, w) / 2.0
    norm = torch.tensor([[1 / scale, 0, -(w - 1) / 2 / scale], [0, 1 / scale, -(h - 1) / 2 / scale], [0, 0, 1]], dtype=dtype, device=gray.device)
    denorm = torch.linalg.inv(norm)
    hom_n = norm @ hom @ denorm
    for level in range(coarse, finest - 1, -1):
        args = (grays[level], valids[level] > 0.999, ref)
        if level == coarse and model != "translation":
            # the bitmaps' integer shift first becomes a sub-pixel one: a better start for more parameters
            hom_n = _refine(*args, hom_n, "translation", level, scale, (h, w), 20)
        hom_n = _refine(*args, hom_n, model, level, scale, (h, w), 30 if level == coarse else 10)
    hom = denorm @ hom_n @ norm
    hom = hom / hom[..., 2:, 2:]
    is_ref = torch.arange(n, device=gray.device).view(1, n) == ref.view(b, 1)
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


def _refine(gray, valid, ref, hom_n, model, level, scale, full_size, iterations):
    """Inverse-compositional Gauss-Newton on one pyramid level (Baker & Matthews 2004, Sec. 3.2).

    The template is the reference (its gradient and steepest-descent images are computed once);
    each frame, mapped to the reference's exposure, is warped by the current estimate; the update
    solves the Huber-weighted normal equations and composes the inverse increment.
    """
    b, n, hl, wl = gray.shape
    m = b * n
    h, w = full_size
    dtype, device = gray.dtype, gray.device
    step = 2.0 ** level
    rows = torch.arange(b, device=device)
    template = gray[rows, ref]  # [B, hl, wl]
    # the level's pixel (x, y) sits at full-resolution pixel (2^l x, 2^l y)
    ys, xs = torch.meshgrid(torch.arange(hl, device=device, dtype=dtype), torch.arange(wl, device=device, dtype=dtype), indexing="ij")
    u = (xs * step - (w - 1) / 2) / scale
    v = (ys * step - (h - 1) / 2) / scale
    gy, gx = torch.gradient(template, dim=(-2, -1))
    gx, gy = gx * (scale / step), gy * (scale / step)  # d/du = d/dx * dx/du
    jx, jy = _jacobian(model, u, v)
    sd = torch.stack([gx * a + gy * c for a, c in zip(jx, jy)], dim=-1)  # [B, hl, wl, K]
    lo, hi = _CLIP
    ref_ok = valid[rows, ref] & (template > lo) & (template < hi)
    # the border row/column has one-sided differences: leave it out
    ref_ok = ref_ok.clone()
    ref_ok[..., 0, :] = ref_ok[..., -1, :] = False
    ref_ok[..., :, 0] = ref_ok[..., :, -1] = False
    frame_ok = (valid & (gray > lo) & (gray < hi)).reshape(m, hl, wl).to(dtype)
    valid_f = valid.reshape(m, hl, wl).to(dtype)
    source = torch.stack((gray.reshape(m, hl, wl), frame_ok, valid_f), dim=1)  # warped in one call
    sd = sd.unsqueeze(1).expand(b, n, hl, wl, sd.shape[-1]).reshape(m, hl * wl, -1)
    ref_ok = ref_ok.unsqueeze(1).expand(b, n, hl, wl).reshape(m, hl * wl)
    template = template.unsqueeze(1).expand(b, n, hl, wl).reshape(m, hl * wl)
    ref_valid = valid[rows, ref].unsqueeze(1).expand(b, n, hl, wl).reshape(m, hl * wl)
    norm_to_px = torch.tensor([[scale / step, 0, (w - 1) / 2 / step], [0, scale / step, (h - 1) / 2 / step], [0, 0, 1]], dtype=dtype, device=device)
    hom = hom_n.reshape(m, 3, 3).clone()
    eye_k = torch.eye(sd.shape[-1], dtype=dtype, device=device)
    best_cost = torch.full((m,), torch.inf, dtype=dtype, device=device)
    best = hom.clone()
    for iteration in range(iterations + 1):
        # level pixel -> normalised -> frame (normalised) -> frame level pixel
        to_px = norm_to_px @ hom @ torch.linalg.inv(norm_to_px)
        px, py = _apply(to_px, xs, ys)
        grid = torch.stack((_to_unit(px, wl), _to_unit(py, hl)), dim=-1)
        warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        inside = (px >= 0) & (px <= wl - 1) & (py >= 0) & (py <= hl - 1)
        ok = ref_ok & (warped[:, 1] > 0.999).reshape(m, -1) & inside.reshape(m, -1)
        okf = ok.to(dtype)
        count = okf.sum(1)
        warped_gray = warped[:, 0].reshape(m, -1)
        if iteration % 5 == 0:
            # exposure matching on the pixels both frames see under the current estimate:
            # histograms of one region, so their quantiles correspond (a global histogram of
            # two differently framed views would bias the mapping and with it the motion)
            common = ((warped[:, 2] > 0.999).reshape(m, -1) & inside.reshape(m, -1) & ref_valid).to(dtype)
            table = _imf.imf_table(warped_gray, template, common)
        error = (_imf.lookup(table, warped_gray) - template) * okf
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
        enough = count >= max(4 * sd.shape[-1], 0.05 * hl * wl)
        cost = torch.where(enough, loss.sum(1) / count.clamp_min(1.0), torch.full_like(count, torch.inf))
        better = cost < best_cost
        best = torch.where(better.view(m, 1, 1), hom, best)
        best_cost = torch.where(better, cost, best_cost)
        if iteration == iterations:
            break
        wsd = sd * weight.unsqueeze(-1)
        hessian = wsd.transpose(1, 2) @ sd + 1e-9 * eye_k
        grad = (wsd.transpose(1, 2) @ error.unsqueeze(-1)).squeeze(-1)
        dp = torch.linalg.solve(hessian, grad) * enough.unsqueeze(1).to(dtype)
        hom = hom @ torch.linalg.inv(_increment(model, dp))
        hom = hom / hom[:, 2:, 2:]
        # converged when the increment moves no pixel of the level by more than 1e-3
        if float(dp.abs().max()) * scale / step < 1e-3:
            iterations = iteration + 1  # evaluate the last step, then stop
    # frames without enough pixels keep their start
    return best.reshape(b, n, 3, 3)
