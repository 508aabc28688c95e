"""Blend kernels of the ``"cpu"`` backend: :func:`efusion.reference.blend.blend` streamed over frames
into reused buffers, band by band, with autograd functions whose backward is written by hand.

:class:`Blender` equals :func:`efusion.reference.blend.blend` without autograd;
:class:`BlendFunction` and :class:`FusionFunction` make the kernels differentiable (their
backward streams over frames too); when autograd records a backward (``create_graph=True``) they
return the reference code's gradient instead (:func:`efusion.backends.gradients.reference_gradients`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor

from ..._util import WeightParams, is_one, is_zero, needs_grad, present, scale_
from ...depth import depth_plan
from ...presets import Preset
from ...reference.blend import blend as reference_blend
from ...reference.measures import fusion_weights
from ...reference.pyramid import pyr_up
from ..gradients import reference_gradients
from .pyramid import (
    Workspace,
    accumulate_band_into,
    add_down_adjoint_band_into,
    add_down_adjoint_into,
    add_up_into,
    band_rows,
    down_into,
    laplacian_dot_band_into,
    up_adjoint_into,
)
from .weights import WeightsBackward, weights_into


def fuse_kernels(stack5: Tensor, mask5: Tensor | None, params: WeightParams, plan, preset: Preset) -> Tensor:
    """Weights then blend by the kernels, no autograd."""
    ws = Workspace(stack5)
    weights5 = torch.empty_like(stack5[:, :, :1])
    weights_into(stack5, weights5, mask5, *params, preset, ws, band_rows(stack5[:, 0].shape, stack5.device))
    return blend_frames(stack5, weights5, plan, preset, ws)[0]


class Blender:
    """Equals :func:`efusion.reference.blend.blend` without autograd, fed one frame at a time (float32/float64).

    :meth:`add` takes a frame ``[B, C, H, W]`` and its weights ``[B, 1, H, W]``: per level, the
    next Gaussian level of both (reused buffers), then the weighted Laplacian level added into
    the blended pyramid. :meth:`result` collapses the blended pyramid in place; its finest level
    becomes the result. Memory: the blended pyramid plus one frame's pyramids, whatever N is.
    ``plan`` is :func:`depth_plan`'s ``(band, residual)`` coefficients; with ``keep`` the
    blended levels whose coefficient is a tensor are kept unscaled (their gradient needs them);
    with ``keep_pyramids`` each frame's Gaussian levels (image and weights) are kept for a
    backward pass, which then need not recompute them (memory: a third of the stack).
    """

    def __init__(self, shape: Sequence[int], plan, preset: Preset, ws: Workspace, keep: bool = False,
                 keep_pyramids: bool = False) -> None:
        self.preset, self.ws, self.keep = preset, ws, keep
        #: with ``keep_pyramids``, each frame's Gaussian levels 1.. of image and weights (for a backward)
        self.pyramids: list[tuple[list[Tensor], list[Tensor]]] | None = [] if keep_pyramids else None
        self.band_coef, self.residual_coef = plan
        self.shapes = _level_shapes(shape, len(self.band_coef))
        top = len(self.band_coef)
        self.bands: list[Tensor | None] = [None] * top
        self.residuals: list[Tensor | None] = [None] * top
        self.kept: dict[tuple[str, int], Tensor] = {}
        #: rows per band at each level (bands of about the same number of elements at every level)
        self.rows = [band_rows(shape, ws.device) for shape in self.shapes]

    def _accumulator(self, acc: list[Tensor | None], level: int) -> Tensor:
        value = acc[level]
        if value is None:
            value = acc[level] = torch.zeros(self.shapes[level], dtype=self.ws.dtype, device=self.ws.device)
        return value

    def add(self, image: Tensor, weight: Tensor) -> None:
        preset, ws = self.preset, self.ws
        top = len(self.band_coef)
        if self.pyramids is not None:
            self.pyramids.append(([], []))
        for level in range(top):
            rows = self.rows[level]
            coarser = coarser_weight = None
            if level < top - 1:
                if self.pyramids is None:  # reused from frame to frame
                    coarser, coarser_weight = _gaussian_buffers(ws, self.shapes, level + 1)
                else:  # this frame's own, kept for the backward
                    shape = self.shapes[level + 1]
                    coarser = image.new_empty(shape)
                    coarser_weight = image.new_empty((*shape[:-3], 1, shape[-2], shape[-1]))
                    self.pyramids[-1][0].append(coarser)
                    self.pyramids[-1][1].append(coarser_weight)
                down_into(image, coarser, preset.down_border, ws, rows)
                down_into(weight, coarser_weight, preset.down_border, ws, rows)
                if not is_zero(self.band_coef[level]):
                    accumulate_band_into(self._accumulator(self.bands, level), weight, image, coarser, preset, ws, rows)
            if not is_zero(self.residual_coef[level]):
                self._accumulator(self.residuals, level).addcmul_(weight, image)
            if coarser is not None and coarser_weight is not None:
                image, weight = coarser, coarser_weight

    def _level_sum(self, level: int) -> Tensor | None:
        terms = []
        for kind, acc, coefficient in (("band", self.bands, self.band_coef), ("residual", self.residuals, self.residual_coef)):
            value = acc[level]
            if value is None:
                continue
            if self.keep and isinstance(coefficient[level], Tensor):
                self.kept[(kind, level)] = value.clone()
            if not is_one(coefficient[level]):
                value.mul_(coefficient[level])
            terms.append(value)
        if not terms:
            return None
        return terms[0] if len(terms) == 1 else terms[0].add_(terms[1])

    def result(self) -> Tensor:
        result = self._level_sum(len(self.band_coef) - 1)
        for level in reversed(range(len(self.band_coef) - 1)):
            here = self._level_sum(level)
            if result is None:
                result = here
            elif here is None:
                result = pyr_up(result, self.shapes[level][-2:], self.preset)
            else:
                add_up_into(here, result, self.preset, self.ws, self.rows[level])
                result = here
        return present(result)


def _level_shapes(shape: Sequence[int], top: int) -> list[torch.Size]:
    """Shapes of ``top`` pyramid levels of a ``[..., H, W]`` tensor (each side halved, rounding up)."""
    shapes = [torch.Size(shape)]
    for _ in range(top - 1):
        *lead, h, w = shapes[-1]
        shapes.append(torch.Size([*lead, (h + 1) // 2, (w + 1) // 2]))
    return shapes


def _gaussian_buffers(ws: Workspace, shapes: list[torch.Size], level: int) -> tuple[Tensor, Tensor]:
    """Reused buffers for a frame's Gaussian level and its weights' (``[B, C, h, w]``, ``[B, 1, h, w]``)."""
    shape = shapes[level]
    return ws.get(f"gauss{level}", shape), ws.get(f"weight{level}", (*shape[:-3], 1, shape[-2], shape[-1]))


def blend_fast(stack: Tensor, weights: Tensor, levels, preset: Preset, relative: bool | None) -> Tensor:
    """Equals :func:`efusion.reference.blend.blend` by the kernels: directly, or through :class:`BlendFunction` for autograd."""
    plan = depth_plan(levels, stack.shape[-2], stack.shape[-1], preset, stack.dtype, stack.device, relative, sparse=True)
    if needs_grad(stack, weights, *plan[0], *plan[1]):
        return BlendFunction.apply(stack, weights, *plan_arguments(plan), preset)
    return blend_frames(stack, weights, plan, preset, Workspace(stack))[0]


def plan_arguments(plan) -> tuple[Tensor | None, tuple]:
    """A depth plan as autograd-function arguments: its tensor coefficients stacked (or ``None``),
    and the plan with ``None`` in their places (see :func:`fill_plan`)."""
    coefficients = [c for part in plan for c in part if isinstance(c, Tensor)]
    vector = torch.stack(coefficients) if coefficients else None
    template = tuple([None if isinstance(c, Tensor) else c for c in part] for part in plan)
    return vector, template


def blend_frames(stack: Tensor, weights: Tensor, plan, preset: Preset, ws: Workspace, keep: bool = False,
                  keep_pyramids: bool = False) -> tuple:
    """The blend of all frames, the kept blended levels and frame pyramids (see :class:`Blender`)."""
    blender = Blender(stack[:, 0].shape, plan, preset, ws, keep, keep_pyramids)
    for n in range(stack.shape[1]):
        blender.add(stack[:, n], weights[:, n])
    return blender.result(), blender.kept, blender.pyramids


def fill_plan(template, vector: Tensor | None):
    """Put the tensor coefficients (views of ``vector``) back into the template's ``None`` slots."""
    if vector is None:  # no tensor coefficients: the template is the plan
        return tuple(list(part) for part in template)
    entries = iter(range(vector.shape[0]))
    return tuple([vector[next(entries)] if c is None else c for c in part] for part in template)


class BlendFunction(torch.autograd.Function):
    """The kernels' blend as an autograd function; the backward streams over frames too.

    ``apply(stack, weights, coefficients, template, preset)``: ``coefficients`` holds the tensor
    entries of the depth plan (a differentiable depth), ``template`` the plan with ``None``
    where they go. Backward, with ``g_0`` the output gradient and ``g_{l+1} = U^T g_l`` (U: the
    upsampling of level l + 1 to level l, D: the downsampling):

    - coefficient of level l's band (residual): ``sum(g_l * B_l)`` (``sum(g_l * R_l)``);
    - per frame, with its Gaussian pyramids ``G_l`` and ``w_l`` kept by the forward (a third of
      the stack's memory; recomputing them would cost a third of the forward), coarse to fine:
      weights ``h_l = sum_c(band_l g_l (G_l - U G_{l+1}) + residual_l g_l G_l) + D^T h_{l+1}``,
      image ``q_l = dLap_l + residual_l w_l g_l + D^T (q_{l+1} - U^T dLap_l)`` with
      ``dLap_l = band_l w_l g_l``; ``h_0`` and ``q_0`` are the frame's gradients.

    When autograd records the backward (``create_graph=True``) it is the reference code's
    gradient instead (:func:`efusion.backends.gradients.reference_gradients`), differentiable again.
    """

    @staticmethod
    def forward(ctx, stack, weights, vector, template, preset):
        plan = fill_plan(template, vector)
        keep = vector is not None and vector.requires_grad
        ws = Workspace(stack)
        result, kept, pyramids = blend_frames(stack, weights, plan, preset, ws, keep, keep_pyramids=True)
        ctx.template, ctx.preset, ctx.ws, ctx.pyramids = template, preset, ws, pyramids
        ctx.kept_keys = list(kept)
        ctx.save_for_backward(stack, weights, vector, *kept.values())
        return result

    @staticmethod
    def backward(ctx, grad):
        stack, weights, vector, *kept_values = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            plan = fill_plan(ctx.template, vector)
            grads = reference_gradients(lambda: reference_blend(stack, weights, None, ctx.preset, plan=plan),
                                        [stack, weights, vector], ctx.needs_input_grad[:3], grad)
            return (*grads, None, None)
        kept = dict(zip(ctx.kept_keys, kept_values))
        needs_stack, needs_weights, needs_vector = ctx.needs_input_grad[:3]
        return _blend_backward(grad, stack, weights, vector, ctx.template, kept, ctx.preset,
                               needs_stack, needs_weights, needs_vector, ctx.pyramids, ctx.ws) + (None, None)


class FusionFunction(torch.autograd.Function):
    """:func:`efusion.exposure_fusion` (reference: :func:`efusion.reference.measures.fusion_weights` then :func:`efusion.reference.blend.blend`) by the kernels as one autograd function (one gradient buffer).

    ``apply(stack, mask, contrast, saturation, exposure, mu, sigma, coefficients, template,
    preset)``; backward: :class:`BlendFunction`'s, then :class:`WeightsFunction`'s with the
    weights' gradient, added into the same stack gradient; the reference code's gradient when
    autograd records the backward (``create_graph=True``, for second derivatives).
    """

    @staticmethod
    def forward(ctx, stack, mask, contrast, saturation, exposure, mu, sigma, vector, template, preset):
        params = (contrast, saturation, exposure, mu, sigma)
        ws = Workspace(stack)
        weights = torch.empty_like(stack[:, :, :1])
        total = torch.empty_like(weights[:, :1])
        weights_into(stack, weights, mask, *params, preset, ws, band_rows(stack[:, 0].shape, stack.device), total)
        keep = vector is not None and vector.requires_grad
        result, kept, pyramids = blend_frames(stack, weights, fill_plan(template, vector), preset, ws, keep,
                                               keep_pyramids=True)
        ctx.template, ctx.preset, ctx.kept_keys = template, preset, list(kept)
        ctx.ws, ctx.pyramids = ws, pyramids
        ctx.numbers = [None if isinstance(p, Tensor) else p for p in params]
        tensors = [p if isinstance(p, Tensor) else None for p in params]
        ctx.save_for_backward(stack, mask, weights, total, vector, *tensors, *kept.values())
        return result

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        stack, mask, weights, total, vector, *rest = ctx.saved_tensors
        tensors, kept_values = rest[:5], rest[5:]
        params = cast(WeightParams, tuple(t if t is not None else number for t, number in zip(tensors, ctx.numbers)))
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True
            plan = fill_plan(ctx.template, vector)

            def reference() -> Tensor:
                return reference_blend(stack, fusion_weights(stack, mask, *params, ctx.preset), None, ctx.preset, plan=plan)

            grads = reference_gradients(reference, [stack, mask, *params, vector], needs[:8], grad)
            return (*grads, None, None)
        needs_stack, params_need_grad, needs_vector = needs[0], needs[2:7], needs[7]
        needs_weights = needs_stack or any(params_need_grad)
        grad_stack = torch.empty_like(stack) if needs_stack else None
        weights_grad = None
        if needs_weights:  # fed the weights' gradient band by band by the blend's backward
            weights_grad = WeightsBackward(stack, mask, weights, total, params, ctx.preset, needs_stack,
                                           params_need_grad, grad_stack, ctx.ws)
        grad_stack, _, grad_vector = _blend_backward(
            grad, stack, weights, vector, ctx.template, dict(zip(ctx.kept_keys, kept_values)), ctx.preset,
            needs_stack, needs_weights, needs_vector, ctx.pyramids, ctx.ws, weights_grad, grad_stack,
        )
        param_grads = weights_grad.result()[1:] if weights_grad is not None else [None] * 5
        return (grad_stack, None, *param_grads, grad_vector, None, None)


def _blend_backward(grad, stack, weights, vector, template, kept, preset, needs_stack, needs_weights, needs_vector,
                    pyramids, ws: Workspace, weights_grad: WeightsBackward | None = None, grad_stack: Tensor | None = None):
    """Gradients of the blend (see :class:`BlendFunction`), from each frame's Gaussian pyramids
    as the forward kept them (``pyramids``), with the forward's workspace.

    Returns ``(grad_stack, grad_weights, grad_vector)``. With ``weights_grad`` the weights'
    gradient is not returned but handed to it band by band (:class:`~efusion.backends.cpu.weights.WeightsBackward`):
    the finest level's ``h_0`` of every frame is made one band of rows at a time, from each
    frame's ``h_1`` (kept, a quarter of a frame's weights), and backpropagated while in cache
    instead of being written out whole and read back. ``grad_stack`` (uninitialised) is the
    buffer to write the stack's gradient into (else a new one).
    """
    band_coef, residual_coef = fill_plan(template, vector)
    top = len(band_coef)
    shapes = _level_shapes(stack[:, 0].shape, top)
    rows = [band_rows(shape, stack.device) for shape in shapes]
    mode = preset.down_border
    # the output gradient's pyramid: g_l is the gradient of blended level l
    g = [grad.contiguous()]
    for level in range(1, top):
        g.append(torch.empty(shapes[level], dtype=stack.dtype, device=stack.device))
        up_adjoint_into(g[level - 1], g[level], preset, ws, rows[level - 1])
    grad_vector = None
    if needs_vector:
        sums = {key: (g[key[1]] * value).sum() for key, value in kept.items()}
        entries = [sums.get((kind, level), torch.zeros((), dtype=stack.dtype, device=stack.device))
                   for kind, part in (("band", template[0]), ("residual", template[1]))
                   for level, c in enumerate(part) if c is None]
        grad_vector = torch.stack(entries).to(vector.dtype)
    if needs_stack and grad_stack is None:
        grad_stack = torch.empty_like(stack)
    grad_weights = torch.empty_like(weights) if needs_weights and weights_grad is None else None
    h_finest = weights_grad is None  # whether each frame's loop makes h_0 itself
    h1_kept: list[Tensor | None] = []  # each frame's h_1, for the band-by-band h_0

    for n in range(stack.shape[1]):
        images, frame_weights = [stack[:, n], *pyramids[n][0]], [weights[:, n], *pyramids[n][1]]
        h_coarser = q_coarser = None
        for level in reversed(range(top)):
            band = level < top - 1 and not is_zero(band_coef[level])
            residual = not is_zero(residual_coef[level])
            image, weight = images[level], frame_weights[level]
            if needs_weights and (level > 0 or h_finest):
                if level == 0:
                    h = present(grad_weights)[:, n]
                elif level == 1 and not h_finest:
                    h = weight.new_empty(weight.shape)
                else:
                    h = ws.get(f"h{level}", weight.shape)
                _h_level_into(h, g[level], image, images[level + 1] if band else None, h_coarser,
                              band_coef[level] if band else 0, residual_coef[level], preset, ws, rows[level])
                h_coarser = h
            if needs_stack:
                q = present(grad_stack)[:, n] if level == 0 else ws.get(f"q{level}", image.shape)
                if band:
                    scale_(torch.mul(weight, g[level], out=q), band_coef[level])  # dLap
                    if q_coarser is not None:
                        projected = ws.get("projected", q_coarser.shape)
                        up_adjoint_into(q, projected, preset, ws, rows[level])
                        q_coarser.sub_(projected)
                else:
                    q.zero_()
                if residual:
                    q.add_(scale_(weight * g[level], residual_coef[level]))
                if q_coarser is not None:
                    add_down_adjoint_into(q, q_coarser, mode, ws, rows[level])
                q_coarser = q
        h1_kept.append(h_coarser if needs_weights and top > 1 and not h_finest else None)

    if needs_weights and weights_grad is not None:  # h_0 band by band (not h_finest)
        band = top > 1 and not is_zero(band_coef[0])
        height = shapes[0][-2]
        step = weights_grad.rows
        for r0 in range(0, height, step):
            r1 = min(r0 + step, height)
            shape = list(weights.shape)
            shape[-2] = r1 - r0
            h = ws.get("h0_band", shape)
            for n in range(stack.shape[1]):
                _h_band_into(h[:, n], g[0], stack[:, n], pyramids[n][0][0] if band else None, h1_kept[n],
                             band_coef[0] if band else 0, residual_coef[0], r0, preset, ws)
            weights_grad.band(h, r0, r1)
    return grad_stack, grad_weights, grad_vector


def _h_level_into(h: Tensor, g: Tensor, image: Tensor, coarser: Tensor | None, h_coarser: Tensor | None,
                  band_coef, residual_coef, preset: Preset, ws: Workspace, rows: int) -> None:
    """One frame's weights gradient at one level, :func:`_h_band_into` for each band of ``rows`` rows."""
    height = image.shape[-2]
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        _h_band_into(h[..., r0:r1, :], g, image, coarser, h_coarser, band_coef, residual_coef, r0, preset, ws)


def _h_band_into(h: Tensor, g: Tensor, image: Tensor, coarser: Tensor | None, h_coarser: Tensor | None,
                 band_coef, residual_coef, r0: int, preset: Preset, ws: Workspace) -> None:
    """Rows ``[r0, r0 + k)`` (r0 even) of one frame's weights gradient at one level into
    ``h [..., 1, k, W]`` (see :class:`BlendFunction`):
    ``h = band_coef sum_c(g (image - U coarser)) + residual_coef sum_c(g image) + D^T h_coarser``,
    where ``coarser`` is ``None`` if the level has no band and ``h_coarser`` if it is the coarsest.
    """
    r1 = r0 + h.shape[-2]
    if coarser is not None:
        laplacian_dot_band_into(h, g, image, coarser, r0, r1, preset, ws)
        scale_(h, band_coef)
    else:
        h.zero_()
    if not is_zero(residual_coef):
        h.add_(scale_((image[..., r0:r1, :] * g[..., r0:r1, :]).sum(dim=-3, keepdim=True), residual_coef))
    if h_coarser is not None:
        add_down_adjoint_band_into(h, h_coarser, r0, image.shape[-2], preset.down_border, ws)


