"""Masked pixels filled from their unmasked neighbours, so a mask removes what it masks exactly.

A mask of 0 excludes a frame's pixel (alpha, ghosts, padding frames). Multiplying the weights by
the mask is not enough: the contrast measure reads a pixel's neighbours and the blend's coarser
pyramid levels mix a neighbourhood of every frame, so values under the mask would leak into the
result. :func:`fill_masked` replaces them first by push-pull normalised convolution (Knutsson &
Westin, "Normalized and Differential Convolution", CVPR 1993, doi:10.1109/CVPR.1993.341081; as a
pyramid: Gortler et al., "The Lumigraph", SIGGRAPH 1996, Section 3.3.3): the masked image and the
mask go down the blend's own Gaussian pyramid (Burt & Adelson 1983), each level's image divided
by its mask where that is non-zero, and holes take the upsampled coarser level. A filled value
depends on unmasked pixels only, so the fused image and its gradient with respect to unmasked
pixels do not depend on anything under the mask, NaN and inf included.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..presets import Preset, get_preset
from .pyramid import pyr_down, pyr_up

__all__ = ["fill_masked"]


def fill_masked(stack: Tensor, mask: Tensor, preset: str | Preset = "mertens") -> Tensor:
    """Replace the pixels of ``stack`` where ``mask <= 0`` by values pulled from the others.

    Pixels with ``mask > 0`` keep their values bit for bit (a mask without zeros returns the
    stack's values unchanged); the others get the push-pull average of the nearest unmasked pixels
    of the same frame (see the module docstring); a frame with no unmasked pixel becomes 0.
    Values under the mask are never multiplied (``torch.where``), so NaN and inf there do not
    propagate, neither forward nor backward.

    Args:
        stack: ``[..., C, H, W]``.
        mask: broadcastable to ``[..., 1, H, W]``; only ``mask > 0`` matters.
        preset: whose pyramid filter and borders pull the values.

    Returns:
        tensor of ``stack``'s shape and dtype.

    Example:
        >>> x = torch.tensor([[[[1.0, float("nan")], [3.0, 3.0]]]])
        >>> fill_masked(x, torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])).isfinite().all().item()
        True
    """
    preset = get_preset(preset)
    valid = (mask > 0).expand(*stack.shape[:-3], 1, *stack.shape[-2:])
    if valid.device.type == "cpu" and not torch.compiler.is_compiling():
        # on the host, frames without a masked pixel are left alone (no pyramid for them)
        holes = valid.logical_not().flatten(-3).any(-1)
        if not bool(holes.any()):
            return stack
        if not bool(holes.all()):
            out = stack.clone()
            out[holes] = _push_pull(stack[holes], valid[holes], preset)
            return out
    return _push_pull(stack, valid, preset)


def _push_pull(stack: Tensor, valid: Tensor, preset: Preset) -> Tensor:
    """:func:`fill_masked` of ``stack [..., C, H, W]`` where ``valid [..., 1, H, W]`` (bool) is false."""
    images = [torch.where(valid, stack, 0.0)]
    weights = [valid.to(stack.dtype)]
    while images[-1].shape[-2] > 1 or images[-1].shape[-1] > 1:
        images.append(pyr_down(images[-1], preset))
        weights.append(pyr_down(weights[-1], preset))
    filled = _normalised(images[-1], weights[-1], torch.zeros_like(images[-1]))
    for level in reversed(range(len(images) - 1)):
        coarse = pyr_up(filled, images[level].shape[-2:], preset)
        filled = _normalised(images[level], weights[level], coarse)
    return torch.where(valid, stack, filled)


def _normalised(image: Tensor, weight: Tensor, fallback: Tensor) -> Tensor:
    """``image / weight`` where ``weight > 0``, ``fallback`` elsewhere (finite gradients: double ``where``)."""
    known = weight > 0
    return torch.where(known, image / torch.where(known, weight, 1.0), fallback)
