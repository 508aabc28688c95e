"""Input validation shared by the public ops: typed errors that say what was expected.

Checks of tensor *values* (e.g. a negative exponent passed as a tensor) need the value on the
host; they run only for CPU tensors outside ``torch.compile``, so GPU forward passes never sync.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

Number = numbers.Real

#: the largest sample a float stack may hold. Images are in [0, 1]; frames rendered from HDR data
#: may overshoot a little (highlights past white), twice the white level is never an image: a
#: larger value means an integer image converted without scaling (uint8 / 255, uint16 / 65535).
MAX_SAMPLE = 2.0


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


#: integer sample types the fusion ops take, with the value that maps to 1.0
INTEGER_RANGES = {torch.uint8: 255.0, torch.uint16: 65535.0}


def as_stack(stack: Tensor | Sequence[Tensor], name: str = "stack", integers: bool = False) -> tuple[Tensor, bool]:
    """Validate a stack and return it as ``[B, N, C, H, W]`` plus whether it was unbatched.

    A sequence of ``[C, H, W]`` frames is stacked (sizes must agree). ``integers``: uint8 and
    uint16 stacks are accepted too (returned as they are), else only floating-point ones.
    """
    if isinstance(stack, (list, tuple)):
        if len(stack) == 0:
            raise ValueError(f"{name} has no frames: pass at least one [C, H, W] frame")
        for i, frame in enumerate(stack):
            if not isinstance(frame, Tensor):
                raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(frame).__name__}")
            if frame.dim() != 3:
                raise ValueError(f"{name}[{i}] must be a [C, H, W] frame, got shape {tuple(frame.shape)}")
            if frame.shape != stack[0].shape:
                raise ValueError(
                    f"frames differ in size: {name}[0] is {_chw(stack[0])} but {name}[{i}] is {_chw(frame)}"
                )
        stack = torch.stack(list(stack))
    if not isinstance(stack, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a list of [C, H, W] tensors, got {type(stack).__name__}")
    if not stack.is_floating_point() and not (integers and stack.dtype in INTEGER_RANGES):
        if integers:
            raise TypeError(
                f"{name} must be a uint8 or uint16 tensor, or a floating-point one with values in [0, 1], "
                f"got dtype {stack.dtype}"
            )
        raise TypeError(
            f"{name} must be a floating-point tensor with values in [0, 1], got dtype {stack.dtype}; "
            "convert 8-bit images with stack.float() / 255 (16-bit: / 65535), or "
            "torchvision.transforms.v2.functional.to_dtype(stack, torch.float32, scale=True)"
        )
    if stack.dim() == 4:
        stack, unbatched = stack.unsqueeze(0), True
    elif stack.dim() == 5:
        unbatched = False
    else:
        raise ValueError(
            f"{name} must be [N, C, H, W] or [B, N, C, H, W], got {stack.dim()} dimensions {tuple(stack.shape)}"
        )
    _, n, c, h, w = stack.shape
    if n == 0:
        raise ValueError(f"{name} has N = 0 frames: pass at least one exposure (shape {tuple(stack.shape)})")
    if c not in (1, 3):
        raise ValueError(f"{name} must have C = 1 (gray) or 3 (RGB) channels, got C = {c} (shape {tuple(stack.shape)})")
    if h == 0 or w == 0:
        raise ValueError(f"{name} frames are empty: H x W = {h} x {w}")
    return stack, unbatched


def _chw(frame: Tensor) -> str:
    return " x ".join(str(s) for s in frame.shape)


def as_weights(weights: Tensor, stack: Tensor, unbatched: bool) -> Tensor:
    """Validate weight maps against a ``[B, N, C, H, W]`` stack; return ``[B, N, 1, H, W]``."""
    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"weights must be floating point, got dtype {weights.dtype}")
    b, n, _, h, w = stack.shape
    expected = (n, 1, h, w) if unbatched else (b, n, 1, h, w)
    if tuple(weights.shape) != expected:
        raise ValueError(f"weights must have shape {list(expected)} to match the stack, got {list(weights.shape)}")
    return weights.unsqueeze(0) if unbatched else weights


def as_mask(mask: Tensor | None, stack: Tensor, unbatched: bool) -> Tensor | None:
    """Validate a mask broadcastable to the weight shape; return it as a 5-d tensor or ``None``."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    b, n, _, h, w = stack.shape
    target = (n, 1, h, w) if unbatched else (b, n, 1, h, w)
    try:
        shape = torch.broadcast_shapes(tuple(mask.shape), target)
    except RuntimeError:
        shape = None
    if shape != target:
        raise ValueError(
            f"mask of shape {list(mask.shape)} does not broadcast to the weight shape {list(target)} "
            "(one value per frame and pixel: [..., N, 1, H, W])"
        )
    if mask.dtype == torch.bool or not mask.is_floating_point():
        mask = mask.to(stack.dtype)
    while mask.dim() < 5:
        mask = mask.unsqueeze(0)
    return mask


def check_scalar(value, name: str, *, minimum: float | None = None, strict: bool = False, size: int = 1):
    """Validate a parameter given as a number or a tensor (0-d, or broadcastable to ``[size]``)."""
    if isinstance(value, bool) or not isinstance(value, (Number, Tensor)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    if isinstance(value, Tensor):
        if value.dim() > 1 or (value.dim() == 1 and value.numel() not in (1, size)):
            raise ValueError(f"{name} must be a 0-dim tensor or have {size} values (one per channel), got shape {list(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        if minimum is None or value.device.type != "cpu" or _is_compiling():
            return
        low = float(value.detach().min())
    else:
        low = float(value)
        if math.isnan(low):
            raise ValueError(f"{name} must be a number, got NaN")
        if minimum is None:
            return
    if (strict and not low > minimum) or low < minimum:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value if not isinstance(value, Tensor) else low}")


def as_channel_param(value, name: str):
    """``mu`` or ``sigma`` given as a list or tuple of numbers (one per channel) -> a float64 tensor.

    Numbers and tensors pass through; :func:`check_scalar` validates the result.
    """
    if not isinstance(value, (list, tuple)):
        return value
    if not value or any(isinstance(v, bool) or not isinstance(v, Number) for v in value):
        raise TypeError(f"{name} must be a number, a tensor or a non-empty list of numbers (one per channel), got {value!r}")
    return torch.tensor([float(v) for v in value], dtype=torch.float64)


def check_levels(levels, name: str = "levels") -> None:
    """``levels``: ``None``, a number >= 1 (absolute depth) or <= -1 (counted from the maximum);
    ``name`` is how the messages call it."""
    if levels is None:
        return
    if isinstance(levels, bool) or not isinstance(levels, (Number, Tensor)):
        raise TypeError(f"{name} must be None, a number or a 0-dim tensor, got {type(levels).__name__}")
    if isinstance(levels, Tensor):
        if levels.dim() != 0 or not levels.is_floating_point():
            raise ValueError(f"{name} must be a floating-point 0-dim tensor, got shape {list(levels.shape)} dtype {levels.dtype}")
        return
    if not (float(levels) >= 1 or float(levels) <= -1):
        raise ValueError(
            f"{name} must be >= 1 (pyramid depth) or <= -1 (counted from the automatic maximum, -1 = maximum), got {levels}"
        )


def check_samples(stack: Tensor, mask: Tensor | None = None, name: str = "stack", first_frame: int = 0) -> None:
    """Refuse a float stack ``[B, N, C, H, W]`` (or one frame ``[B, C, H, W]``, numbered
    ``first_frame``) whose unmasked samples are not finite or exceed :data:`MAX_SAMPLE`.

    Values under ``mask = 0`` are not looked at (they never reach the result). A NaN or inf raises
    a ``ValueError`` naming the frame and the number of non-finite samples in it; a value above
    ``MAX_SAMPLE`` one saying how to scale integer images. Like the other value checks this runs
    only for CPU tensors outside ``torch.compile`` (elsewhere it would wait for the device); one
    pass over the stack (``aminmax``) when all is well.
    """
    if stack.device.type != "cpu" or _is_compiling():
        return
    frames = stack.unsqueeze(1) if stack.dim() == 4 else stack
    samples = frames.detach()
    low, high = torch.aminmax(samples)
    if bool(low.isfinite()) and bool(high.isfinite()) and float(high) <= MAX_SAMPLE:
        return
    valid = None if mask is None else (mask.detach() > 0).expand(*frames.shape[:2], 1, *frames.shape[-2:])
    finite = samples.isfinite()
    bad = finite.logical_not() if valid is None else finite.logical_not() & valid
    counts = bad.sum(dim=(0, 2, 3, 4))
    for index, count in enumerate(counts.tolist()):
        if count:
            raise ValueError(
                f"{name} frame {first_frame + index} has {count} non-finite value(s) (NaN or inf) in unmasked "
                "pixels; replace them, or exclude those pixels with a mask of 0"
            )
    kept = finite if valid is None else finite & valid
    largest = float(torch.where(kept, samples, -torch.inf).amax()) if bool(kept.any()) else -float("inf")
    if largest > MAX_SAMPLE:
        raise ValueError(
            f"{name} has values up to {largest:g}, above {MAX_SAMPLE:g}: fusion takes images scaled to [0, 1] "
            "(a little overshoot from HDR renders is accepted); divide 8-bit images by 255 and 16-bit ones "
            "by 65535 (or use torchvision.transforms.v2.functional.to_dtype(x, torch.float32, scale=True))"
        )
