"""The ``"native"`` backend: C++ kernels (``kernels.cpp``) for the forward on a CPU, and the
gradient of ``fuse``.

``torch.library`` operators, each equal to reference code bit for bit (the same operations
in the same order, and torch's own ``sqrt``/``exp``/``log`` for the transcendental steps), except
for the sum over 4 or more frames at the few pixels torch's vectorised reduction leaves to a scalar
tail (there torch adds in another order, one that also depends on its thread count):

- ``efusion_native::weights`` = :func:`efusion.reference.measures.fusion_weights` (no mask);
  with a mask (no gradient recorded), ``efusion_native::fill_masked``
  (= :func:`efusion.reference.masks.fill_masked`) first, ``efusion_native::raw_weights`` of the
  filled stack, then the reference's :func:`~efusion.reference.measures.normalise` with the mask:
  the reference's bits;
- ``efusion_native::blend`` = :func:`efusion.reference.blend.blend` with a number depth;
- ``efusion_native::fuse`` = both, as :meth:`efusion.backends.reference.ReferenceBackend.fuse`;
  ``efusion_native::fuse_two_pass`` the same bits without holding the N weight planes (the
  weights' normaliser first, then each frame's weights again as it is blended): memory flat in N
  for the cost of computing the weights twice, taken when the weight planes would exceed
  ``weight_bytes`` (option of ``efusion.backends.use("native", weight_bytes=...)``, default
  :data:`DEFAULT_WEIGHT_BYTES`) and one frame's size.
- ``efusion_native::fusion`` = ``fuse`` with the five weight parameters and the depth plan
  (:func:`efusion.depth.depth_plan`'s coefficients) as tensors, for calls that record gradients or
  have a tensor depth, with registered autograd: it also returns the normalised weights, the
  measures' product ``C^c S^s E^e`` and the weights' normaliser (not differentiable), which
  ``efusion_native::fusion_backward`` reads instead of computing the measures again, and which
  gives the gradients of the stack, the parameters and the plan (a recorded backward, ``create_graph=True``,
  is the reference code's gradient instead, :func:`efusion.backends.gradients.reference_gradients`,
  so second derivatives work).
- masked ``fuse`` (no gradient recorded): the masked weights above, then ``efusion_native::blend`` of
  the filled stack, as :meth:`efusion.backends.reference.ReferenceBackend.fuse`.

One ``at::parallel_for`` per pass over a pyramid level, rows split across threads, each thread
running the whole chain of its rows: ``torch.get_num_threads()`` is respected (one thread inside
DataLoader workers, where torch sets it) and a busy machine costs a barrier per pass, not per
elementwise step. Each operator runs on at most the cores other processes leave free when it
starts (``/proc/loadavg``'s runnable count less this process's own running threads, read at most
every 10 ms; ``efusion_native::call_threads()`` says the count now): a pass never waits at its
barrier for a thread the OS descheduled for a busy neighbour, and the caller's thread count is
left as it was. The kernels are compiled on first use and cached (:mod:`.build`);
``EFUSION_NATIVE=0`` turns the backend off. It declines, so that the ``"cpu"`` backend or the
reference runs instead: ``weights`` and ``blend`` calls that record gradients or have a tensor
depth, masked calls that record gradients, other dtypes and devices, ``torch.func`` transforms, and exponents whose weights could
overflow. Under ``torch.compile`` it takes no-grad ``fuse`` and ``blend`` calls whose parameters
are numbers: the operators stay opaque in the graph (their fake kernels give the shapes), so a
compiled call returns the eager result's bits.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ... import _checks
from ..._util import WeightParams, needs_grad, present
from ...depth import depth_plan
from ...presets import Preset
from ...reference.blend import blend as reference_blend
from ...reference.masks import fill_masked as reference_fill_masked
from ...reference.measures import fusion_weights, may_overflow, normalise
from .. import current_options
from ..gradients import reference_gradients
from . import build

__all__ = ["BACKEND", "DEFAULT_WEIGHT_BYTES", "NativeBackend", "conventions", "preset_of", "supported"]

#: ``fuse`` holds the N weight planes of a stack while they take at most this many bytes or at most
#: a frame's (N <= C), else it runs in two passes (``fuse_two_pass``): small brackets keep the
#: faster single pass, large ones a peak memory that does not grow with N (issue 13)
DEFAULT_WEIGHT_BYTES = 64 * 2**20

_DTYPES = (torch.float32, torch.float64)
#: the inputs ``select`` passes besides the stack: fuse (mask, five parameters, levels), blend (weights,
#: levels), weights (mask, five parameters), fuse_frames (five parameters, levels)
_ARITY = {"fuse": 7, "blend": 2, "weights": 6, "fuse_frames": 6}
#: the frame count the overflow bound assumes for streamed frames (their number is not known yet)
_STREAMED_FRAMES = 1 << 16
#: how the kernels' refusal of a stack's samples begins (kernels.cpp: kBadSamples)
_BAD_SAMPLES = "efusion_native: bad samples"
_BORDERS = {"replicate": 0, "reflect101": 1, "symmetric": 2}
_CHANNELS = {"rgb": (0, 1, 2), "bgr": (2, 1, 0)}
#: the Preset fields the kernels implement (``integer_scale`` and ``exponent_defaults``, where a
#: preset has them, act before any backend runs); a preset with other fields is declined
_KNOWN_FIELDS = frozenset({
    "name", "luma_weights", "laplacian_border", "luma_form", "saturation_form", "laplacian_form", "down_border",
    "up_borders", "extra_level", "float32_depth", "channel_order", "flat_contrast", "integer_scale",
    "exponent_defaults", "integer_samples",
})
_FORMS = {"luma_form": ("sum", "opencv_fma"), "laplacian_form": ("differences", "opencv"),
          "saturation_form": ("pairwise", "opencv")}


def conventions(preset: Preset) -> tuple[list[int], list[float]]:
    """A preset as the operators' ``conventions`` codes and ``reals`` (luma weights, flat contrast
    and integer grid) (``kernels.cpp``: ``Conventions``). Fields a preset lacks take their neutral value."""
    codes = [
        int(preset.luma_form == "opencv_fma"),
        _BORDERS[preset.laplacian_border],
        int(preset.laplacian_form == "opencv"),
        int(preset.saturation_form == "opencv"),
        _BORDERS[preset.down_border],
        _BORDERS[preset.up_borders[0]],
        _BORDERS[preset.up_borders[1]],
        *_CHANNELS[getattr(preset, "channel_order", "rgb")],
    ]
    return codes, [*(float(w) for w in preset.luma_weights), float(getattr(preset, "flat_contrast", 0.0)),
                   float(getattr(preset, "integer_samples", 0))]


def preset_of(codes: list[int], reals: list[float]) -> Preset:
    """The inverse of :func:`conventions`: a preset with the conventions the codes give (for the
    reference code a recorded backward runs; the fields that act before a backend runs, and the
    name, take their defaults)."""
    borders = {code: name for name, code in _BORDERS.items()}
    orders = {channels: name for name, channels in _CHANNELS.items()}
    return Preset(
        name="native", luma_weights=(reals[0], reals[1], reals[2]), laplacian_border=borders[codes[1]],
        luma_form=_FORMS["luma_form"][codes[0]], saturation_form=_FORMS["saturation_form"][codes[3]],
        laplacian_form=_FORMS["laplacian_form"][codes[2]], down_border=borders[codes[4]],
        up_borders=(borders[codes[5]], borders[codes[6]]), extra_level=False, float32_depth=False, channel_order=orders[(codes[7], codes[8], codes[9])],
        flat_contrast=reals[3], integer_samples=int(reals[4]),
    )


def supported(preset: Preset) -> bool:
    """Whether the kernels implement every convention of ``preset`` (unknown fields or values: no)."""
    fields = {f.name for f in dataclasses.fields(preset)}
    if not fields <= _KNOWN_FIELDS:
        return False
    borders = (preset.laplacian_border, preset.down_border, *preset.up_borders)
    return (all(b in _BORDERS for b in borders) and len(preset.up_borders) == 2
            and all(getattr(preset, name) in values for name, values in _FORMS.items())
            and getattr(preset, "channel_order", "rgb") in _CHANNELS)


def _values(value, channels: int) -> list[float] | None:
    """A number or a CPU tensor (0-dim, or one value per channel) as ``channels`` floats."""
    if isinstance(value, Tensor):
        if value.device.type != "cpu" or value.numel() not in (1, channels):
            return None
        values = [float(v) for v in value.detach().reshape(-1).tolist()]
        return values * channels if len(values) == 1 else values
    return [float(value)] * channels


def _safe_exponents(contrast: float, saturation: float, exposure: float, frames: int, dtype: torch.dtype) -> bool:
    """Whether ``C^c S^s E^e`` summed over the frames stays finite (the kernels have no log-domain
    fallback): exponents finite and >= 0, and the reference's bound
    (:func:`~efusion.reference.measures.may_overflow`) says nothing can overflow."""
    if not all(0.0 <= v < math.inf for v in (contrast, saturation, exposure)):  # NaN fails too (Dynamo-traceable)
        return False
    return not may_overflow(contrast, saturation, frames, dtype)


def _functorch_wrapped(values) -> bool:
    return any(isinstance(t, Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in values)


class NativeBackend:
    """The native kernels as a backend (see the module docstring and
    :class:`efusion.backends.reference.ReferenceBackend` for the ops' signatures)."""

    name = "native"
    #: ``fuse`` calls that record gradients run here (``weights`` and ``blend`` ones go to another
    #: backend; the conformance suite reads this)
    differentiable = True

    def accepts(self, op: str, stack: Tensor, inputs: tuple, *, preset: Preset, mask: Tensor | None = None) -> bool:
        if not supported(preset):
            return False
        if getattr(preset, "integer_samples", 0) and (torch.compiler.is_compiling() or needs_grad(stack, *inputs)):
            return False  # integer frames' exact samples: measured by the no-grad kernels, not the backward's
        if mask is None and op in ("fuse", "weights") and len(inputs) == _ARITY[op]:
            mask = inputs[0]  # the call's own mask, whether or not the caller named it
        if mask is not None and not self._mask_fits(op, stack, inputs, mask):
            return False
        if len(inputs) != _ARITY[op]:  # not the call's full inputs: nothing to check them by
            return False
        if op == "fuse_frames":  # a first frame [C, H, W] or [B, C, H, W] and (five parameters, levels)
            return (not torch.compiler.is_compiling() and stack.device.type == "cpu" and stack.dtype in _DTYPES
                    and stack.dim() in (3, 4) and not needs_grad(*inputs) and not _functorch_wrapped(inputs)
                    and (not isinstance(inputs[5], Tensor) or inputs[5].device.type == "cpu")
                    and self._params_fit(inputs[:5], stack.shape[-3], _STREAMED_FRAMES, stack.dtype)
                    and build.load())
        if torch.compiler.is_compiling():
            return self._accepts_traced(op, stack, inputs)
        if stack.device.type != "cpu" or stack.dtype not in _DTYPES or stack.dim() != 5:
            return False
        if _functorch_wrapped((stack, *inputs)) or (op != "fuse" and needs_grad(stack, *inputs)):
            return False
        if op == "blend":
            weights, levels = inputs
            if weights.dtype != stack.dtype or weights.device.type != "cpu" or _functorch_wrapped((weights,)):
                return False
        else:  # fuse: (mask, contrast, saturation, exposure, mu, sigma, levels); weights: the same but levels
            levels = inputs[6] if op == "fuse" else None
            if not self._params_fit(inputs[1:6], stack.shape[2], stack.shape[1], stack.dtype):
                return False
        if isinstance(levels, Tensor) and (op != "fuse" or levels.device.type != "cpu"):
            return False  # tensor depths (learned, differentiable): fuse only (efusion_native::fusion)
        return build.load()

    @staticmethod
    def _mask_fits(op: str, stack: Tensor, inputs: tuple, mask: Tensor) -> bool:
        """Masked ``fuse`` and ``weights`` calls run here when they record no gradient, eagerly, with
        a CPU mask (the masked gradient is the reference code's, by another backend)."""
        return (op in ("fuse", "weights") and not torch.compiler.is_compiling() and mask.device.type == "cpu"
                and not needs_grad(stack, mask, *inputs) and not _functorch_wrapped((stack, mask, *inputs)))

    @staticmethod
    def _accepts_traced(op: str, stack: Tensor, inputs: tuple) -> bool:
        """Under ``torch.compile``: no-grad CPU calls whose parameters and depth are numbers (a
        traced tensor has no value to pass), once the kernels are loaded (an eager call loads them;
        building is no work to trace)."""
        numbers = inputs[1:]
        if any(isinstance(v, Tensor) for v in numbers) or (op != "blend" and inputs[0] is not None):
            return False
        if stack.device.type != "cpu" or stack.dtype not in _DTYPES or needs_grad(stack, *inputs):
            return False
        if op in ("fuse", "weights"):
            contrast, saturation, exposure = (float(v) for v in numbers[:3])
            if not _safe_exponents(contrast, saturation, exposure, stack.shape[1], stack.dtype):
                return False
        return build.loaded()

    @staticmethod
    def _params_fit(params: tuple, channels: int, frames: int, dtype: torch.dtype) -> bool:
        """Whether the parameters are numbers or CPU tensors the kernels take, and no weight can
        overflow (``C^c S^s E^e`` with ``C <= 4``, ``S, E <= 1``: only a large contrast exponent can)."""
        for index, value in enumerate(params):
            if isinstance(value, Tensor) and (value.device.type != "cpu" or _functorch_wrapped((value,))):
                return False
            if _values(value, 1 if index < 3 else channels) is None:  # exponents: one value each
                return False
        contrast, saturation, exposure = (_values(p, 1)[0] for p in params[:3])  # type: ignore[index]
        return _safe_exponents(contrast, saturation, exposure, frames, dtype)

    @staticmethod
    def _weight_arguments(stack: Tensor, params: WeightParams) -> list:
        channels = stack.shape[-3]
        contrast, saturation, exposure, mu, sigma = params
        exponents = [_values(p, 1)[0] for p in (contrast, saturation, exposure)]  # type: ignore[index]
        return [exponents, _values(mu, channels), _values(sigma, channels), isinstance(sigma, Tensor)]

    @staticmethod
    def _plan(levels, stack: Tensor, preset: Preset, relative: bool | None = None) -> tuple[list[float], list[float]]:
        """The depth plan's coefficients as numbers (a tensor depth here records no gradient)."""
        band, residual = depth_plan(levels, stack.shape[-2], stack.shape[-1], preset, stack.dtype, stack.device, relative)
        return [float(c) for c in band], [float(c) for c in residual]

    def weights(self, stack: Tensor, mask: Tensor | None, params: WeightParams, preset: Preset) -> Tensor:
        """:func:`efusion.reference.measures.fusion_weights` by ``efusion_native::weights``."""
        codes, reals = conventions(preset)
        if mask is not None:
            return self._masked_weights(_fill_masked(stack, mask, preset), mask, params, preset)
        return torch.ops.efusion_native.weights(stack.contiguous(), *self._weight_arguments(stack, params), reals, codes)

    def _masked_weights(self, filled: Tensor, mask: Tensor, params: WeightParams, preset: Preset) -> Tensor:
        """The weights of an already filled stack ``[B, N, C, H, W]``, normalised under ``mask`` (the
        reference's steps; the accepted exponents cannot overflow, so its log-domain path is not needed)."""
        codes, reals = conventions(preset)
        batch, frames, channels, height, width = filled.shape
        frame_rows = filled.contiguous().view(batch * frames, channels, height, width)
        raw = torch.ops.efusion_native.raw_weights(frame_rows, *self._weight_arguments(filled, params), reals, codes)
        return normalise(raw.view(batch, frames, 1, height, width), mask)

    def blend(self, stack: Tensor, weights: Tensor, levels, preset: Preset, relative: bool | None) -> Tensor:
        """:func:`efusion.reference.blend.blend` by ``efusion_native::blend``."""
        codes, reals = conventions(preset)
        band, residual = self._plan(levels, stack, preset)
        return torch.ops.efusion_native.blend(stack.contiguous(), weights.contiguous(), band, residual, reals, codes)

    def fuse(self, stack: Tensor, mask: Tensor | None, params: WeightParams, levels, preset: Preset,
             relative: bool | None) -> Tensor:
        """The reference weights then blend, by ``efusion_native::fuse`` (or ``fuse_two_pass`` where
        the weight planes would exceed the memory budget: :data:`DEFAULT_WEIGHT_BYTES`)."""
        codes, reals = conventions(preset)
        if mask is not None:
            filled = _fill_masked(stack, mask, preset)
            weights = self._masked_weights(filled, mask, params, preset)
            band, residual = self._plan(levels, stack, preset, relative)
            return torch.ops.efusion_native.blend(filled.contiguous(), weights, band, residual, reals, codes)
        if needs_grad(stack, *params) or isinstance(levels, Tensor):  # parameters and depth plan as tensors
            plan = depth_plan(levels, stack.shape[-2], stack.shape[-1], preset, stack.dtype, stack.device, relative,
                              sparse=True)
            return torch.ops.efusion_native.fusion(stack.contiguous(), _parameter_vector(params, stack.shape[2]),
                                                   _plan_vector(plan), isinstance(params[4], Tensor), reals, codes)[0]
        return self._fuse_numbers(stack, params, levels, preset, 0.0)

    def fuse_checked(self, stack: Tensor, mask: Tensor | None, params: WeightParams, levels, preset: Preset,
                     relative: bool | None) -> Tensor | None:
        """:meth:`fuse` with the samples checked as :func:`efusion._checks.check_samples` checks them
        (the same ``ValueError``), by the weights pass as it reads them instead of a pass of its own;
        ``None`` where this call does not run that pass (masked, recording gradients, a tensor depth,
        traced): the caller then checks and calls :meth:`fuse`."""
        if mask is not None or needs_grad(stack, *params) or isinstance(levels, Tensor) or torch.compiler.is_compiling():
            return None
        try:
            return self._fuse_numbers(stack, params, levels, preset, _checks.MAX_SAMPLE)
        except RuntimeError as error:
            if not str(error).startswith(_BAD_SAMPLES):
                raise
            refused = error
        _checks.check_samples(stack)  # raises the ValueError that names the frame (outside the except: no chain)
        raise refused

    def _fuse_numbers(self, stack: Tensor, params: WeightParams, levels, preset: Preset, max_sample: float) -> Tensor:
        """No-grad, unmasked ``fuse`` with a number depth, by ``fuse`` or ``fuse_two_pass``."""
        codes, reals = conventions(preset)
        band, residual = self._plan(levels, stack, preset)
        batch, frames, channels, height, width = stack.shape
        weight_bytes = batch * frames * height * width * stack.element_size()
        budget = current_options().get("weight_bytes", DEFAULT_WEIGHT_BYTES)
        op = torch.ops.efusion_native.fuse if frames <= channels or weight_bytes <= budget else \
            torch.ops.efusion_native.fuse_two_pass
        return op(stack.contiguous(), *self._weight_arguments(stack, params), reals, band, residual, codes, max_sample)

    def fuse_frames(self, passes, first_pass, shape, weight_shape, dtype: torch.dtype, device, params: WeightParams,
                    levels, preset: Preset, masked: bool) -> Tensor | None:
        """:func:`efusion.fuse_frames`'s two passes over the frames by ``efusion_native::raw_weights``,
        ``blend_add`` and ``blend_collapse``: the bits of :meth:`fuse` on the stacked frames, in
        the memory of one frame's pyramids and the blended pyramid; with masks (``passes`` yields the
        filled frames), the weights normalised as :func:`~efusion.reference.measures.normalise` does
        under a mask. ``None`` (the caller stacks the frames) when a frame requires a gradient."""
        grad_enabled = torch.is_grad_enabled()
        codes, reals = conventions(preset)
        image = torch.empty(shape, dtype=dtype, device=device)
        like = image if image.dim() == 4 else image.unsqueeze(0)
        weight_arguments = self._weight_arguments(like, params)

        def raw(frame: Tensor) -> Tensor:
            return torch.ops.efusion_native.raw_weights(frame.reshape(like.shape), *weight_arguments, reals, codes)

        # pass 1: the normaliser, summed over frames in the order of the stacked kernels (torch's sum)
        total, count = _FrameSum(), 0
        for frame, mask, requires_grad in first_pass(image):
            if grad_enabled and (requires_grad or (mask is not None and mask.requires_grad)):
                return None
            total.add(raw(frame) if mask is None else raw(frame).mul_(mask))
            count += 1
        if count == 1 and not masked:  # as exposure_fusion: the frame itself
            return image.clone()
        normaliser = total.result()
        no_weight = None
        if masked:  # pixels no frame may contribute to get weight 0 (normalise's where)
            no_weight = torch.logical_not(normaliser > 0)
            normaliser.masked_fill_(no_weight, 1.0)
        band, residual = self._plan(levels, like, preset)
        accumulators = _accumulators(like, band, residual)
        seen = 0
        for frame, mask, _ in passes(image):
            if seen == count:
                raise ValueError(f"frames gave {count} frames on the first pass and more on the second")
            weight = raw(frame) if mask is None else raw(frame).mul_(mask)
            weight.div_(normaliser)
            if no_weight is not None:
                weight.masked_fill_(no_weight, 0.0)
            torch.ops.efusion_native.blend_add(accumulators, frame.reshape(like.shape), weight, band, residual, seen == 0,
                                               reals, codes)
            seen += 1
        if seen != count:
            raise ValueError(f"frames gave {count} frames on the first pass and {seen} on the second")
        result = torch.ops.efusion_native.blend_collapse(accumulators, like, band, residual, reals, codes)
        return result.reshape((*shape[:-3], *result.shape[-3:]))

    @staticmethod
    def fill_masked(frames: Tensor, mask: Tensor, preset: Preset) -> Tensor:
        """:func:`efusion.reference.masks.fill_masked` of streamed frames ``[B, C, H, W]`` (mask
        ``[B or 1, 1, H, W]``) by ``efusion_native::fill_masked`` where the kernels take the call (CPU,
        float32/64, no gradient recorded, eager), else by the reference; the same values either way."""
        if (frames.dim() != 4 or frames.device.type != "cpu" or frames.dtype not in _DTYPES or torch.compiler.is_compiling()
                or needs_grad(frames, mask) or mask.device.type != "cpu" or not supported(preset) or not build.loaded()):
            return reference_fill_masked(frames, mask, preset)
        return _fill_masked(frames.unsqueeze(1), mask.unsqueeze(1), preset).squeeze(1)

    def operator_samples(self) -> list:
        """``(operator, arguments)`` pairs for ``torch.library.opcheck`` (empty when the kernels are unavailable)."""
        if not build.load():
            return []
        g = torch.Generator().manual_seed(0)
        x = torch.rand(1, 3, 3, 9, 11, generator=g)
        w = torch.rand(1, 3, 1, 9, 11, generator=g)
        codes, reals = conventions(_preset("opencv"))
        mertens_codes, mertens_reals = conventions(_preset("mertens"))
        weight_args = [[1.0, 0.5, 2.0], [0.4, 0.5, 0.6], [0.2, 0.2, 0.2], False]
        vector = torch.tensor([0.8, 1.2, 1.5, 0.4, 0.5, 0.6, 0.2, 0.25, 0.3], dtype=torch.float64)
        grad = torch.rand(1, 3, 9, 11, generator=g, dtype=torch.float64)
        plan = torch.tensor([1.0, 0.3, 0.0, 0.0, 0.7, 0.3], dtype=torch.float64)  # a depth of 2.3 levels
        fusion_saved = torch.ops.efusion_native.fusion(x.double(), vector, plan, True, reals, codes)[1:]
        return [
            (torch.ops.efusion_native.fusion.default, [x.double().requires_grad_(), vector.clone().requires_grad_(),
                                                       plan.clone().requires_grad_(), True, reals, codes]),
            (torch.ops.efusion_native.fusion_backward.default, [grad, x.double(), *fusion_saved, vector, plan, True,
                                                                reals, codes, True, True, True]),
            (torch.ops.efusion_native.weights.default, [x, *weight_args, reals, codes]),
            (torch.ops.efusion_native.blend.default, [x, w, [1.0, 0.3, 0.0], [0.0, 0.7, 0.3], reals, codes]),
            (torch.ops.efusion_native.fuse.default, [x.double(), *weight_args, mertens_reals, [1.0, 0.0], [0.0, 1.0],
                                                     mertens_codes]),
            (torch.ops.efusion_native.fill_masked.default, [x[0], (w[0] > 0.3).float(), reals, codes]),
            (torch.ops.efusion_native.fuse_two_pass.default, [x, *weight_args, reals, [1.0, 0.3, 0.0], [0.0, 0.7, 0.3],
                                                              codes]),
        ]


class _FrameSum:
    """The sum over frames, one frame at a time, in the order of torch's vectorised sum over a
    stacked dim (frames added in order, in cascades of 16; ``kernels.cpp``, normalisation)."""

    def __init__(self) -> None:
        self.levels: list[Tensor | None] = [None] * 4
        self.count = 0

    def add(self, x: Tensor) -> None:
        first = self.levels[0]
        self.levels[0] = x.clone() if first is None else first + x
        self.count += 1
        if self.count % 16:
            return
        for j in range(1, 4):  # carry: level j += level j - 1, which restarts at 0
            lower, upper = self.levels[j - 1], self.levels[j]
            self.levels[j] = lower if upper is None else upper if lower is None else upper + lower
            self.levels[j - 1] = None if lower is None else torch.zeros_like(lower)
            if self.count & (15 << (4 * j)):
                break

    def result(self) -> Tensor:
        total = present(self.levels[0])
        for level in self.levels[1:]:
            if level is not None:
                total = total + level
        return total


def _accumulators(like: Tensor, band: list[float], residual: list[float]) -> list[Tensor]:
    """The blended pyramid for ``blend_add``: per level a band and a residual ``[B, C, h, w]``
    (empty where the depth plan has no such term), bands first."""
    batch, channels, height, width = like.shape
    sizes = [(height, width)]
    for _ in range(len(band) - 1):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    empty = like.new_empty(0)
    bands = [like.new_empty((batch, channels, *sizes[l])) if l < len(band) - 1 and band[l] != 0 else empty
             for l in range(len(band))]
    residuals = [like.new_empty((batch, channels, *sizes[l])) if residual[l] != 0 else empty for l in range(len(band))]
    return bands + residuals


def _parameter_vector(params: WeightParams, channels: int) -> Tensor:
    """The five weight parameters as ``efusion_native::fusion``'s float64 vector ``[contrast,
    saturation, exposure, mu_0..mu_{C-1}, sigma_0..sigma_{C-1}]``, built by differentiable steps
    (autograd takes its gradient back to each parameter's shape and dtype). Where the reference
    leaves a parameter unused (the saturation of a gray stack; mu and sigma when the exposure
    exponent is the number 0), a constant stands in, so that it gets no gradient there either."""

    def entries(value, count: int) -> Tensor:
        t = value if isinstance(value, Tensor) else torch.tensor(value, dtype=torch.float64)
        t = t.to(torch.float64).reshape(-1)
        return t.expand(count) if t.numel() == 1 else t

    contrast, saturation, exposure, mu, sigma = params
    if not isinstance(exposure, Tensor) and exposure == 0:
        mu, sigma = (torch.tensor(_values(v, channels), dtype=torch.float64) for v in (mu, sigma))
    return torch.cat([entries(contrast, 1), entries(saturation if channels == 3 else 0.0, 1), entries(exposure, 1),
                      entries(mu, channels), entries(sigma, channels)])


def _plan_vector(plan) -> Tensor:
    """:func:`~efusion.depth.depth_plan`'s ``(band, residual)`` as ``efusion_native::fusion``'s float64
    vector ``[band_0..band_{L-1}, residual_0..residual_{L-1}]`` (differentiable in a tensor depth)."""
    def entry(c) -> Tensor:
        return c.to(torch.float64).reshape(()) if isinstance(c, Tensor) else torch.tensor(float(c), dtype=torch.float64)

    return torch.stack([entry(c) for part in plan for c in part])


def _fusion_setup(ctx, inputs, output) -> None:
    stack, parameters, plan, sigma_tensor, reals, codes = inputs
    _, weights, product, total = output  # what the backward reads: w, the measures' product, the normaliser
    ctx.mark_non_differentiable(weights, product, total)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for those (2 / 3 of a stack and more)
    ctx.save_for_backward(stack, parameters, plan, weights, product, total)
    ctx.arguments = (sigma_tensor, reals, codes)


def _fusion_backward(ctx, grad: Tensor, *_unused: Tensor | None):
    """The kernels' gradient (``efusion_native::fusion_backward``); when autograd records the
    backward (``create_graph=True``), the reference code's, differentiable again. The weights,
    product and normaliser outputs are not differentiable (``_unused``: their gradients, None)."""
    stack, parameters, plan, weights, product, total = ctx.saved_tensors
    sigma_tensor, reals, codes = ctx.arguments
    needs = ctx.needs_input_grad[:3]
    if grad is None:  # gradients are not materialised: the fused image's may be absent
        grad = stack.new_zeros((stack.shape[0], *stack.shape[2:]))
    if torch.is_grad_enabled():
        channels = stack.shape[2]
        preset = preset_of(codes, reals)

        def reference() -> Tensor:
            contrast, saturation, exposure = parameters[0], parameters[1], parameters[2]
            mu = parameters[3:3 + channels]
            sigma = parameters[3 + channels:] if sigma_tensor else float(parameters[3 + channels].detach())
            weights = fusion_weights(stack, None, contrast, saturation, exposure, mu, sigma, preset)
            top = plan.shape[0] // 2
            return reference_blend(stack, weights, None, preset, plan=(list(plan[:top]), list(plan[top:])))

        grads = reference_gradients(reference, [stack, parameters, plan], needs, grad)
        return grads[0], grads[1], grads[2], None, None, None
    grad_stack, grad_parameters, grad_plan = torch.ops.efusion_native.fusion_backward(
        grad.contiguous(), stack, weights, product, total, parameters, plan, sigma_tensor, reals, codes, *needs)
    return (grad_stack if needs[0] else None, grad_parameters.to(parameters.dtype) if needs[1] else None,
            grad_plan.to(plan.dtype) if needs[2] else None, None, None, None)


def _preset(name: str) -> Preset:
    from ...presets import get_preset

    return get_preset(name)


def _fill_masked(stack: Tensor, mask: Tensor, preset: Preset) -> Tensor:
    """:func:`efusion.reference.masks.fill_masked` of a ``[B, N, C, H, W]`` stack by ``efusion_native::fill_masked``."""
    batch, frames, channels, height, width = stack.shape
    valid = (mask > 0).to(stack.dtype).expand(batch, frames, 1, height, width).reshape(batch * frames, 1, height, width)
    codes, reals = conventions(preset)
    filled = torch.ops.efusion_native.fill_masked(stack.reshape(batch * frames, channels, height, width), valid, reals,
                                                  codes)
    return filled.view(stack.shape)


def _register_fakes() -> None:
    """Shape-only kernels for ``torch.compile`` / ``opcheck`` (the C++ side defines the schemas), and
    ``fusion``'s autograd."""

    @torch.library.register_fake("efusion_native::weights")
    def _weights_fake(stack, *args):
        return stack.new_empty((stack.shape[0], stack.shape[1], 1, stack.shape[3], stack.shape[4]))

    @torch.library.register_fake("efusion_native::blend")
    def _blend_fake(stack, weights, *args):
        return stack.new_empty((stack.shape[0], stack.shape[2], stack.shape[3], stack.shape[4]))

    @torch.library.register_fake("efusion_native::fuse")
    def _fuse_fake(stack, *args, **kwargs):
        return stack.new_empty((stack.shape[0], stack.shape[2], stack.shape[3], stack.shape[4]))

    @torch.library.register_fake("efusion_native::fuse_two_pass")
    def _fuse_two_pass_fake(stack, *args, **kwargs):
        return stack.new_empty((stack.shape[0], stack.shape[2], stack.shape[3], stack.shape[4]))

    @torch.library.register_fake("efusion_native::fill_masked")
    def _fill_masked_fake(stack, *args):
        return stack.new_empty(stack.shape)

    @torch.library.register_fake("efusion_native::fusion")
    def _fusion_fake(stack, *args):
        batch, frames, _, height, width = stack.shape
        return (stack.new_empty((batch, stack.shape[2], height, width)), stack.new_empty((batch, frames, 1, height, width)),
                stack.new_empty((batch, frames, 1, height, width)), stack.new_empty((batch, 1, 1, height, width)))

    @torch.library.register_fake("efusion_native::fusion_backward")
    def _fusion_backward_fake(grad, stack, weights, product, total, parameters, plan, *args):
        stack_grad = args[-3]
        return (stack.new_empty(stack.shape if stack_grad else (0,)),
                parameters.new_empty(parameters.shape, dtype=torch.float64), plan.new_empty(plan.shape, dtype=torch.float64))

    torch.library.register_autograd("efusion_native::fusion", _fusion_backward, setup_context=_fusion_setup)


build.on_load(_register_fakes)

BACKEND: NativeBackend = NativeBackend()
