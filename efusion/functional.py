"""The fusion ops: :func:`exposure_fusion`, :func:`mertens_weights`, :func:`blend`, :func:`fuse_frames`.

Mertens, Kautz & Van Reeth, "Exposure Fusion", Pacific Graphics 2007, doi:10.1109/PG.2007.17;
reference code ``exposure_fusion.m``. Each op validates its inputs (:mod:`efusion._checks`,
:mod:`efusion.params`), plans the pyramid depth (:mod:`efusion.depth`) and dispatches to the
backend :func:`efusion.backends.select` picks: the reference code (:mod:`efusion.reference`,
differentiable to any order; under ``torch.func``, in half precision, and whenever
``efusion.backends.use("reference")`` is active) or the ``"cpu"`` band kernels
(:mod:`efusion.backends.cpu`, eager float32/float64 calls, and no-grad CPU calls under
``torch.compile``). Results of the two agree to rounding; see the README's "Architecture".

:func:`fuse_frames` streams: frames converted one at a time, memory independent of their number.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from . import _checks, backends
from ._util import ParamLike
from .params import DEFAULTS, check_levels, check_params, resolve_exponents
from .presets import Preset, get_preset
from .reference.masks import fill_masked

__all__ = ["blend", "exposure_fusion", "fuse_frames", "mertens_weights"]

_CONTRAST, _SATURATION, _EXPOSURE = DEFAULTS["contrast"], DEFAULTS["saturation"], DEFAULTS["exposure"]  # None: the preset's
_MU, _SIGMA = DEFAULTS["mu"], DEFAULTS["sigma"]


def weights_5d(stack: Tensor, mask: Tensor | None, contrast: ParamLike, saturation: ParamLike, exposure: ParamLike,
               mu: ParamLike, sigma: ParamLike, preset: Preset) -> Tensor:
    """Normalised weights of a validated ``[B, N, C, H, W]`` stack -> ``[B, N, 1, H, W]``, by the selected backend."""
    params = (contrast, saturation, exposure, mu, sigma)
    backend = backends.select("weights", stack, (mask, *params), preset=preset, mask=mask)
    return backend.weights(stack, mask, params, preset)


def _known_one(size) -> bool:
    """Whether a size is 1 for sure: an int, or a symbolic size a traced graph knows to be 1 (the
    symbolic-shapes module is imported only then: with sympy it is ~0.35 s of a CLI start-up)."""
    if isinstance(size, int):
        return size == 1
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return statically_known_true(size == 1)


def fuse_5d(stack: Tensor, mask: Tensor | None, contrast, saturation, exposure, mu, sigma, levels, preset: Preset,
            relative: bool | None, check: bool = False) -> Tensor:
    """:func:`exposure_fusion` of a validated ``[B, N, C, H, W]`` stack -> ``[B, C, H, W]``, by the selected
    backend; ``check``: the samples are checked first (:func:`efusion._checks.check_samples`), by the
    backend's ``fuse_checked`` where it has one that takes the call (the native kernels' weights pass)."""
    # one frame: its weight is exactly 1 everywhere (a traced graph with a symbolic frame count,
    # which also holds for one frame, blends it: the pyramid round trip, equal to rounding)
    if _known_one(stack.shape[1]) and mask is None:
        if check:
            _checks.check_samples(stack, mask)
        return stack[:, 0].clone()
    params = (contrast, saturation, exposure, mu, sigma)
    backend = backends.select("fuse", stack, (mask, *params, levels), preset=preset, mask=mask)
    if check:
        fuse_checked = getattr(backend, "fuse_checked", None)
        result = None if fuse_checked is None else fuse_checked(stack, mask, params, levels, preset, relative)
        if result is not None:
            return result
        _checks.check_samples(stack, mask)
    return backend.fuse(stack, mask, params, levels, preset, relative)


def mertens_weights(
    stack: Tensor | Sequence[Tensor],
    *,
    contrast: ParamLike | None = _CONTRAST,
    saturation: ParamLike | None = _SATURATION,
    exposure: ParamLike | None = _EXPOSURE,
    mu: ParamLike = _MU,
    sigma: ParamLike = _SIGMA,
    preset: str | Preset = "mertens",
    mask: Tensor | None = None,
) -> Tensor:
    """Normalised Mertens weights ``W_n = C^c S^s E^e + 1e-12``, divided by their sum over frames.

    Mertens et al. 2007, Eq. (2) and Section 3.1; constants and conventions of the preset's
    reference code (``exposure_fusion.m`` or OpenCV ``MergeMertens``).

    Args:
        stack: frames ``[N, C, H, W]`` or ``[B, N, C, H, W]`` (or a list of ``[C, H, W]``),
            float in [0, 1], or uint8 / uint16 (see :func:`exposure_fusion`); C = 3 (RGB) or 1
            (gray: no saturation measure).
        contrast, saturation, exposure: exponents >= 0 (0 switches a measure off), numbers or
            0-dim tensors (tensors carry gradients); ``None``: the preset's default
            (:attr:`~efusion.Preset.exponent_defaults`). Any finite values give finite weights:
            where the product overflows they are normalised in the log domain.
        mu, sigma: centre and width (> 0) of the well-exposedness Gaussian, numbers, or one
            value per channel as a list or a tensor (tensors, also 0-dim, carry gradients).
        preset: ``"mertens"`` (default), ``"opencv"`` (OpenCV on ``cv2.imread``'s BGR frames) or
            ``"opencv-rgb"`` (OpenCV fed RGB frames).
        mask: optional, broadcastable to ``[..., N, 1, H, W]``; multiplies the weights before
            normalisation (0 excludes a frame at a pixel; where every frame is excluded the
            weights are 0). The weights are measured with masked pixels filled from unmasked
            ones (:func:`efusion.reference.masks.fill_masked`): nothing under ``mask = 0``,
            NaN included, reaches them.

    Raises:
        ValueError: an unmasked sample is NaN or inf, or above ``MAX_SAMPLE = 2`` (an unscaled
            integer image); checked for CPU tensors outside ``torch.compile``.

    Returns:
        weights ``[N, 1, H, W]`` or ``[B, N, 1, H, W]``, summing to 1 over N (where not masked).

    Example:
        >>> stack = torch.rand(3, 3, 16, 16)          # 3 RGB frames
        >>> w = mertens_weights(stack)                  # [3, 1, 16, 16]
        >>> torch.allclose(w.sum(0), torch.ones(1, 16, 16))
        True
    """
    stack5, unbatched = _checks.as_stack(stack, integers=True)
    preset = get_preset(preset)
    stack5, preset = _integer_stack(stack5, preset, mask is None)
    contrast, saturation, exposure = resolve_exponents(contrast, saturation, exposure, preset)
    mu, sigma = check_params(contrast, saturation, exposure, mu, sigma, stack5.shape[2])
    mask5 = _checks.as_mask(mask, stack5, unbatched)
    _checks.check_samples(stack5, mask5)
    weights = weights_5d(stack5, mask5, contrast, saturation, exposure, mu, sigma, preset)
    return weights.squeeze(0) if unbatched else weights


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
            interpolate between depths (see :mod:`efusion.depth`).
        preset: ``"mertens"`` (default) or ``"opencv"``: pyramid borders and maximum depth.

    Returns:
        the blended image ``[C, H, W]`` or ``[B, C, H, W]``, not clamped.
    """
    stack5, unbatched = _checks.as_stack(stack)
    weights5 = _checks.as_weights(weights, stack5, unbatched).to(stack5.dtype)
    check_levels(levels)
    preset = get_preset(preset)
    backend = backends.select("blend", stack5, (weights5, levels), preset=preset)
    result = backend.blend(stack5, weights5, levels, preset, None)
    return result.squeeze(0) if unbatched else result


def exposure_fusion(
    stack: Tensor | Sequence[Tensor],
    *,
    contrast: ParamLike | None = _CONTRAST,
    saturation: ParamLike | None = _SATURATION,
    exposure: ParamLike | None = _EXPOSURE,
    mu: ParamLike = _MU,
    sigma: ParamLike = _SIGMA,
    levels: float | Tensor | None = None,
    preset: str | Preset = "mertens",
    mask: Tensor | None = None,
) -> Tensor:
    """Fuse differently exposed frames into one image (Mertens, Kautz & Van Reeth 2007).

    ``blend(stack, mertens_weights(stack, ...), levels=levels)``. With the defaults it
    reproduces Mertens' ``exposure_fusion(I, [1 1 1])``; ``preset="opencv"`` reproduces
    ``cv2.createMergeMertens(contrast, saturation, exposure).process(bgr_frames)`` for frames
    read with ``cv2.imread`` (BGR) and given here in RGB, its default exposure exponent 0
    included; ``preset="opencv-rgb"`` reproduces OpenCV fed RGB frames.

    Args:
        stack: frames ``[N, C, H, W]`` or ``[B, N, C, H, W]`` (or a list of ``[C, H, W]``),
            float in [0, 1]; C = 3 (RGB) or 1 (gray: the saturation measure is off). Frame
            order does not matter. uint8 / uint16 stacks are scaled to [0, 1] as in
            :func:`fuse_frames` and fused in float32; without a mask (and with a preset that
            measures exact values, as ``"mertens"``) their contrast and saturation are measured
            on the exact samples, so the float32 weights agree with float64 ones
            (:attr:`~efusion.presets.Preset.integer_samples`). On CPU tensors outside ``torch.compile``, NaN or inf in an
            unmasked pixel and values above ``MAX_SAMPLE = 2`` (HDR renders may overshoot 1 a
            little; more is an unscaled 8/16-bit image) raise ``ValueError``; elsewhere they are
            not checked (that would need a host-device sync) and NaN spreads through the pyramid.
        contrast, saturation, exposure: exponents >= 0 of the three measures (0 switches a
            measure off; ``None``: the preset's default, 1 1 1, or 1 1 0 for ``"opencv"``),
            numbers or 0-dim tensors (tensors carry gradients). Any finite values give a finite
            result: where ``C^c S^s E^e`` overflows the weights are normalised in the log domain.
        mu, sigma: centre and width (> 0) of the well-exposedness Gaussian, per channel and
            multiplied over channels; numbers, or one value per channel as a list or a tensor
            (tensors, also 0-dim, carry gradients).
        levels: pyramid depth, see :func:`blend`.
        preset: ``"mertens"`` (default), ``"opencv"`` (OpenCV on BGR frames, see above) or
            ``"opencv-rgb"``.
        mask: optional, broadcastable to ``[..., N, 1, H, W]``: multiplies the weights before
            normalisation (0 excludes a frame at a pixel: padding frames, alpha, ghost masks).
            Exact: masked pixels are first filled from the frame's unmasked ones
            (:func:`efusion.reference.masks.fill_masked`), so the result and its gradient with
            respect to unmasked pixels do not depend on anything under ``mask = 0`` (NaN and inf
            included). A pixel masked in every frame gets weight 0 everywhere: its output is only
            what the coarser pyramid levels bring in from unmasked pixels nearby.

    Returns:
        fused image ``[C, H, W]`` or ``[B, C, H, W]``, not clamped (Mertens fusion can leave
        [0, 1] slightly; clamp or normalise for display).

    Memory: besides the stack, N weight maps (a third of a float RGB stack) and about 4/3 of
    the output; without gradients on a CPU (the native kernels) the result is written into that
    4/3 and, where the N weight maps would exceed 64 MiB and one frame, the weights are computed
    twice instead of held (memory independent of N); :func:`fuse_frames` streams frames.
    Gradients of any order (second ones by the reference code; see :mod:`efusion.backends`).

    Example:
        >>> stack = torch.rand(3, 3, 32, 48)      # N=3 RGB frames in [0, 1]
        >>> exposure_fusion(stack).shape            # [C, H, W]
        torch.Size([3, 32, 48])
    """
    stack5, unbatched = _checks.as_stack(stack, integers=True)
    preset = get_preset(preset)
    stack5, preset = _integer_stack(stack5, preset, mask is None)
    contrast, saturation, exposure = resolve_exponents(contrast, saturation, exposure, preset)
    mu, sigma = check_params(contrast, saturation, exposure, mu, sigma, stack5.shape[2])
    check_levels(levels)
    mask5 = _checks.as_mask(mask, stack5, unbatched)
    result = fuse_5d(stack5, mask5, contrast, saturation, exposure, mu, sigma, levels, preset, None, check=True)
    return result.squeeze(0) if unbatched else result


FrameSource = Sequence[Tensor] | Tensor | Callable[[], Iterable[Tensor]]

def _integer_stack(stack: Tensor, preset: Preset, unmasked: bool) -> tuple[Tensor, Preset]:
    """A uint8 / uint16 stack as float32 in [0, 1] (see :func:`fuse_frames` for the scale) with the
    preset that measures its exact values where no mask fills pixels with values off the integer
    grid (:meth:`~efusion.presets.Preset.for_integer_frames`); a float stack as it is."""
    if stack.is_floating_point():
        return stack, preset
    converted = _to_unit_float(stack, torch.float32, preset)
    return converted, preset.for_integer_frames(torch.float32) if unmasked else preset


def fuse_frames(
    frames: FrameSource,
    *,
    contrast: ParamLike | None = _CONTRAST,
    saturation: ParamLike | None = _SATURATION,
    exposure: ParamLike | None = _EXPOSURE,
    mu: ParamLike = _MU,
    sigma: ParamLike = _SIGMA,
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
            ``convertTo``); without ``masks`` they are measured on their exact values, as in
            :func:`exposure_fusion`. Float frames are taken as they are, in [0, 1]; all frames
            are integer or all are float.
        contrast, saturation, exposure, mu, sigma, levels, preset: as in :func:`exposure_fusion`.
        masks: optional, one per frame (same container kind as ``frames``), each broadcastable
            to ``[1, H, W]`` (``[B, 1, H, W]`` for batched frames); they multiply the weights
            before normalisation (0 excludes a pixel of that frame), values taken as they are;
            masked pixels are filled from the frame's unmasked ones, as in :func:`exposure_fusion`.
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
    contrast, saturation, exposure = resolve_exponents(contrast, saturation, exposure, preset)
    read_frames = _frame_reader(frames, "frames")
    read_masks = None if masks is None else _frame_reader(masks, "masks")
    check_levels(levels)
    source = iter(read_frames())
    first = _check_frame(next(source, None), 0, None)
    mu, sigma = check_params(contrast, saturation, exposure, mu, sigma, first.shape[-3])
    if dtype is None:
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if not first.is_floating_point() and masks is None:  # integer frames: measured on their exact values
        preset = preset.for_integer_frames(dtype)
    unbatched = first.dim() == 3
    shape = (1, *first.shape) if unbatched else tuple(first.shape)
    weight_shape = (shape[0], 1, *shape[-2:])
    params = (contrast, saturation, exposure, mu, sigma)
    # the masked pixels' fill: the reference's, or the selected backend's own (the same values)
    fill: Callable[[Tensor, Tensor, Preset], Tensor] = fill_masked

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
            converted = _to_unit_float(frame.reshape(shape), dtype, preset, out)
            _checks.check_samples(converted, None if mask is None else mask.unsqueeze(-4), "frames", i)
            if mask is not None:  # as exposure_fusion: masked pixels filled from the unmasked ones
                converted = fill(converted, mask, preset)
            yield converted, mask, frame.requires_grad
        if masks_iter is not None and next(masks_iter, None) is not None:
            raise ValueError("masks has more entries than frames")

    def through_exposure_fusion() -> Tensor:
        """Autograd, torch.compile: stack the frames and let exposure_fusion do the rest."""
        stack, masks_, _ = zip(*passes())
        mask5 = None if masks is None else torch.stack([m.expand(weight_shape) for m in masks_], dim=1)
        result = fuse_5d(torch.stack(stack, dim=1), mask5, *params, levels, preset, None)
        return result.squeeze(0) if unbatched else result

    backend = backends.select("fuse_frames", first.to(dtype), (*params, levels), preset=preset)
    fill = getattr(backend, "fill_masked", fill_masked)
    result = None
    if not (torch.is_grad_enabled() and first.requires_grad):
        result = backend.fuse_frames(passes, lambda out: passes(out, itertools.chain([first], source)), shape,
                                     weight_shape, dtype, first.device, params, levels, preset, masks is not None)
    if result is None:
        return through_exposure_fusion()
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
    if frame.dtype not in _checks.INTEGER_RANGES and not frame.is_floating_point():
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
    if frame.is_floating_point() != first.is_floating_point():
        raise TypeError(
            f"frames mix integer and floating-point samples: frames[0] is {first.dtype}, frames[{index}] "
            f"{frame.dtype}; pass all of them as uint8 / uint16 or all as floats in [0, 1]"
        )
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
    full_scale = _checks.INTEGER_RANGES.get(frame.dtype)
    if full_scale is not None:
        if preset.integer_scale == "reciprocal" and dtype == torch.float32:
            out.mul_(float(torch.tensor(1.0 / full_scale, dtype=torch.float32)))  # convertTo(CV_32F, 1/255)
        else:
            out.div_(full_scale)  # im2double
    return out
