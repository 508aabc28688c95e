"""Exposure fusion: Laplacian-pyramid blending of frames by weight maps, and the Mertens layer.

Mertens, Kautz & Van Reeth, "Exposure Fusion", Pacific Graphics 2007, Section 3.2
(multiresolution blending), doi:10.1109/PG.2007.17; reference code ``exposure_fusion.m``.

Pyramid depth
-------------
``levels`` counts pyramid levels in total, the last being the Gaussian residual (Mertens'
convention): 1 is a plain per-pixel weighted average, the automatic depth is the preset's
maximum, ``floor(log2(min(H, W)))`` for ``"mertens"``. A depth larger than an image allows is
clamped to that image's maximum. A negative depth counts from the maximum, as enfuse does
(-1 = the maximum, -2 = one level fewer), so a learned relative depth carries over to images of
other sizes as "so many levels short of full depth"; a positive one as an absolute count.

A non-integer depth ``L = k + t`` interpolates linearly between the results at depths ``k`` and
``k + 1``: ``(1 - t) R(k) + t R(k + 1)``. Both share their first ``k - 1`` band-pass levels, so
this costs one pyramid: level ``k - 1`` contributes ``t`` times its band plus ``1 - t`` times its
Gaussian residual, and level ``k`` ``t`` times its residual. An integer reproduces the discrete
result exactly. The gradient with respect to a tensor depth is ``R(k + 1) - R(k)``, one-sided at
integers (from above, and from below at the maximum), so a learnable depth sitting on an integer
still moves; outside ``[1, max]`` the value is clamped but the gradient of the nearest valid
segment is kept, so an optimiser can bring it back.

Implementations
---------------
The functions of this module run one of two implementations of the same computation:

- the *reference code* (:func:`_blend_5d`, ``efusion.weights._raw_weights``): plain tensor
  operations, differentiable by autograd to any order. It runs under ``torch.compile`` (except
  no-grad CPU calls, below), under ``torch.func`` transforms, in float16/bfloat16, and whenever
  ``efusion.pyramid.USE_KERNELS`` is False.
- the *kernels* (:mod:`efusion.pyramid`, :mod:`efusion.weights`): eager float32/float64 calls. They
  write into reused buffers, one band of rows at a time, one frame at a time; results agree with
  the reference to rounding (weights with exponents 1 bit for bit). Under autograd they run inside
  autograd functions (:class:`_FusionFunction`, :class:`_BlendFunction`,
  ``efusion.weights.WeightsFunction``) whose backward is written by hand and streams over frames
  too. When autograd records the backward (``create_graph=True``: second derivatives, gradient
  penalties, ``gradgradcheck``) they compute the reference code's gradient instead, recomputed from
  their saved inputs, which is differentiable again (at the reference path's cost). Under
  ``torch.compile`` on a CPU, no-grad calls reach the kernels through the opaque operators
  ``efusion::fuse`` and ``efusion::blend``.

:func:`fuse_frames` is the kernels' streaming entry point: frames converted one at a time, memory
independent of their number.
"""
from __future__ import annotations

import itertools
import math
import numbers
import warnings
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _checks
from .presets import PRESETS, Preset, get_preset
from .pyramid import (
    Workspace,
    accumulate_band_into,
    add_down_adjoint_band_into,
    add_down_adjoint_into,
    add_up_into,
    band_rows,
    down_into,
    laplacian_dot_band_into,
    pyr_down,
    pyr_up,
    needs_grad,
    reference_gradients,
    up_adjoint_into,
    use_kernels,
)
from .weights import (
    ParamLike,
    _is_one,
    _is_zero,
    _reference_weights,
    _scale_,
    check_params,
    raw_weights_into,
    weights_5d,
    WeightsBackward,
    weights_into,
)

__all__ = ["blend", "exposure_fusion", "fuse_frames", "Fusion", "LEARNABLE_DEFAULT"]

Coefficient = float | Tensor


def _depth_plan(
    levels, height: int, width: int, preset: Preset, dtype: torch.dtype, device: torch.device, relative: bool | None,
    sparse: bool = False,
) -> tuple[list[Coefficient], list[Coefficient]]:
    """Per-level coefficients ``(band, residual)`` of the collapse (see module docstring).

    The result is ``sum_l up^l(band_l * B_l + residual_l * G_l)`` where ``B_l`` is the blended
    band-pass level and ``G_l`` the blended Gaussian level. Python zeros mark skipped terms.

    A tensor depth gives tensor coefficients for every level, computed without reading the
    depth (no host-device sync, one graph for ``torch.compile``). With ``sparse`` and a CPU
    tensor, the depth is read and only the three coefficients that depend on it stay tensors
    (the others are constants 0 and 1, exactly their dense values, with zero gradient), and the
    levels past the depth are dropped: the same result and gradients for much less work.
    """
    maximum = preset.max_levels(height, width)
    if levels is None:
        levels = maximum
    if isinstance(levels, numbers.Real):
        depth = float(levels) if levels >= 1 else maximum + 1 + float(levels)
        depth = min(max(depth, 1.0), float(maximum))
        k = int(math.floor(depth))
        t = depth - k
        top = k + 1 if t > 0 else k
        band: list[Coefficient] = [1.0 if l < k - 1 else 0.0 for l in range(top)]
        residual: list[Coefficient] = [0.0] * top
        if t > 0:
            band[k - 1], residual[k - 1], residual[k] = t, 1.0 - t, t
        else:
            residual[k - 1] = 1.0
        return band, residual
    if maximum == 1:  # a single level: the depth has nothing to choose
        return [0.0], [1.0]
    value = levels.to(device=device, dtype=dtype)
    if relative is None:
        depth = torch.where(value < 0, value + (maximum + 1), value)
    else:
        depth = value + (maximum + 1) if relative else value
    k = depth.detach().floor().clamp(1, maximum - 1)
    t = depth - k
    t = t + (t.clamp(0.0, 1.0) - t).detach()  # clamped value, gradient of the nearest segment
    if sparse and depth.device.type == "cpu":
        k_value = int(k)
        band_sparse: list[Coefficient] = [1.0] * (k_value - 1) + [t, 0.0]
        residual_sparse: list[Coefficient] = [0.0] * (k_value - 1) + [1.0 - t, t]
        return band_sparse, residual_sparse
    level = torch.arange(maximum, device=device, dtype=dtype)
    at_k_minus_1 = (level == k - 1).to(dtype)
    band_t = (level < k - 1).to(dtype) + t * at_k_minus_1
    residual_t = (1.0 - t) * at_k_minus_1 + t * (level == k).to(dtype)
    band_list: list[Coefficient] = [band_t[l] for l in range(maximum - 1)] + [0.0]
    return band_list, [residual_t[l] for l in range(maximum)]


def _scaled(coefficient: Coefficient, x: Tensor) -> Tensor:
    return x if _is_one(coefficient) else coefficient * x


def _blend_5d(stack: Tensor, weights: Tensor, levels, preset: Preset, relative: bool | None = None,
              plan=None) -> Tensor:
    """Blend a validated ``[B, N, C, H, W]`` stack by ``[B, N, 1, H, W]`` weights -> ``[B, C, H, W]``.

    Streams over frames: one frame's pyramids exist at a time, added into the blended pyramid.
    ``plan``: :func:`_depth_plan`'s coefficients, instead of ``levels`` and ``relative``.
    """
    _, frames, _, height, width = stack.shape
    band_coef, residual_coef = plan or _depth_plan(levels, height, width, preset, stack.dtype, stack.device, relative)
    top = len(band_coef)
    bands: list[Tensor | None] = [None] * top
    residuals: list[Tensor | None] = [None] * top

    def add(acc: list[Tensor | None], level: int, value: Tensor) -> None:
        acc[level] = value if acc[level] is None else acc[level] + value

    for n in range(frames):
        image, weight = stack[:, n], weights[:, n]
        for level in range(top):
            needs_band = not _is_zero(band_coef[level])
            coarser = pyr_down(image, preset) if level < top - 1 else None
            if needs_band:
                add(bands, level, weight * (image - pyr_up(coarser, image.shape[-2:], preset)))
            if not _is_zero(residual_coef[level]):
                add(residuals, level, weight * image)
            if coarser is not None:
                image, weight = coarser, pyr_down(weight, preset)

    def level_sum(level: int) -> Tensor | None:
        terms = []
        if bands[level] is not None:
            terms.append(_scaled(band_coef[level], bands[level]))
        if residuals[level] is not None:
            terms.append(_scaled(residual_coef[level], residuals[level]))
        return None if not terms else terms[0] if len(terms) == 1 else terms[0] + terms[1]

    result = level_sum(top - 1)
    sizes = [(height, width)]
    for _ in range(top - 1):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    for level in reversed(range(top - 1)):
        upsampled = pyr_up(result, sizes[level], preset) if result is not None else None
        here = level_sum(level)
        result = here if upsampled is None else upsampled if here is None else here + upsampled
    return result


def blend(
    stack: Tensor | Sequence[Tensor],
    weights: Tensor,
    *,
    levels: float | Tensor | None = None,
    preset: str | Preset = "mertens",
) -> Tensor:
    """Blend frames with weight maps in a Laplacian pyramid (Mertens et al. 2007, Section 3.2).

    Each frame's Laplacian pyramid is multiplied by the Gaussian pyramid of its weight map, the
    products are summed over frames and the result collapsed. Weights are used as given: pass
    maps that sum to 1 over frames (e.g. :func:`mertens_weights` or a softmax) for a convex blend.

    Args:
        stack: frames ``[N, C, H, W]`` or ``[B, N, C, H, W]`` (or a list of ``[C, H, W]``), float.
        weights: ``[N, 1, H, W]`` or ``[B, N, 1, H, W]``, matching the stack.
        levels: pyramid depth: ``None`` (the preset's maximum), a number >= 1, a number <= -1
            (counted from the maximum), or a 0-dim tensor (differentiable); non-integers
            interpolate between depths (see the module docstring).
        preset: ``"mertens"`` (default) or ``"opencv"``: pyramid borders and maximum depth.

    Returns:
        the blended image ``[C, H, W]`` or ``[B, C, H, W]``, not clamped.
    """
    stack5, unbatched = _checks.as_stack(stack)
    weights5 = _checks.as_weights(weights, stack5, unbatched).to(stack5.dtype)
    _checks.check_levels(levels)
    preset = get_preset(preset)
    if _compiled_op_applies(stack5, weights5, levels, preset=preset):
        result = torch.ops.efusion.blend(stack5, weights5, *_op_arguments(levels), -1, preset.name)
    elif use_kernels(stack5, weights5, levels):
        result = _blend_fast(stack5, weights5, levels, preset, None)
    else:
        result = _blend_5d(stack5, weights5, levels, preset)
    return result.squeeze(0) if unbatched else result


def exposure_fusion(
    stack: Tensor | Sequence[Tensor],
    *,
    contrast: ParamLike = 1.0,
    saturation: ParamLike = 1.0,
    exposure: ParamLike = 1.0,
    mu: ParamLike = 0.5,
    sigma: ParamLike = 0.2,
    levels: float | Tensor | None = None,
    preset: str | Preset = "mertens",
    mask: Tensor | None = None,
) -> Tensor:
    """Fuse differently exposed frames into one image (Mertens, Kautz & Van Reeth 2007).

    ``blend(stack, mertens_weights(stack, ...), levels=levels)``. With the defaults it
    reproduces Mertens' ``exposure_fusion(I, [1 1 1])``; ``preset="opencv"`` reproduces
    ``cv2.createMergeMertens(contrast, saturation, exposure).process``.

    Args:
        stack: frames ``[N, C, H, W]`` or ``[B, N, C, H, W]`` (or a list of ``[C, H, W]``),
            float in [0, 1]; C = 3 (RGB) or 1 (gray: the saturation measure is off). Frame
            order does not matter. Non-finite values are not checked (that would need a
            host-device sync): they propagate to the output through the pyramid.
        contrast, saturation, exposure: exponents >= 0 of the three measures (0 switches a
            measure off), numbers or 0-dim tensors (tensors carry gradients).
        mu, sigma: centre and width (> 0) of the well-exposedness Gaussian, per channel and
            multiplied over channels; numbers, or one value per channel as a list or a tensor
            (tensors, also 0-dim, carry gradients).
        levels: pyramid depth, see :func:`blend`.
        preset: ``"mertens"`` (default) or ``"opencv"``.
        mask: optional, broadcastable to ``[..., N, 1, H, W]``: multiplies the weights before
            normalisation (0 excludes a frame at a pixel: padding frames, alpha, ghost masks).

    Returns:
        fused image ``[C, H, W]`` or ``[B, C, H, W]``, not clamped (Mertens fusion can leave
        [0, 1] slightly; clamp or normalise for display).

    Memory: besides the stack, N weight maps (a third of a float RGB stack) and about 4/3 of
    the output; :func:`fuse_frames` streams frames instead, for memory independent of N.
    Gradients of any order (second ones by the reference code; see the module's "Implementations").

    Example:
        >>> stack = torch.rand(3, 3, 32, 48)      # N=3 RGB frames in [0, 1]
        >>> exposure_fusion(stack).shape            # [C, H, W]
        torch.Size([3, 32, 48])
    """
    stack5, unbatched = _checks.as_stack(stack)
    preset = get_preset(preset)
    mu, sigma = check_params(contrast, saturation, exposure, mu, sigma, stack5.shape[2])
    _checks.check_levels(levels)
    mask5 = _checks.as_mask(mask, stack5, unbatched)
    result = _fuse_5d(stack5, mask5, contrast, saturation, exposure, mu, sigma, levels, preset, None)
    return result.squeeze(0) if unbatched else result


FrameSource = Union[Sequence[Tensor], Tensor, Callable[[], Iterable[Tensor]]]

#: integer frame dtypes :func:`fuse_frames` converts, with the value that maps to 1.0
_INTEGER_RANGES = {torch.uint8: 255.0, torch.uint16: 65535.0}


def fuse_frames(
    frames: FrameSource,
    *,
    contrast: ParamLike = 1.0,
    saturation: ParamLike = 1.0,
    exposure: ParamLike = 1.0,
    mu: ParamLike = 0.5,
    sigma: ParamLike = 0.2,
    levels: float | Tensor | None = None,
    preset: str | Preset = "mertens",
    masks: FrameSource | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """:func:`exposure_fusion` streamed over frames: memory does not grow with their number.

    Frames are converted to float one at a time, when they are used, and read twice: a first
    pass sums the unnormalised weights of all frames, a second one recomputes each frame's
    weights, normalises them and adds the frame's weighted Laplacian pyramid into the blended
    pyramid (Mertens et al. 2007, Section 3.2, weights normalised before blending). Besides
    the frames themselves, memory holds one frame as float, two weight maps and the blended
    pyramid (about 4/3 of the output), for any N. The price is computing the weights twice.

    Results equal ``exposure_fusion(torch.stack(converted frames), ...)`` to rounding. Under
    autograd (a frame or parameter requiring a gradient) or ``torch.compile`` the converted
    frames are stacked and passed to :func:`exposure_fusion`, which then holds all of them.

    Args:
        frames: the exposures, each ``[C, H, W]`` or ``[B, C, H, W]`` (all the same shape;
            C = 3 RGB or 1 gray), as a list or tuple of tensors, a tensor ``[N, ...]``, or a
            function returning a fresh iterable of frames each time it is called (e.g. one that
            decodes files; it is called twice). Integer frames are scaled to [0, 1]: uint8 by
            1/255, uint16 by 1/65535 (divided, as MATLAB's ``im2double``; with
            ``preset="opencv"`` in float32, multiplied by the float32 reciprocal, as OpenCV's
            ``convertTo``). Float frames are taken as they are, in [0, 1].
        contrast, saturation, exposure, mu, sigma, levels, preset: as in :func:`exposure_fusion`.
        masks: optional, one per frame (same container kind as ``frames``), each broadcastable
            to ``[1, H, W]`` (``[B, 1, H, W]`` for batched frames); they multiply the weights
            before normalisation (0 excludes a pixel of that frame), values taken as they are.
        dtype: float32 or float64, the precision of the computation and of the result; by
            default float64 for float64 frames and float32 otherwise.

    Returns:
        fused image ``[C, H, W]`` (or ``[B, C, H, W]``), not clamped.

    Example:
        >>> frames = [torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8) for _ in range(3)]
        >>> fuse_frames(frames).shape                     # 8-bit RGB frames in, float out
        torch.Size([3, 32, 48])
    """
    preset = get_preset(preset)
    read_frames = _frame_reader(frames, "frames")
    read_masks = None if masks is None else _frame_reader(masks, "masks")
    _checks.check_levels(levels)
    source = iter(read_frames())
    first = _check_frame(next(source, None), 0, None)
    mu, sigma = check_params(contrast, saturation, exposure, mu, sigma, first.shape[-3])
    if dtype is None:
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    unbatched = first.dim() == 3
    shape = (1, *first.shape) if unbatched else tuple(first.shape)
    weight_shape = (shape[0], 1, *shape[-2:])
    params = (contrast, saturation, exposure, mu, sigma)

    def passes(out: Tensor | None = None, frames_iter=None):
        """The frames (checked, as float ``[B, C, H, W]``, into ``out`` when given) with their masks."""
        frames_iter = read_frames() if frames_iter is None else frames_iter
        masks_iter = iter(read_masks()) if read_masks is not None else None
        for i, frame in enumerate(frames_iter):
            _check_frame(frame, i, first)
            mask = None
            if masks_iter is not None:
                mask = next(masks_iter, None)
                if mask is None:
                    raise ValueError(f"masks has {i} entries for more frames")
                mask = _check_frame_mask(mask, i, weight_shape, dtype)
            yield _to_unit_float(frame.reshape(shape), dtype, preset, out), mask, frame.requires_grad
        if masks_iter is not None and next(masks_iter, None) is not None:
            raise ValueError("masks has more entries than frames")

    def through_exposure_fusion() -> Tensor:
        """Autograd, torch.compile: stack the frames and let exposure_fusion do the rest."""
        stack, masks_, _ = zip(*passes())
        mask5 = None if masks is None else torch.stack(torch.broadcast_tensors(*masks_), dim=1)
        result = _fuse_5d(torch.stack(stack, dim=1), mask5, *params, levels, preset, None)
        return result.squeeze(0) if unbatched else result

    grad_enabled = torch.is_grad_enabled()
    if (grad_enabled and first.requires_grad) or needs_grad(*params, levels) or not use_kernels(first.to(dtype)):
        return through_exposure_fusion()
    device = first.device
    ws = Workspace(torch.empty(0, dtype=dtype, device=device))
    rows = band_rows(shape, device)
    image, raw = ws.get("frame", shape), ws.get("raw", weight_shape)
    # pass 1: the normaliser, the sum over frames of the (masked) raw weights; also checks all frames
    total = torch.zeros(weight_shape, dtype=dtype, device=device)
    count = 0
    for frame, mask, requires_grad in passes(image, itertools.chain([first], source)):
        if grad_enabled and requires_grad:
            return through_exposure_fusion()
        raw_weights_into(frame, raw, *params, preset, ws, rows)
        total.add_(raw if mask is None else raw.mul_(mask))
        count += 1
    if count == 1 and masks is None:  # as exposure_fusion: the frame itself
        return _to_unit_float(first, dtype, preset)
    no_weight = None
    if masks is not None:  # pixels no frame may contribute to get weight 0, as in _normalise
        no_weight = torch.logical_not(total > 0)
        total.masked_fill_(no_weight, 1.0)
    # pass 2: each frame's normalised weights, then its weighted pyramid into the blend
    blender = _Blender(shape, _depth_plan(levels, *shape[-2:], preset, dtype, device, None), preset, ws)
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
    result = blender.result()
    return result.squeeze(0) if unbatched else result


def _frame_reader(frames, name: str) -> Callable[[], Iterable]:
    """A function returning a fresh iterable over ``frames`` each call (they are read twice)."""
    if callable(frames) and not isinstance(frames, Tensor):
        return frames
    if isinstance(frames, Tensor):
        if frames.dim() < 1:
            raise ValueError(f"{name} must be a tensor with frames along dim 0, got a 0-dim tensor")
        return lambda: frames.unbind(0)
    if isinstance(frames, (list, tuple)) or (hasattr(frames, "__len__") and hasattr(frames, "__getitem__")):
        return lambda: (frames[i] for i in range(len(frames)))
    raise TypeError(
        f"{name} must be a list of tensors, a tensor or a function returning an iterable of tensors, "
        f"got {type(frames).__name__} (a one-shot iterator cannot be read twice: wrap it in a function)"
    )


def _check_frame(frame, index: int, first: Tensor | None) -> Tensor:
    """Validate one frame (against the first one); return the first frame for the next checks."""
    if frame is None and index == 0:
        raise ValueError("frames has no frames: pass at least one [C, H, W] frame")
    if not isinstance(frame, Tensor):
        raise TypeError(f"frames[{index}] must be a torch.Tensor, got {type(frame).__name__}")
    if frame.dtype not in _INTEGER_RANGES and not frame.is_floating_point():
        raise TypeError(
            f"frames[{index}] has dtype {frame.dtype}: pass uint8 or uint16 frames (scaled to [0, 1]) "
            "or floating-point frames with values in [0, 1]"
        )
    if first is None:
        if frame.dim() not in (3, 4):
            raise ValueError(f"frames[{index}] must be [C, H, W] or [B, C, H, W], got shape {tuple(frame.shape)}")
        if frame.shape[-3] not in (1, 3):
            raise ValueError(f"frames must have C = 1 (gray) or 3 (RGB) channels, got C = {frame.shape[-3]} (shape {tuple(frame.shape)})")
        if frame.shape[-1] == 0 or frame.shape[-2] == 0:
            raise ValueError(f"frames are empty: H x W = {frame.shape[-2]} x {frame.shape[-1]}")
        return frame
    if frame.shape != first.shape:
        raise ValueError(f"frames differ in size: frames[0] is {tuple(first.shape)} but frames[{index}] is {tuple(frame.shape)}")
    if frame.device != first.device:
        raise ValueError(f"frames are on different devices: frames[0] on {first.device}, frames[{index}] on {frame.device}")
    return first


def _check_frame_mask(mask, index: int, weight_shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"masks[{index}] must be a torch.Tensor, got {type(mask).__name__}")
    try:
        shape = torch.broadcast_shapes(tuple(mask.shape), weight_shape)
    except RuntimeError:
        shape = None
    if shape != weight_shape:
        target = list(weight_shape[1:]) if len(mask.shape) <= 3 else list(weight_shape)
        raise ValueError(f"masks[{index}] of shape {list(mask.shape)} does not broadcast to a frame's weight shape {target}")
    return mask.to(dtype)


def _to_unit_float(frame: Tensor, dtype: torch.dtype, preset: Preset, out: Tensor | None = None) -> Tensor:
    """A frame as float in [0, 1], into ``out`` when given (see :func:`fuse_frames` for scales)."""
    if out is None:
        out = torch.empty(frame.shape, dtype=dtype, device=frame.device)
    out.copy_(frame)
    full_scale = _INTEGER_RANGES.get(frame.dtype)
    if full_scale is not None:
        if preset.name == "opencv" and dtype == torch.float32:
            out.mul_(float(torch.tensor(1.0 / full_scale, dtype=torch.float32)))  # convertTo(CV_32F, 1/255)
        else:
            out.div_(full_scale)  # im2double
    return out


def _fuse_5d(stack5, mask5, contrast, saturation, exposure, mu, sigma, levels, preset, relative) -> Tensor:
    if stack5.shape[1] == 1 and mask5 is None:
        return stack5[:, 0].clone()  # one frame: its weight is exactly 1 everywhere
    params = (contrast, saturation, exposure, mu, sigma)
    if _compiled_op_applies(stack5, mask5, *params, levels, preset=preset):
        return torch.ops.efusion.fuse(stack5, mask5, *_op_arguments(*params, levels), _relative_code(relative), preset.name)
    if use_kernels(stack5, mask5, *params, levels) and not needs_grad(mask5):
        mask5 = None if mask5 is None else mask5.to(stack5.dtype)
        plan = _depth_plan(levels, *stack5.shape[-2:], preset, stack5.dtype, stack5.device, relative, sparse=True)
        if needs_grad(stack5, *params, *plan[0], *plan[1]):
            vector, template = _plan_arguments(plan)
            return _FusionFunction.apply(stack5, mask5, *params, vector, template, preset)
        return _fuse_kernels(stack5, mask5, params, plan, preset)
    weights5 = weights_5d(stack5, mask5, contrast, saturation, exposure, mu, sigma, preset)
    return _blend_5d(stack5, weights5, levels, preset, relative)


def _fuse_kernels(stack5: Tensor, mask5: Tensor | None, params, plan, preset: Preset) -> Tensor:
    """Weights then blend by the kernels, no autograd."""
    ws = Workspace(stack5)
    weights5 = torch.empty_like(stack5[:, :, :1])
    weights_into(stack5, weights5, mask5, *params, preset, ws, band_rows(stack5[:, 0].shape, stack5.device))
    return _blend_frames(stack5, weights5, plan, preset, ws)[0]


# ----------------------------------------------------------------------------------------------
# torch.compile: on a CPU the kernels run as opaque operators inside the compiled graph
#
# Traced by Inductor, the reference code materialises most of its intermediate pyramid levels and
# runs about twice as long as the kernels (and takes a minute to compile at 12 MP), so no-grad CPU
# calls under ``torch.compile`` call the kernels through these operators (``fullgraph=True``
# works). Calls that need gradients, and other devices, are compiled from the reference code.


def _compiled_op_applies(stack: Tensor, *tensors, preset: Preset) -> bool:
    return (
        USE_COMPILED_KERNELS and torch.compiler.is_compiling() and stack.device.type == "cpu"
        and stack.dtype in (torch.float32, torch.float64) and PRESETS.get(preset.name) == preset
        and not needs_grad(stack, *tensors)
    )


#: set to False to let ``torch.compile`` trace the reference code on a CPU too (see above)
USE_COMPILED_KERNELS = True


def _op_arguments(*values) -> list:
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


def _relative_code(relative: bool | None) -> int:
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
    """:func:`exposure_fusion` of a validated ``[B, N, C, H, W]`` stack by the kernels."""
    preset_ = get_preset(preset)
    pairs = [(contrast, contrast_tensor), (saturation, saturation_tensor), (exposure, exposure_tensor),
             (mu, mu_tensor), (sigma, sigma_tensor)]
    params = tuple(_from_op(*pair) for pair in pairs)
    mask = None if mask is None else mask.to(stack.dtype)
    plan = _depth_plan(_from_op(levels, levels_tensor), *stack.shape[-2:], preset_, stack.dtype, stack.device,
                       _relative_from_code(relative), sparse=True)
    return _fuse_kernels(stack, mask, params, plan, preset_)


@_fuse_op.register_fake
def _(stack, mask, *args):
    return stack.new_empty((stack.shape[0], stack.shape[2], stack.shape[3], stack.shape[4]))


@torch.library.custom_op("efusion::blend", mutates_args=(), device_types="cpu")
def _blend_op(stack: Tensor, weights: Tensor, levels: float, levels_tensor: Optional[Tensor], relative: int,
              preset: str) -> Tensor:
    """:func:`blend` of a validated ``[B, N, C, H, W]`` stack by the kernels."""
    preset_ = get_preset(preset)
    plan = _depth_plan(_from_op(levels, levels_tensor), *stack.shape[-2:], preset_, stack.dtype, stack.device,
                       _relative_from_code(relative), sparse=True)
    return _blend_frames(stack, weights, plan, preset_, Workspace(stack))[0]


@_blend_op.register_fake
def _(stack, weights, *args):
    return stack.new_empty((stack.shape[0], stack.shape[2], stack.shape[3], stack.shape[4]))


# ----------------------------------------------------------------------------------------------
# The fast path: the same computation in preallocated buffers, band by band (efusion.pyramid)


class _Blender:
    """:func:`_blend_5d` without autograd, fed one frame at a time (float32/float64).

    :meth:`add` takes a frame ``[B, C, H, W]`` and its weights ``[B, 1, H, W]``: per level, the
    next Gaussian level of both (reused buffers), then the weighted Laplacian level added into
    the blended pyramid. :meth:`result` collapses the blended pyramid in place; its finest level
    becomes the result. Memory: the blended pyramid plus one frame's pyramids, whatever N is.
    ``plan`` is :func:`_depth_plan`'s ``(band, residual)`` coefficients; with ``keep`` the
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
        if acc[level] is None:
            acc[level] = torch.zeros(self.shapes[level], dtype=self.ws.dtype, device=self.ws.device)
        return acc[level]

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
                    coarser_weight = image.new_empty((*shape[:-3], 1, *shape[-2:]))
                    self.pyramids[-1][0].append(coarser)
                    self.pyramids[-1][1].append(coarser_weight)
                down_into(image, coarser, preset.down_border, ws, rows)
                down_into(weight, coarser_weight, preset.down_border, ws, rows)
                if not _is_zero(self.band_coef[level]):
                    accumulate_band_into(self._accumulator(self.bands, level), weight, image, coarser, preset, ws, rows)
            if not _is_zero(self.residual_coef[level]):
                self._accumulator(self.residuals, level).addcmul_(weight, image)
            image, weight = coarser, coarser_weight

    def _level_sum(self, level: int) -> Tensor | None:
        terms = []
        for kind, acc, coefficient in (("band", self.bands, self.band_coef), ("residual", self.residuals, self.residual_coef)):
            value = acc[level]
            if value is None:
                continue
            if self.keep and isinstance(coefficient[level], Tensor):
                self.kept[(kind, level)] = value.clone()
            if not _is_one(coefficient[level]):
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
        return result


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
    return ws.get(f"gauss{level}", shape), ws.get(f"weight{level}", (*shape[:-3], 1, *shape[-2:]))


def _blend_fast(stack: Tensor, weights: Tensor, levels, preset: Preset, relative: bool | None) -> Tensor:
    """:func:`_blend_5d` by the kernels: directly, or through :class:`_BlendFunction` for autograd."""
    plan = _depth_plan(levels, *stack.shape[-2:], preset, stack.dtype, stack.device, relative, sparse=True)
    if needs_grad(stack, weights, *plan[0], *plan[1]):
        return _BlendFunction.apply(stack, weights, *_plan_arguments(plan), preset)
    return _blend_frames(stack, weights, plan, preset, Workspace(stack))[0]


def _plan_arguments(plan) -> tuple[Tensor | None, tuple]:
    """A depth plan as autograd-function arguments: its tensor coefficients stacked (or ``None``),
    and the plan with ``None`` in their places (see :func:`_fill_plan`)."""
    coefficients = [c for part in plan for c in part if isinstance(c, Tensor)]
    vector = torch.stack(coefficients) if coefficients else None
    template = tuple([None if isinstance(c, Tensor) else c for c in part] for part in plan)
    return vector, template


def _blend_frames(stack: Tensor, weights: Tensor, plan, preset: Preset, ws: Workspace, keep: bool = False,
                  keep_pyramids: bool = False) -> tuple:
    """The blend of all frames, the kept blended levels and frame pyramids (see :class:`_Blender`)."""
    blender = _Blender(stack[:, 0].shape, plan, preset, ws, keep, keep_pyramids)
    for n in range(stack.shape[1]):
        blender.add(stack[:, n], weights[:, n])
    return blender.result(), blender.kept, blender.pyramids


def _fill_plan(template, vector: Tensor | None):
    """Put the tensor coefficients (views of ``vector``) back into the template's ``None`` slots."""
    entries = iter(range(0 if vector is None else vector.shape[0]))
    return tuple([vector[next(entries)] if c is None else c for c in part] for part in template)


class _BlendFunction(torch.autograd.Function):
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
    gradient instead (:func:`~efusion.pyramid.reference_gradients`), differentiable again.
    """

    @staticmethod
    def forward(ctx, stack, weights, vector, template, preset):
        plan = _fill_plan(template, vector)
        keep = vector is not None and vector.requires_grad
        ws = Workspace(stack)
        result, kept, pyramids = _blend_frames(stack, weights, plan, preset, ws, keep, keep_pyramids=True)
        ctx.template, ctx.preset, ctx.ws, ctx.pyramids = template, preset, ws, pyramids
        ctx.kept_keys = list(kept)
        ctx.save_for_backward(stack, weights, vector, *kept.values())
        return result

    @staticmethod
    def backward(ctx, grad):
        stack, weights, vector, *kept_values = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            plan = _fill_plan(ctx.template, vector)
            grads = reference_gradients(lambda: _blend_5d(stack, weights, None, ctx.preset, plan=plan),
                                        [stack, weights, vector], ctx.needs_input_grad[:3], grad)
            return (*grads, None, None)
        kept = dict(zip(ctx.kept_keys, kept_values))
        needs_stack, needs_weights, needs_vector = ctx.needs_input_grad[:3]
        return _blend_backward(grad, stack, weights, vector, ctx.template, kept, ctx.preset,
                               needs_stack, needs_weights, needs_vector, ctx.pyramids, ctx.ws) + (None, None)


class _FusionFunction(torch.autograd.Function):
    """:func:`exposure_fusion` by the kernels as one autograd function (one gradient buffer).

    ``apply(stack, mask, contrast, saturation, exposure, mu, sigma, coefficients, template,
    preset)``; backward: :class:`_BlendFunction`'s, then :class:`WeightsFunction`'s with the
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
        result, kept, pyramids = _blend_frames(stack, weights, _fill_plan(template, vector), preset, ws, keep,
                                               keep_pyramids=True)
        ctx.template, ctx.preset, ctx.kept_keys = template, preset, list(kept)
        ctx.ws, ctx.pyramids = ws, pyramids
        ctx.numbers = [None if isinstance(p, Tensor) else p for p in params]
        tensors = [p if isinstance(p, Tensor) else None for p in params]
        ctx.save_for_backward(stack, mask, weights, total, vector, *tensors, *kept.values())
        return result

    @staticmethod
    def backward(ctx, grad):
        stack, mask, weights, total, vector, *rest = ctx.saved_tensors
        tensors, kept_values = rest[:5], rest[5:]
        params = [t if t is not None else number for t, number in zip(tensors, ctx.numbers)]
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True
            plan = _fill_plan(ctx.template, vector)

            def reference() -> Tensor:
                return _blend_5d(stack, _reference_weights(stack, mask, *params, ctx.preset), None, ctx.preset, plan=plan)

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
        param_grads = weights_grad.result()[1:] if needs_weights else [None] * 5
        return (grad_stack, None, *param_grads, grad_vector, None, None)


def _blend_backward(grad, stack, weights, vector, template, kept, preset, needs_stack, needs_weights, needs_vector,
                    pyramids, ws: Workspace, weights_grad: WeightsBackward | None = None, grad_stack: Tensor | None = None):
    """Gradients of the blend (see :class:`_BlendFunction`), from each frame's Gaussian pyramids
    as the forward kept them (``pyramids``), with the forward's workspace.

    Returns ``(grad_stack, grad_weights, grad_vector)``. With ``weights_grad`` the weights'
    gradient is not returned but handed to it band by band (:class:`~efusion.weights.WeightsBackward`):
    the finest level's ``h_0`` of every frame is made one band of rows at a time, from each
    frame's ``h_1`` (kept, a quarter of a frame's weights), and backpropagated while in cache
    instead of being written out whole and read back. ``grad_stack`` (uninitialised) is the
    buffer to write the stack's gradient into (else a new one).
    """
    band_coef, residual_coef = _fill_plan(template, vector)
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
            band = level < top - 1 and not _is_zero(band_coef[level])
            residual = not _is_zero(residual_coef[level])
            image, weight = images[level], frame_weights[level]
            if needs_weights and (level > 0 or h_finest):
                if level == 0:
                    h = grad_weights[:, n]
                elif level == 1 and not h_finest:
                    h = weight.new_empty(weight.shape)
                else:
                    h = ws.get(f"h{level}", weight.shape)
                _h_level_into(h, g[level], image, images[level + 1] if band else None, h_coarser,
                              band_coef[level] if band else 0, residual_coef[level], preset, ws, rows[level])
                h_coarser = h
            if needs_stack:
                q = grad_stack[:, n] if level == 0 else ws.get(f"q{level}", image.shape)
                if band:
                    _scale_(torch.mul(weight, g[level], out=q), band_coef[level])  # dLap
                    if q_coarser is not None:
                        projected = ws.get("projected", q_coarser.shape)
                        up_adjoint_into(q, projected, preset, ws, rows[level])
                        q_coarser.sub_(projected)
                else:
                    q.zero_()
                if residual:
                    q.add_(_scale_(weight * g[level], residual_coef[level]))
                if q_coarser is not None:
                    add_down_adjoint_into(q, q_coarser, mode, ws, rows[level])
                q_coarser = q
        h1_kept.append(h_coarser if needs_weights and top > 1 and not h_finest else None)

    if needs_weights and not h_finest:
        band = top > 1 and not _is_zero(band_coef[0])
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
    ``h [..., 1, k, W]`` (see :class:`_BlendFunction`):
    ``h = band_coef sum_c(g (image - U coarser)) + residual_coef sum_c(g image) + D^T h_coarser``,
    where ``coarser`` is ``None`` if the level has no band and ``h_coarser`` if it is the coarsest.
    """
    r1 = r0 + h.shape[-2]
    if coarser is not None:
        laplacian_dot_band_into(h, g, image, coarser, r0, r1, preset, ws)
        _scale_(h, band_coef)
    else:
        h.zero_()
    if not _is_zero(residual_coef):
        h.add_(_scale_((image[..., r0:r1, :] * g[..., r0:r1, :]).sum(dim=-3, keepdim=True), residual_coef))
    if h_coarser is not None:
        add_down_adjoint_band_into(h, h_coarser, r0, image.shape[-2], preset.down_border, ws)


# ----------------------------------------------------------------------------------------------
# The layer

PARAMETER_NAMES = ("contrast", "saturation", "exposure", "mu", "sigma", "levels")
#: ``learnable=True``: every identifiable parameter. ``sigma`` is left out because
#: ``E^e = exp(-e * sum_c (I_c - mu)^2 / (2 sigma^2))`` depends on ``e / sigma^2`` only.
LEARNABLE_DEFAULT = ("contrast", "saturation", "exposure", "mu", "levels")
_POSITIVE = ("contrast", "saturation", "exposure", "sigma")


class _Softplus(nn.Module):
    """Parametrisation keeping a parameter above a floor: ``value = floor + softplus(raw)``.

    Exponents use floor 0 (an exponent that underflows to 0 just switches its measure off);
    sigma uses :data:`SIGMA_FLOOR`, below which ``1 / sigma^2`` overflows in float32.
    """

    def __init__(self, floor: float = 0.0) -> None:
        super().__init__()
        self.floor = floor

    def forward(self, raw: Tensor) -> Tensor:
        return F.softplus(raw) + self.floor if self.floor else F.softplus(raw)

    def right_inverse(self, value: Tensor) -> Tensor:
        excess = value - self.floor
        if not bool((excess > 0).all()):
            raise ValueError(f"a learnable exponent or sigma must start > {self.floor}, got {value.tolist()}")
        return excess + torch.log(-torch.expm1(-excess))


#: smallest sigma a learnable sigma can reach (``1 / sigma^2`` stays finite in float32 inputs)
SIGMA_FLOOR = 1e-3


class Fusion(nn.Module):
    """Mertens exposure fusion as a layer, with optionally learnable parameters.

    ``forward(stack, mask=None)`` is :func:`exposure_fusion` with the layer's parameters.

    Learnable parameters are ``nn.Parameter``; the others are buffers, so ``.to()``,
    ``state_dict()`` and ``load_state_dict()`` carry all of them. Constraints during training:
    the exponents and sigma are parametrised as ``softplus(raw)`` with
    :mod:`torch.nn.utils.parametrize` (so they stay > 0; reading ``layer.contrast`` gives the
    constrained value, assigning to it sets the raw one; a learnable exponent therefore has to
    start > 0; a learnable sigma stays >= 1e-3); ``mu`` is unconstrained; ``levels`` is unconstrained and clamped to the valid
    range in the forward pass with a gradient that keeps pointing back inside (see
    :mod:`efusion.fusion`). A learnable depth given as ``None`` starts at -1 (the automatic
    maximum) and stays relative to the maximum: its sign at construction decides whether it
    counts absolute levels or levels from the maximum.

    Args:
        contrast, saturation, exposure, mu, sigma, levels, preset: as in :func:`exposure_fusion`.
        learnable: names among ``contrast, saturation, exposure, mu, sigma, levels``, or
            ``True`` for ``contrast, saturation, exposure, mu, levels`` (sigma is redundant with
            the exposure exponent: only ``exposure / sigma^2`` is identifiable; asking for both
            warns).

    Shape:
        ``[N, C, H, W]`` -> ``[C, H, W]``; ``[B, N, C, H, W]`` -> ``[B, C, H, W]``.

    Example:
        >>> layer = Fusion(learnable=True)
        >>> out = layer(torch.rand(2, 3, 3, 32, 32))   # B=2 bursts of N=3 frames
        >>> out.mean().backward()
        >>> sorted(n for n, p in layer.named_parameters())
        ['levels', 'mu', 'parametrizations.contrast.original', 'parametrizations.exposure.original', 'parametrizations.saturation.original']
    """

    def __init__(
        self,
        contrast: float = 1.0,
        saturation: float = 1.0,
        exposure: float = 1.0,
        mu: float | Sequence[float] = 0.5,
        sigma: float | Sequence[float] = 0.2,
        levels: float | None = None,
        preset: str = "mertens",
        learnable: bool | Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.preset = get_preset(preset).name
        self.learnable = _parse_learnable(learnable)
        values = {"contrast": contrast, "saturation": saturation, "exposure": exposure, "mu": mu, "sigma": sigma}
        for name, value in values.items():
            tensor = torch.as_tensor(value, dtype=torch.get_default_dtype()).clone()
            if tensor.dim() > 1 or (tensor.dim() == 1 and name not in ("mu", "sigma")):
                raise ValueError(f"{name} must be a number{' or one value per channel' if name in ('mu', 'sigma') else ''}, got {value!r}")
            _checks.check_scalar(tensor, name, minimum=0.0 if name in _POSITIVE else None, strict=name == "sigma", size=3)
            if name in self.learnable:
                if name in _POSITIVE and not bool((tensor > 0).all()):
                    raise ValueError(
                        f"learnable {name} must start > 0, got {value!r}: an exponent of 0 switches its measure "
                        "off, which a gradient cannot undo; start from a small positive value or keep it fixed"
                    )
                self.register_parameter(name, nn.Parameter(tensor))
                if name in _POSITIVE:
                    floor = SIGMA_FLOOR if name == "sigma" else 0.0
                    parametrize.register_parametrization(self, name, _Softplus(floor))
            else:
                self.register_buffer(name, tensor)
        _checks.check_levels(levels)
        if "levels" in self.learnable:
            start = -1.0 if levels is None else float(levels)
            self.relative_levels = start < 0
            self.levels = nn.Parameter(torch.tensor(start))
        else:
            self.relative_levels = None if levels is None else float(levels) < 0
            self.register_buffer("levels", None if levels is None else torch.tensor(float(levels)))

    def forward(self, stack: Tensor | Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
        stack5, unbatched = _checks.as_stack(stack)
        mask5 = _checks.as_mask(mask, stack5, unbatched)
        preset = get_preset(self.preset)
        result = _fuse_5d(
            stack5, mask5, self.contrast, self.saturation, self.exposure, self.mu, self.sigma,
            self.levels, preset, self.relative_levels,
        )
        return result.squeeze(0) if unbatched else result

    def weights(self, stack: Tensor | Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
        """The normalised weight maps the layer blends with (``[..., N, 1, H, W]``)."""
        stack5, unbatched = _checks.as_stack(stack)
        mask5 = _checks.as_mask(mask, stack5, unbatched)
        weights = weights_5d(
            stack5, mask5, self.contrast, self.saturation, self.exposure, self.mu, self.sigma, get_preset(self.preset)
        )
        return weights.squeeze(0) if unbatched else weights

    def export(self) -> dict:
        """Current values as plain numbers (per-channel ``mu``/``sigma`` as lists), in the form
        :func:`efusion.io.write_params` and ``efusion fuse --params`` take.

        A depth is written as the forward pass uses it: one that training moved past the valid
        range is clamped back into it (a relative depth to <= -1, an absolute one to >= 1), which
        changes no result (the forward clamps it the same way).
        """
        out: dict = {}
        for name in PARAMETER_NAMES:
            value = getattr(self, name)
            if value is None:
                out[name] = None
                continue
            value = value.detach().cpu()
            out[name] = value.item() if value.dim() == 0 else value.tolist()
        if out["levels"] is not None:
            out["levels"] = min(out["levels"], -1.0) if self.relative_levels else max(out["levels"], 1.0)
        out["preset"] = self.preset
        return out

    def extra_repr(self) -> str:
        values = ", ".join(f"{k}={v!r}" if not isinstance(v, float) else f"{k}={v:.4g}" for k, v in self.export().items())
        return f"{values}, learnable={list(self.learnable)}"


def _parse_learnable(learnable: bool | Iterable[str]) -> tuple[str, ...]:
    if learnable is True:
        return LEARNABLE_DEFAULT
    if learnable is False or learnable is None:
        return ()
    if isinstance(learnable, str):
        learnable = [learnable]
    names = tuple(dict.fromkeys(learnable))
    unknown = [n for n in names if n not in PARAMETER_NAMES]
    if unknown:
        raise ValueError(f"unknown learnable parameter(s) {unknown}; choose among {list(PARAMETER_NAMES)} or True")
    if "exposure" in names and "sigma" in names:
        warnings.warn(
            "learning both 'exposure' and 'sigma' is redundant: the well-exposedness weight "
            "exp(-exposure * sum_c (I_c - mu)^2 / (2 sigma^2)) depends only on exposure / sigma^2, "
            "so the two drift along a flat valley; learn one of them",
            UserWarning,
            stacklevel=3,
        )
    return names
