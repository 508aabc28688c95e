"""The ``"cpu"`` backend's kernels as ``torch.library`` custom operators ``efusion::fuse`` and
``efusion::blend``, which ``torch.compile`` keeps opaque in a compiled graph.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ...depth import depth_plan
from ...presets import get_preset
from .blend import blend_frames, fuse_kernels
from .pyramid import Workspace

# ----------------------------------------------------------------------------------------------
# torch.compile: on a CPU the kernels run as opaque operators inside the compiled graph
#
# Traced by Inductor, the reference code materialises most of its intermediate pyramid levels and
# runs about twice as long as the kernels (and takes a minute to compile at 12 MP), so no-grad CPU
# calls under ``torch.compile`` call the kernels through these operators (``fullgraph=True``
# works). Calls that need gradients, and other devices, are compiled from the reference code.


def op_arguments(*values) -> list:
    """Numbers, tensors or ``None`` as (number, tensor) pairs for an operator schema (None: NaN)."""
    out: list = []
    for value in values:
        if isinstance(value, Tensor):
            out += [0.0, value]
        else:
            out += [math.nan if value is None else float(value), None]
    return out


def _from_op(number: float, tensor: Tensor | None):
    if tensor is not None:
        return tensor
    return None if math.isnan(number) else number


def relative_code(relative: bool | None) -> int:
    return -1 if relative is None else int(relative)


def _relative_from_code(code: int) -> bool | None:
    return None if code < 0 else bool(code)


@torch.library.custom_op("efusion::fuse", mutates_args=(), device_types="cpu")
def _fuse_op(
    stack: Tensor, mask: Optional[Tensor],
    contrast: float, contrast_tensor: Optional[Tensor], saturation: float, saturation_tensor: Optional[Tensor],
    exposure: float, exposure_tensor: Optional[Tensor], mu: float, mu_tensor: Optional[Tensor],
    sigma: float, sigma_tensor: Optional[Tensor], levels: float, levels_tensor: Optional[Tensor],
    relative: int, preset: str,
) -> Tensor:
    """:func:`efusion.exposure_fusion` of a validated ``[B, N, C, H, W]`` stack by the kernels."""
    preset_ = get_preset(preset)
    pairs = [(contrast, contrast_tensor), (saturation, saturation_tensor), (exposure, exposure_tensor),
             (mu, mu_tensor), (sigma, sigma_tensor)]
    params = tuple(_from_op(*pair) for pair in pairs)
    mask = None if mask is None else mask.to(stack.dtype)
    plan = depth_plan(_from_op(levels, levels_tensor), stack.shape[-2], stack.shape[-1], preset_, stack.dtype, stack.device,
                       _relative_from_code(relative), sparse=True)
    return fuse_kernels(stack, mask, params, plan, preset_)


@_fuse_op.register_fake
def _fuse_op_fake(stack, mask, *args):
    return stack.new_empty((stack.shape[0], stack.shape[2], stack.shape[3], stack.shape[4]))


@torch.library.custom_op("efusion::blend", mutates_args=(), device_types="cpu")
def _blend_op(stack: Tensor, weights: Tensor, levels: float, levels_tensor: Optional[Tensor], relative: int,
              preset: str) -> Tensor:
    """:func:`efusion.blend` of a validated ``[B, N, C, H, W]`` stack by the kernels."""
    preset_ = get_preset(preset)
    plan = depth_plan(_from_op(levels, levels_tensor), stack.shape[-2], stack.shape[-1], preset_, stack.dtype, stack.device,
                       _relative_from_code(relative), sparse=True)
    return blend_frames(stack, weights, plan, preset_, Workspace(stack))[0]


@_blend_op.register_fake
def _blend_op_fake(stack, weights, *args):
    return stack.new_empty((stack.shape[0], stack.shape[2], stack.shape[3], stack.shape[4]))

