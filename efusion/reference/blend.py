"""The reference Laplacian-pyramid blend (Mertens, Kautz & Van Reeth 2007, Section 3.2).

:func:`textbook_blend` is the paper's procedure as written: each frame's Laplacian pyramid times
the Gaussian pyramid of its weight map, summed over frames, collapsed (Burt & Adelson 1983).
:func:`blend` computes the same, in the same order of operations, one frame at a time; it is the
path the reference backend runs. Both take the pyramid depth as :func:`efusion.depth.depth_plan`'s
per-level coefficients, which interpolate between depths for a fractional ``levels``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._util import is_zero, scaled
from ..depth import depth_plan
from ..presets import Preset
from .pyramid import gaussian_pyramid, level_size, pyr_down, pyr_up

__all__ = ["blend", "textbook_blend"]


def blend(stack: Tensor, weights: Tensor, levels, preset: Preset, relative: bool | None = None,
              plan=None) -> Tensor:
    """Blend a validated ``[B, N, C, H, W]`` stack by ``[B, N, 1, H, W]`` weights -> ``[B, C, H, W]``.

    Streams over frames: one frame's pyramids exist at a time, added into the blended pyramid.
    ``plan``: :func:`~efusion.depth.depth_plan`'s coefficients, instead of ``levels`` and ``relative``.

    This is :func:`textbook_blend` reordered to stream over frames (the same operations in the same
    order, so the same bits; tested): it is the reference path because it holds one frame's
    pyramids at a time instead of all of them.
    """
    _, frames, _, height, width = stack.shape
    band_coef, residual_coef = plan or depth_plan(levels, height, width, preset, stack.dtype, stack.device, relative)
    top = len(band_coef)
    bands: list[Tensor | None] = [None] * top
    residuals: list[Tensor | None] = [None] * top
    sizes: list = [None] * top  # of each level (as the pyramid made them, also when traced)

    def add(acc: list[Tensor | None], level: int, value: Tensor) -> None:
        value = value if by_frame else value.sum(dim=1)
        previous = acc[level]
        acc[level] = value if previous is None else previous + value

    # one frame at a time; a traced graph with a symbolic frame count takes all frames at once
    # and sums over them at each level (another order of additions: not bit for bit)
    # (also under torch.compile: a graph a fraction of the size, which compiles several times faster)
    compiling = torch.compiler.is_compiling()
    by_frame = not isinstance(frames, torch.SymInt) and not compiling
    traced = isinstance(height, torch.SymInt) or isinstance(width, torch.SymInt) or compiling
    for n in range(frames if by_frame else 1):
        image, weight = (stack[:, n], weights[:, n]) if by_frame else (stack, weights)
        for level in range(top):
            sizes[level] = image.shape[-2:]
            coarser: Tensor | None = None
            coarser_weight: Tensor | None = None
            if traced and level < top - 1:
                # a graph: frame and weight as one stack of planes, one pyr_down, sizes from the
                # finest level (short symbolic size expressions; the same values)
                both = pyr_down(torch.cat([image, weight], dim=-3), preset, level_size((height, width), level + 1))
                coarser, coarser_weight = both[..., :-1, :, :], both[..., -1:, :, :]
            elif level < top - 1:
                coarser = pyr_down(image, preset)
            if coarser is not None and not is_zero(band_coef[level]):  # the coarsest level has no band
                add(bands, level, weight * (image - pyr_up(coarser, image.shape[-2:], preset)))
            if not is_zero(residual_coef[level]):
                add(residuals, level, weight * image)
            if coarser is not None:
                image, weight = coarser, pyr_down(weight, preset) if coarser_weight is None else coarser_weight

    def level_sum(level: int) -> Tensor | None:
        band, residual = bands[level], residuals[level]
        terms = []
        if band is not None:
            terms.append(scaled(band_coef[level], band))
        if residual is not None:
            terms.append(scaled(residual_coef[level], residual))
        return None if not terms else terms[0] if len(terms) == 1 else terms[0] + terms[1]

    result = level_sum(top - 1)
    for level in reversed(range(top - 1)):
        upsampled = pyr_up(result, sizes[level], preset) if result is not None else None
        here = level_sum(level)
        result = here if upsampled is None else upsampled if here is None else here + upsampled
    return _collapsed(result)


def textbook_blend(stack: Tensor, weights: Tensor, levels, preset: Preset, relative: bool | None = None,
                   plan=None) -> Tensor:
    """The Laplacian blend as the paper writes it, for a ``[B, N, C, H, W]`` stack and
    ``[B, N, 1, H, W]`` weights -> ``[B, C, H, W]``.

    Per frame ``n``: Gaussian pyramids ``G_n`` of the frame and ``W_n`` of its weights, Laplacian
    levels ``L_n,l = G_n,l - up(G_n,l+1)``. Blended band ``B_l = sum_n W_n,l L_n,l`` and blended
    Gaussian level ``R_l = sum_n W_n,l G_n,l``; the result collapses
    ``band_l B_l + residual_l R_l`` from the coarsest level (``depth_plan``'s coefficients: at an
    integer depth ``k`` the bands below ``k - 1`` and the residual at ``k - 1``). Holds every
    frame's pyramids at once; :func:`blend` streams.
    """
    _, frames, _, height, width = stack.shape
    band_coef, residual_coef = plan or depth_plan(levels, height, width, preset, stack.dtype, stack.device, relative)
    top = len(band_coef)
    images = [gaussian_pyramid(stack[:, n], top, preset) for n in range(frames)]
    masks = [gaussian_pyramid(weights[:, n], top, preset) for n in range(frames)]
    laplacians = [[g[l] - pyr_up(g[l + 1], g[l].shape[-2:], preset) for l in range(top - 1)] for g in images]

    def frame_sum(terms):
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total

    levels_out = []
    for l in range(top):
        terms = []
        if l < top - 1 and not is_zero(band_coef[l]):
            terms.append(scaled(band_coef[l], frame_sum([masks[n][l] * laplacians[n][l] for n in range(frames)])))
        if not is_zero(residual_coef[l]):
            terms.append(scaled(residual_coef[l], frame_sum([masks[n][l] * images[n][l] for n in range(frames)])))
        levels_out.append(None if not terms else terms[0] if len(terms) == 1 else terms[0] + terms[1])
    result = levels_out[-1]
    for l in reversed(range(top - 1)):
        size = images[0][l].shape[-2:]
        upsampled = None if result is None else pyr_up(result, size, preset)
        here = levels_out[l]
        result = here if upsampled is None else upsampled if here is None else here + upsampled
    return _collapsed(result)


def _collapsed(result: Tensor | None) -> Tensor:
    """The collapsed pyramid; ``depth_plan`` always gives the coarsest level a residual term."""
    if result is None:
        raise RuntimeError("the depth plan selected no pyramid level (a bug in efusion.depth)")
    return result
