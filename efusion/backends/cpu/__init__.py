"""The ``"cpu"`` backend: band kernels with a hand-written backward, for eager float32/float64 calls.

The kernels write into reused buffers (:class:`.pyramid.Workspace`), one band of rows at a time
(:func:`.pyramid.band_rows`; option ``band_elements`` of ``efusion.backends.use("cpu", ...)``),
one frame at a time; results agree with the reference code to rounding (the weights with
exponents 1 bit for bit). Under autograd they run inside autograd functions
(:class:`.blend.FusionFunction`, :class:`.blend.BlendFunction`, :class:`.weights.WeightsFunction`)
whose backward streams over frames too; when autograd records the backward (``create_graph=True``)
they return the reference code's gradient, differentiable again. Under ``torch.compile`` on a
CPU, no-grad ``fuse`` and ``blend`` calls run as the opaque operators ``efusion::fuse`` and
``efusion::blend`` (:mod:`.ops`); other compiled calls trace the reference code. Despite the
name the kernels run on any device (off the CPU without banding).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..._util import WeightParams, needs_grad
from ...depth import depth_plan
from ...presets import PRESETS, Preset
from ...reference.masks import fill_masked
from ...reference.measures import may_overflow
from .blend import Blender, FusionFunction, blend_fast, fuse_kernels, plan_arguments
from .ops import op_arguments, relative_code
from .pyramid import Workspace, band_rows
from .weights import WeightsFunction, raw_weights_into, weights_into

__all__ = ["BACKEND", "CpuBackend"]

_DTYPES = (torch.float32, torch.float64)
#: the number of frames the overflow bound assumes for fuse_frames, which learns it while streaming
_MANY_FRAMES = 1 << 16


def _functorch_wrapped(values) -> bool:
    """Whether a ``torch.func`` transform (grad, vmap, ...) wraps one of ``values``: those need the
    reference code's plain operations."""
    return any(isinstance(t, Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in values)


class CpuBackend:
    """The kernels as a backend (see the module docstring and :class:`efusion.backends.reference.ReferenceBackend`
    for the ops' signatures)."""

    name = "cpu"

    def accepts(self, op: str, stack: Tensor, inputs: tuple, *, preset: Preset, mask: Tensor | None = None) -> bool:
        # the kernels have no log-domain normalisation: exponents whose product may overflow run
        # the reference code
        # (inputs: weights (mask, c, s, e, mu, sigma), fuse (mask, c, s, e, mu, sigma, levels),
        # fuse_frames (c, s, e, mu, sigma, levels) with a number of frames not known in advance)
        if getattr(preset, "integer_samples", 0):
            return False  # integer frames' exact samples (Preset.integer_samples): the reference or native code
        if op in ("weights", "fuse", "fuse_frames"):
            exponents = inputs[1:3] if op != "fuse_frames" else inputs[0:2]
            frames = stack.shape[1] if op != "fuse_frames" else _MANY_FRAMES
            if len(exponents) == 2 and may_overflow(*exponents, frames, stack.dtype):
                return False
        if torch.compiler.is_compiling():
            # Inductor fuses the reference code well on GPUs and with gradients; without gradients on
            # a CPU the kernels as opaque operators run about twice as fast as the traced reference
            return (
                op in ("fuse", "blend") and stack.device.type == "cpu" and stack.dtype in _DTYPES
                and PRESETS.get(preset.name) == preset and not needs_grad(stack, *inputs)
            )
        # half precision keeps the reference path's float32 weights
        if stack.dtype not in _DTYPES or _functorch_wrapped((stack, *inputs)):
            return False
        if op in ("weights", "fuse") and needs_grad(mask):  # the mask gets no gradient here
            return False
        return not (op == "fuse_frames" and needs_grad(*inputs))  # autograd needs the frames stacked

    def weights(self, stack: Tensor, mask: Tensor | None, params: WeightParams, preset: Preset) -> Tensor:
        """:func:`efusion.reference.measures.fusion_weights` by :func:`.weights.weights_into` (of the
        stack with its masked pixels filled by :func:`~efusion.reference.masks.fill_masked`)."""
        if mask is not None:
            stack, mask = fill_masked(stack, mask, preset), mask.to(stack.dtype)
        if needs_grad(stack, *params):
            return WeightsFunction.apply(stack, mask, *params, preset)
        out = torch.empty_like(stack[:, :, :1])
        weights_into(stack, out, mask, *params, preset, Workspace(stack), band_rows(stack[:, 0].shape, stack.device))
        return out

    def blend(self, stack: Tensor, weights: Tensor, levels, preset: Preset, relative: bool | None) -> Tensor:
        """:func:`efusion.reference.blend.blend` by :func:`.blend.blend_fast` (or ``efusion::blend``)."""
        if torch.compiler.is_compiling():
            return torch.ops.efusion.blend(stack, weights, *op_arguments(levels), relative_code(relative), preset.name)
        return blend_fast(stack, weights, levels, preset, relative)

    def fuse(self, stack: Tensor, mask: Tensor | None, params: WeightParams, levels, preset: Preset,
             relative: bool | None) -> Tensor:
        """The reference weights and blend by the kernels (or ``efusion::fuse``), of the stack with
        its masked pixels filled by :func:`~efusion.reference.masks.fill_masked` (as the reference)."""
        if mask is not None:
            stack = fill_masked(stack, mask, preset)
        if torch.compiler.is_compiling():
            return torch.ops.efusion.fuse(stack, mask, *op_arguments(*params, levels), relative_code(relative), preset.name)
        mask = None if mask is None else mask.to(stack.dtype)
        plan = depth_plan(levels, stack.shape[-2], stack.shape[-1], preset, stack.dtype, stack.device, relative, sparse=True)
        if needs_grad(stack, *params, *plan[0], *plan[1]):
            vector, template = plan_arguments(plan)
            return FusionFunction.apply(stack, mask, *params, vector, template, preset)
        return fuse_kernels(stack, mask, params, plan, preset)

    def operator_samples(self) -> list:
        """``(operator, arguments)`` pairs for ``torch.library.opcheck`` of this backend's custom operators."""
        x = torch.rand(1, 3, 3, 9, 11, generator=torch.Generator().manual_seed(0))
        w = torch.rand(1, 3, 1, 9, 11, generator=torch.Generator().manual_seed(1))
        fuse_args = [x, None, *op_arguments(1.0, 1.0, 1.0, torch.tensor([0.4, 0.5, 0.6]), 0.2, 2.5), -1, "mertens"]
        blend_args = [x, w, *op_arguments(None), -1, "opencv"]
        return [(torch.ops.efusion.fuse.default, fuse_args), (torch.ops.efusion.blend.default, blend_args)]

    def fuse_frames(self, passes, first_pass, shape, weight_shape, dtype: torch.dtype, device, params: WeightParams, levels,
                    preset: Preset, masked: bool) -> Tensor | None:
        """:func:`efusion.fuse_frames`'s two passes over the frames (``[B, C, H, W]``).

        ``passes(out)`` yields ``(frame, mask, requires_grad)`` with each frame converted into
        ``out``; ``first_pass`` is the first such iteration, already started. Returns ``None``
        when a frame requires a gradient (the caller stacks the frames instead).
        """
        grad_enabled = torch.is_grad_enabled()
        ws = Workspace(torch.empty(0, dtype=dtype, device=device))
        rows = band_rows(shape, device)
        image, raw = ws.get("frame", shape), ws.get("raw", weight_shape)
        # pass 1: the normaliser, the sum over frames of the (masked) raw weights; also checks all frames
        total = torch.zeros(weight_shape, dtype=dtype, device=device)
        count = 0
        for frame, mask, requires_grad in first_pass(image):
            if grad_enabled and requires_grad:
                return None
            raw_weights_into(frame, raw, *params, preset, ws, rows)
            total.add_(raw if mask is None else raw.mul_(mask))
            count += 1
        if count == 1 and not masked:  # as exposure_fusion: the frame itself
            return image.clone()
        no_weight = None
        if masked:  # pixels no frame may contribute to get weight 0, as in normalise
            no_weight = torch.logical_not(total > 0)
            total.masked_fill_(no_weight, 1.0)
        # pass 2: each frame's normalised weights, then its weighted pyramid into the blend
        blender = Blender(shape, depth_plan(levels, shape[-2], shape[-1], preset, dtype, device, None), preset, ws)
        seen = 0
        for frame, mask, _ in passes(image):
            if seen == count:
                raise ValueError(f"frames gave {count} frames on the first pass and more on the second")
            raw_weights_into(frame, raw, *params, preset, ws, rows)
            if mask is not None:
                raw.mul_(mask)
            raw.div_(total)
            if no_weight is not None:
                raw.masked_fill_(no_weight, 0.0)
            blender.add(frame, raw)
            seen += 1
        if seen != count:
            raise ValueError(f"frames gave {count} frames on the first pass and {seen} on the second")
        return blender.result()


BACKEND: CpuBackend = CpuBackend()
