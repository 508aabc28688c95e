"""Weight kernels of the ``"cpu"`` backend: :func:`efusion.reference.measures.fusion_weights` band by
band into reused buffers, and its gradient written by hand.

The same operations as :func:`~efusion.reference.measures.raw_weights` and
:func:`~efusion.reference.measures.normalise` in the same order (so the same bits with exponents
1), written into reusable buffers one band of rows at a time: the ~30 elementwise passes of the
three measures then run on data in cache, and the normalisation of a band over all frames
happens while the band's weights are still there.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..._util import ParamLike, WeightParams, f32, is_one, is_zero, number, present, scale_
from ...presets import Preset
from ...reference.measures import WEIGHT_FLOOR, cast_param, fusion_weights, per_channel
from ...reference.pyramid import border_index
from ..gradients import reference_gradients
from .pyramid import Workspace, band_rows


def kernel_params(params: Sequence[ParamLike], dtype: torch.dtype, device: torch.device) -> WeightParams:
    """``(contrast, saturation, exposure, mu, sigma)`` for the band kernels: cast, and on a CPU the
    three exponents as numbers even when they are tensors.

    A number exponent takes ``pow``'s scalar paths (1 is a copy, 0.5 a square root; a 0-dim tensor
    always takes the general one, several times slower) and lets the kernels skip a power of 1, as
    for the defaults. Values are unchanged (``m ** 1 == m``); which exponents get a gradient is
    decided by the backward's ``wanted``, not by their type. Off the CPU they stay tensors (reading
    one would wait for the device).
    """
    contrast, saturation, exposure, mu, sigma = (cast_param(p, dtype, device) for p in params)
    return number(contrast), number(saturation), number(exposure), mu, sigma


def _luma_band_into(frame: Tensor, r0: int, r1: int, out: Tensor, preset: Preset, ws: Workspace) -> None:
    """Equals :func:`~efusion.reference.measures.luma`: gray rows ``[r0, r1)`` of ``frame [..., C, H, W]`` into ``out [..., 1, r1 - r0, W]``."""
    x = frame[..., r0:r1, :]
    if x.shape[-3] == 1:
        out.copy_(x)
        return
    wr, wg, wb = preset.luma_weights
    r, g, b = preset.channels(x)
    if preset.luma_form == "opencv_fma" and x.dtype == torch.float32:
        # luma()'s float64 emulation of OpenCV's fma(b, wb, fma(r, wr, g * wg))
        single = ws.get("luma_f32", out.shape)
        green, acc = ws.get("luma_f64a", out.shape, torch.float64), ws.get("luma_f64b", out.shape, torch.float64)
        torch.mul(g, wg, out=single)
        green.copy_(single)
        acc.copy_(r).mul_(f32(wr)).add_(green)
        single.copy_(acc)
        green.copy_(single)
        acc.copy_(b).mul_(f32(wb)).add_(green)
        out.copy_(acc)
        return
    term = ws.get("luma_term", out.shape)
    torch.mul(r, wr, out=out)
    out.add_(torch.mul(g, wg, out=term))
    out.add_(torch.mul(b, wb, out=term))


def _contrast_band_into(frame: Tensor, r0: int, r1: int, out: Tensor, preset: Preset, ws: Workspace) -> None:
    """Equals :func:`~efusion.reference.measures.contrast`: ``|Laplacian(luma)|`` rows ``[r0, r1)`` into ``out [..., 1, r1 - r0, W]``."""
    _laplacian_band_into(frame, r0, r1, out, preset, ws)
    out.abs_()


def _laplacian_band_into(frame: Tensor, r0: int, r1: int, out: Tensor, preset: Preset, ws: Workspace) -> None:
    """Equals :func:`~efusion.reference.measures.laplacian` of :func:`~efusion.reference.measures.luma` (signed) on rows ``[r0, r1)`` into ``out [..., 1, r1 - r0, W]``."""
    height, width = frame.shape[-2:]
    mode = preset.laplacian_border
    # gray rows r0 - 1 .. r1 with one column of border on each side
    shape = list(out.shape)
    shape[-2], shape[-1] = r1 - r0 + 2, width + 2
    gray = ws.get("gray", shape)
    lo, hi = max(r0 - 1, 0), min(r1 + 1, height)
    _luma_band_into(frame, lo, hi, gray[..., lo - r0 + 1:hi - r0 + 1, 1:width + 1], preset, ws)
    if r0 == 0:
        gray[..., 0, 1:width + 1].copy_(gray[..., border_index(-1, height, mode) + 1, 1:width + 1])
    if r1 == height:
        gray[..., -1, 1:width + 1].copy_(gray[..., border_index(height, height, mode) - r0 + 1, 1:width + 1])
    gray[..., 0].copy_(gray[..., border_index(-1, width, mode) + 1])
    gray[..., -1].copy_(gray[..., border_index(width, width, mode) + 1])
    centre = gray[..., 1:-1, 1:-1]
    up, down = gray[..., :-2, 1:-1], gray[..., 2:, 1:-1]
    left, right = gray[..., 1:-1, :-2], gray[..., 1:-1, 2:]
    if preset.laplacian_form == "differences":  # as measures.laplacian(): exact zeros where neighbours cancel
        pair, other = ws.get("lap_a", out.shape), ws.get("lap_b", out.shape)
        torch.sub(up, centre, out=out)
        out.add_(torch.sub(down, centre, out=pair))
        torch.sub(left, centre, out=pair)
        pair.add_(torch.sub(right, centre, out=other))
        out.add_(pair)
    else:
        term = ws.get("lap_a", out.shape)
        torch.add(up, left, out=out)
        out.add_(torch.mul(centre, -4.0, out=term))
        out.add_(right)
        out.add_(down)
    if preset.flat_contrast and out.dtype == torch.float32:  # as measures.laplacian(): float32 rounding is not contrast
        flat = ws.get("lap_flat", out.shape, torch.bool)
        out.masked_fill_(torch.lt(torch.abs(out, out=ws.get("lap_a", out.shape)), preset.flat_contrast, out=flat), 0.0)


def _saturation_squared_band_into(x: Tensor, out: Tensor, preset: Preset, ws: Workspace) -> None:
    """:func:`~efusion.reference.measures.saturation_squared` of the band ``x [..., 3, k, W]`` into ``out [..., 1, k, W]``."""
    r, g, b = preset.channels(x)
    term = ws.get("sat_term", out.shape)
    if preset.saturation_form == "pairwise":
        torch.sub(r, g, out=out).square_()
        out.add_(torch.sub(g, b, out=term).square_())
        out.add_(torch.sub(b, r, out=term).square_())
        out.div_(9.0)
        return
    mean = ws.get("sat_mean", out.shape)
    torch.add(r, g, out=mean).add_(b).mul_(f32(1.0 / 3.0) if x.dtype == torch.float32 else 1.0 / 3.0)
    torch.sub(r, mean, out=out).square_()
    out.add_(torch.sub(g, mean, out=term).square_())
    out.add_(torch.sub(b, mean, out=term).square_())


def _log_well_exposedness_band_into(x: Tensor, out: Tensor, mu: ParamLike, sigma: ParamLike, ws: Workspace) -> None:
    """:func:`~efusion.reference.measures.log_well_exposedness` of the band ``x [..., C, k, W]`` into ``out [..., 1, k, W]``."""
    mu, sigma = per_channel(mu, x), per_channel(sigma, x)
    term = ws.get("exp_term", out.shape)
    for c in range(x.shape[-3]):
        target = out if c == 0 else term
        torch.sub(x[..., c:c + 1, :, :], _channel_value(mu, c), out=target).square_()
        if isinstance(sigma, Tensor):
            target.div_(_channel_value(sigma, c) ** 2)
        if c:
            out.add_(term)
    out.mul_(-0.5 if isinstance(sigma, Tensor) else -0.5 / (sigma * sigma))


def _channel_value(value: ParamLike, channel: int) -> ParamLike:
    """Channel ``channel``'s entry of a ``per_channel`` value (a number, 0-dim or ``[C or 1, 1, 1]``)."""
    if isinstance(value, Tensor) and value.dim() == 3:
        return value[channel if value.shape[0] > 1 else 0]
    return value


def _power_(measure: Tensor, exponent: ParamLike, log_scale: float, ws: Workspace) -> None:
    """Equals :func:`~efusion.reference.measures.power` (``power(measure, exponent, log_scale)``) in place, as ``measure ** (exponent * log_scale)``.

    ``pow`` has ``power``'s values where they matter, 0 ** p = 0 for p > 0 and x ** 0 = 1 (also
    at 0), in one pass instead of ``exp(p * log(x))``'s several; elsewhere they differ by rounding.
    """
    measure.pow_(exponent * log_scale if log_scale != 1.0 else exponent)


def _raw_weights_band_into(
    frame: Tensor, r0: int, r1: int, out: Tensor, contrast_exponent, saturation_exponent, exposure_exponent,
    mu, sigma, preset: Preset, ws: Workspace,
) -> None:
    """Equals :func:`~efusion.reference.measures.raw_weights` on rows ``[r0, r1)`` of ``frame [..., C, H, W]`` into ``out [..., 1, r1 - r0, W]``."""

    x = frame[..., r0:r1, :]
    started = False
    factor = ws.get("factor", out.shape)
    if not is_zero(contrast_exponent):
        _contrast_band_into(frame, r0, r1, out, preset, ws)
        if not is_one(contrast_exponent):
            _power_(out, contrast_exponent, 1.0, ws)
        started = True
    if x.shape[-3] == 3 and not is_zero(saturation_exponent):
        target = factor if started else out
        _saturation_squared_band_into(x, target, preset, ws)
        if is_one(saturation_exponent):
            target.sqrt_()
        else:
            _power_(target, saturation_exponent, 0.5, ws)
        if started:
            out.mul_(factor)
        started = True
    if not is_zero(exposure_exponent):
        target = factor if started else out
        _log_well_exposedness_band_into(x, target, mu, sigma, ws)
        if isinstance(exposure_exponent, Tensor):
            target.mul_(exposure_exponent.to(x.dtype))
        elif exposure_exponent != 1:
            target.mul_(exposure_exponent)
        target.exp_()
        if started:
            out.mul_(factor)
        started = True
    if not started:
        out.fill_(1.0)
    out.add_(WEIGHT_FLOOR)


def weights_into(
    stack: Tensor,
    out: Tensor,
    mask: Tensor | None,
    contrast: ParamLike,
    saturation: ParamLike,
    exposure: ParamLike,
    mu: ParamLike,
    sigma: ParamLike,
    preset: Preset,
    ws: Workspace,
    rows: int,
    total: Tensor | None = None,
) -> None:
    """Equals :func:`efusion.reference.measures.fusion_weights`: the weights of a float32/float64 ``[B, N, C, H, W]`` stack into ``out [B, N, 1, H, W]``.

    Band by band: the raw weights of every frame for a band of rows, then their normalisation.
    ``total [B, 1, 1, H, W]``, when given, receives the normaliser (1 where nothing is left).
    """
    height = stack.shape[-2]
    params = kernel_params((contrast, saturation, exposure, mu, sigma), stack.dtype, stack.device)
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        band = out[..., r0:r1, :]
        for n in range(stack.shape[1]):
            _raw_weights_band_into(stack[:, n], r0, r1, band[:, n], *params, preset, ws)
        _normalise_band_(band, _rows(mask, r0, r1), ws, None if total is None else total[..., r0:r1, :])


def _rows(x: Tensor | None, r0: int, r1: int) -> Tensor | None:
    """Rows ``[r0, r1)`` of a map that may broadcast along rows (size 1) or be absent."""
    if x is None or x.shape[-2] == 1:
        return x
    return x[..., r0:r1, :]


def raw_weights_into(
    frame: Tensor,
    out: Tensor,
    contrast: ParamLike,
    saturation: ParamLike,
    exposure: ParamLike,
    mu: ParamLike,
    sigma: ParamLike,
    preset: Preset,
    ws: Workspace,
    rows: int,
) -> None:
    """Unnormalised weights ``C^c S^s E^e + 1e-12`` of a float32/float64 frame ``[B, C, H, W]``
    into ``out [B, 1, H, W]``, band by band (the streaming path normalises them itself)."""
    params = kernel_params((contrast, saturation, exposure, mu, sigma), frame.dtype, frame.device)
    for r0 in range(0, frame.shape[-2], rows):
        r1 = min(r0 + rows, frame.shape[-2])
        _raw_weights_band_into(frame, r0, r1, out[..., r0:r1, :], *params, preset, ws)


def _normalise_band_(weight: Tensor, mask: Tensor | None, ws: Workspace, total: Tensor | None = None) -> None:
    """Equals :func:`~efusion.reference.measures.normalise`, in place on a band ``[B, N, 1, k, W]`` (the normaliser into ``total``)."""
    shape = list(weight.shape)
    shape[1] = 1
    total = ws.get("total", shape) if total is None else total
    if mask is None:
        weight.div_(torch.sum(weight, dim=1, keepdim=True, out=total))
        return
    weight.mul_(mask)
    torch.sum(weight, dim=1, keepdim=True, out=total)
    no_weight = torch.logical_not(torch.gt(total, 0, out=ws.get("has_weight", shape, torch.bool)),
                                  out=ws.get("no_weight", shape, torch.bool))
    weight.div_(total.masked_fill_(no_weight, 1.0))
    weight.masked_fill_(no_weight, 0.0)


class WeightsFunction(torch.autograd.Function):
    """:func:`efusion.reference.measures.fusion_weights` (float32/float64, eager) as an autograd function.

    Forward: the band kernels. Backward: :func:`weights_backward` (the normalisation's gradient in
    closed form, then the measures recomputed and differentiated by hand, band by band), or, when
    autograd records the backward (``create_graph=True``), the reference code's gradient
    (:func:`efusion.backends.gradients.reference_gradients`), so second derivatives work.
    ``apply(stack, mask, contrast, saturation, exposure, mu, sigma, preset)``; the mask gets no
    gradient.
    """

    @staticmethod
    def forward(ctx, stack, mask, contrast, saturation, exposure, mu, sigma, preset):
        params = (contrast, saturation, exposure, mu, sigma)
        weights = torch.empty_like(stack[:, :, :1])
        total = torch.empty_like(weights[:, :1])
        weights_into(stack, weights, mask, *params, preset, Workspace(stack), band_rows(stack[:, 0].shape, stack.device), total)
        ctx.preset = preset
        ctx.numbers = [None if isinstance(p, Tensor) else p for p in params]
        ctx.save_for_backward(stack, mask, weights, total, *[p if isinstance(p, Tensor) else None for p in params])
        return weights

    @staticmethod
    def backward(ctx, grad):
        stack, mask, weights, total, *tensors = ctx.saved_tensors
        params = [t if t is not None else number for t, number in zip(tensors, ctx.numbers)]
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True
            grads = reference_gradients(lambda: fusion_weights(stack, mask, *params, ctx.preset),
                                        [stack, mask, *params], needs[:7], grad)
            return (*grads, None)
        grads = weights_backward(stack, mask, weights, total, params, grad, ctx.preset, needs[0], needs[2:7])
        return (grads[0], None, *grads[1:], None)


def weights_backward(stack, mask, weights, total, params, grad, preset, stack_needs_grad, params_need_grad, grad_stack=None,
                     ws: Workspace | None = None):
    """Gradients of :class:`WeightsFunction` for the stack and the five parameters.

    The stack's is added into ``grad_stack`` when given (else a new tensor); returns
    ``[grad_stack, grad_contrast, ..., grad_sigma]`` (``None`` where not needed or not used).
    See :class:`WeightsBackward`, which takes the weights' gradient ``grad`` band by band.
    """
    backward = WeightsBackward(stack, mask, weights, total, params, preset, stack_needs_grad, params_need_grad,
                               grad_stack, ws)
    height = stack.shape[-2]
    for r0 in range(0, height, backward.rows):
        r1 = min(r0 + backward.rows, height)
        backward.band(grad[..., r0:r1, :], r0, r1)
    return backward.result()


class WeightsBackward:
    """:func:`weights_backward` one band of rows at a time (``band(grad_rows, r0, r1)`` for the bands
    of :attr:`rows` rows, then :meth:`result`), so that a caller can produce the weights' gradient
    band by band and hand each over while it is in cache.

    Per band: the normalisation's gradient in closed form, then each frame's measures are
    recomputed by the band kernels and differentiated by hand (:func:`_raw_weights_backward_band`),
    with the reference code's conventions at the kinks (0 where a measure is 0).
    """

    names = ("contrast", "saturation", "exposure", "mu", "sigma")

    def __init__(self, stack, mask, weights, total, params, preset, stack_needs_grad, params_need_grad,
                 grad_stack=None, ws: Workspace | None = None) -> None:
        self.stack, self.mask, self.weights, self.total, self.params, self.preset = stack, mask, weights, total, params, preset
        self.rows = band_rows(stack[:, 0].shape, stack.device)
        self.ws = Workspace(stack) if ws is None else ws
        if stack_needs_grad and grad_stack is None:
            grad_stack = torch.zeros_like(stack)
        self.grad_stack = grad_stack if stack_needs_grad else None
        self.values = kernel_params(params, stack.dtype, stack.device)
        self.sums: dict[str, Tensor] = {}
        self.wanted = {name for name, need in zip(self.names, params_need_grad) if need}

    def band(self, band_grad: Tensor, r0: int, r1: int) -> None:
        """Backpropagate rows ``[r0, r1)`` of the weights' gradient (``band_grad [B, N, 1, r1 - r0, W]``)."""
        ws = self.ws
        # w_n = m_n W_n / T with T = sum_k m_k W_k, so dL/dW_n = m_n (g_n - sum_k g_k w_k) / T
        shape = list(band_grad.shape)
        raw_grad = ws.get("raw_grad", shape)
        torch.mul(band_grad, self.weights[..., r0:r1, :], out=raw_grad)
        shape[1] = 1
        dot = torch.sum(raw_grad, dim=1, keepdim=True, out=ws.get("dot", shape))
        torch.sub(band_grad, dot, out=raw_grad).div_(self.total[..., r0:r1, :])
        if self.mask is not None:
            raw_grad.mul_(present(_rows(self.mask, r0, r1)))
        for n in range(self.stack.shape[1]):
            _raw_weights_backward_band(
                self.stack[:, n], r0, r1, raw_grad[:, n], None if self.grad_stack is None else self.grad_stack[:, n],
                self.values, self.wanted, self.sums, self.preset, ws,
            )

    def result(self) -> list:
        """``[grad_stack, grad_contrast, ..., grad_sigma]`` once every band is done."""
        out = [self.grad_stack]
        for name, p in zip(self.names, self.params):
            total_grad = self.sums.get(name)
            if name not in self.wanted or total_grad is None:  # not needed, or the parameter was not used
                out.append(None)
                continue
            out.append(total_grad.reshape(p.shape).to(p.dtype))
        return out


def _add_sum(sums: dict, name: str, value: Tensor) -> None:
    sums[name] = value if name not in sums else sums[name] + value


def _raw_weights_backward_band(frame, r0, r1, raw_grad, grad_frame, values, wanted, sums, preset, ws) -> None:
    """Backpropagate ``raw_grad`` (the gradient of rows ``[r0, r1)`` of ``raw_weights(frame)``)
    into ``grad_frame`` (when given) and the parameter sums.

    ``W = P + 1e-12`` where ``P`` multiplies the factors ``m ** (p k)`` of the contrast
    (``m = |Laplacian|``, k = 1) and the saturation (``m = S^2``, k = 1/2) with the exposure's
    ``exp(e log E)``. All gradients go through one map, ``Q = raw_grad * P``:
    ``d/dp = k sum(Q log m)``, ``d/dm = Q p k / m`` and ``d/d(log E) = Q e``, ``d/de = sum(Q log E)``.
    Where a measure is 0 either ``P`` is 0 or the exponent is, so taking the log of (and dividing
    by) 1 there gives the reference's gradients, 0 (``power``'s and ``safe_sqrt``'s convention;
    the Laplacian's ``sign`` is 0 there too).
    """
    contrast_exponent, saturation_exponent, exposure_exponent, mu, sigma = values
    x = frame[..., r0:r1, :]
    shape = raw_grad.shape

    def used(name: str, exponent: ParamLike) -> bool:
        return name in wanted or isinstance(exponent, Tensor) or exponent != 0

    # the measures, then P as the product of their factors (see _raw_weights_band_into)
    measures = []  # (name, measure, its exponent, k)
    if used("contrast", contrast_exponent):
        laplacian = ws.get("bw_laplacian", shape)
        _laplacian_band_into(frame, r0, r1, laplacian, preset, ws)
        measures.append(("contrast", torch.abs(laplacian, out=ws.get("bw_contrast", shape)), contrast_exponent, 1.0))
    if x.shape[-3] == 3 and used("saturation", saturation_exponent):
        squared = ws.get("bw_saturation_squared", shape)
        _saturation_squared_band_into(x, squared, preset, ws)
        measures.append(("saturation", squared, saturation_exponent, 0.5))
    exposure = used("exposure", exposure_exponent)
    if not measures and not exposure:
        return  # W is a constant
    q = ws.get("bw_q", shape)
    factor = ws.get("bw_factor", shape)
    for i, (_, measure, exponent, k) in enumerate(measures):
        torch.pow(measure, exponent * k if k != 1.0 else exponent, out=q if i == 0 else factor)
        if i:
            q.mul_(factor)
    if exposure:
        log_e = ws.get("bw_log_exposure", shape)
        _log_well_exposedness_band_into(x, log_e, mu, sigma, ws)
        target = q if not measures else factor
        if is_one(exposure_exponent):
            torch.exp(log_e, out=target)
        else:
            torch.mul(log_e, exposure_exponent, out=target).exp_()
        if measures:
            q.mul_(factor)
    q.mul_(raw_grad)  # Q
    band_grad = None if grad_frame is None else grad_frame[..., r0:r1, :]  # added into directly
    measure_grad = ws.get("bw_measure_grad", shape)
    for name, measure, exponent, k in measures:
        if name not in wanted and grad_frame is None:
            continue
        zero = torch.eq(measure, 0, out=ws.get("bw_zero", shape))  # 1.0 where the measure is 0
        # the measure with 1 where it is 0, for log m and (saturation) Q / m
        safe = torch.add(measure, zero, out=factor) if name in wanted or name == "saturation" else None
        if grad_frame is not None:
            if name == "contrast":  # d/dL = Q c / L: the sign of L included, 1 put where L is 0
                torch.div(q, torch.add(laplacian, zero, out=measure_grad), out=measure_grad)
                scale_(measure_grad, exponent)
                _laplacian_adjoint_add_(measure_grad, r0, r1, grad_frame, _luma_gradient_weights(frame, preset), preset, ws)
            else:
                scale_(torch.div(q, present(safe), out=measure_grad), exponent * k)
                _saturation_squared_backward_add_(x, measure_grad, present(band_grad), preset, ws)
        if name in wanted:
            _add_sum(sums, name, torch.dot(q.view(-1), present(safe).log_().view(-1)) * k)
    if exposure:
        if "exposure" in wanted:
            _add_sum(sums, "exposure", torch.dot(q.view(-1), log_e.view(-1)))
        if band_grad is not None or {"mu", "sigma"} & wanted:
            exposure_grad = q if is_one(exposure_exponent) else torch.mul(q, exposure_exponent, out=measure_grad)
            _log_well_exposedness_backward_(x, exposure_grad, band_grad, mu, sigma, wanted, sums, ws, log_e)


def _luma_gradient_weights(frame: Tensor, preset: Preset) -> tuple[float, ...]:
    """d gray / d channel (the float32 weights of OpenCV's cvtColor for its emulation)."""
    if frame.shape[-3] == 1:
        return (1.0,)
    if preset.luma_form == "opencv_fma" and frame.dtype == torch.float32:
        return tuple(f32(w) for w in preset.luma_by_channel)
    return preset.luma_by_channel


def _laplacian_adjoint_add_(grad: Tensor, r0: int, r1: int, grad_frame: Tensor, luma_weights, preset: Preset,
                            ws: Workspace) -> None:
    """``grad_frame += luma^T Laplacian^T grad`` for the Laplacian rows ``[r0, r1)``.

    The band's share is scattered into rows ``r0 - 1 .. r1`` (neighbouring bands add theirs);
    taps the Laplacian read beyond the image (border copies) are folded back onto their sources.
    """
    height, width = grad_frame.shape[-2:]
    mode = preset.laplacian_border
    shape = list(grad.shape)
    shape[-2], shape[-1] = r1 - r0 + 2, width + 2
    spread = ws.get("bw_spread", shape)  # rows r0 - 1 .. r1, columns -1 .. width
    spread.zero_()
    torch.mul(grad, -4.0, out=spread[..., 1:-1, 1:-1])
    spread[..., :-2, 1:-1].add_(grad)
    spread[..., 2:, 1:-1].add_(grad)
    spread[..., 1:-1, :-2].add_(grad)
    spread[..., 1:-1, 2:].add_(grad)
    spread[..., border_index(-1, width, mode) + 1].add_(spread[..., 0])
    spread[..., border_index(width, width, mode) + 1].add_(spread[..., -1])
    if r0 == 0:
        spread[..., border_index(-1, height, mode) + 1, :].add_(spread[..., 0, :])
    if r1 == height:
        spread[..., border_index(height, height, mode) - r0 + 1, :].add_(spread[..., -1, :])
    lo, hi = max(r0 - 1, 0), min(r1 + 1, height)
    source = spread[..., lo - r0 + 1:hi - r0 + 1, 1:-1]
    for c, weight in enumerate(luma_weights):
        grad_frame[..., c:c + 1, lo:hi, :].add_(source, alpha=weight)


def _saturation_squared_backward_add_(x: Tensor, grad: Tensor, out: Tensor, preset: Preset, ws: Workspace) -> None:
    """``out [..., 3, k, W] += d saturation_squared(x) / dx * grad``.

    The derivative of the forward's operations as they are rounded (as autograd through them
    would take it): near gray pixels the saturation's gradient ``(c - m) / S`` is a ratio of
    rounding-sized numbers, which the reference path's gradients decide.
    """
    r, g, b = preset.channels(x)
    out_r, out_g, out_b = preset.channels(out)
    shape = grad.shape
    if preset.saturation_form == "pairwise":  # s2 = ((r-g)^2 + (g-b)^2 + (b-r)^2) / 9
        red_green, green_blue, blue_red = (ws.get(f"bw_pair{i}", shape) for i in range(3))
        torch.sub(r, g, out=red_green)
        torch.sub(g, b, out=green_blue)
        torch.sub(b, r, out=blue_red)
        difference = ws.get("bw_diff", shape)
        out_r.addcmul_(grad, torch.sub(red_green, blue_red, out=difference), value=2.0 / 9.0)
        out_g.addcmul_(grad, torch.sub(green_blue, red_green, out=difference), value=2.0 / 9.0)
        out_b.addcmul_(grad, torch.sub(blue_red, green_blue, out=difference), value=2.0 / 9.0)
        return
    # s2 = sum_c (c - m)^2 with m = (r + g + b) k: d s2 / dc = 2 (c - m) - 2 k sum_c' (c' - m)
    third = f32(1.0 / 3.0) if x.dtype == torch.float32 else 1.0 / 3.0
    mean = ws.get("bw_mean", shape)
    torch.add(r, g, out=mean).add_(b).mul_(third)
    deviations = [torch.sub(channel, mean, out=ws.get(f"bw_dev{i}", shape)) for i, channel in enumerate((r, g, b))]
    shared = ws.get("bw_shared", shape)
    torch.add(deviations[0], deviations[1], out=shared).add_(deviations[2]).mul_(third)
    for target, deviation in zip((out_r, out_g, out_b), deviations):
        target.addcmul_(grad, deviation.sub_(shared), value=2.0)


def _log_well_exposedness_backward_(x: Tensor, grad: Tensor, out: Tensor | None, mu, sigma, wanted: set, sums: dict,
                                    ws: Workspace, log_e: Tensor | None = None) -> None:
    """Backpropagate ``grad`` of ``log_well_exposedness(x, mu, sigma)`` into ``out`` and mu, sigma.

    log E = -1/2 sum_c (x_c - mu_c)^2 / sigma_c^2: d/dx_c = -(x_c - mu_c) / sigma_c^2 = -d/dmu_c,
    d/dsigma_c = (x_c - mu_c)^2 / sigma_c^3. With one sigma for every channel the latter sum to
    ``-2 log E / sigma``, taken from ``log_e`` (the forward value) when given.
    """
    mu_c_all, sigma_c_all = per_channel(mu, x), per_channel(sigma, x)
    channels = x.shape[-3]
    want_mu = "mu" in wanted and isinstance(mu, Tensor)
    want_sigma = "sigma" in wanted and isinstance(sigma, Tensor)
    mu_sums, sigma_sums = [], []
    if want_sigma and log_e is not None and sigma.numel() == 1:
        sigma_sums.append(torch.dot(grad.view(-1), log_e.view(-1)) * (-2.0 / number(sigma.reshape(()))))
        want_sigma = False
    deviation = ws.get("bw_deviation", grad.shape)
    for c in range(channels):
        sigma_c = number(_channel_value(sigma_c_all, c))
        inverse_variance = 1.0 / (sigma_c * sigma_c)
        torch.sub(x[..., c:c + 1, :, :], _channel_value(mu_c_all, c), out=deviation)
        if want_mu:  # d/dmu_c = -d/dx_c
            mu_sums.append(torch.dot(deviation.view(-1), grad.view(-1)) * inverse_variance)
        if want_sigma:
            weighted = torch.mul(deviation, grad, out=ws.get("bw_weighted_deviation", grad.shape))
            sigma_sums.append(torch.dot(weighted.view(-1), deviation.view(-1)) * inverse_variance / sigma_c)
        if out is not None:
            if isinstance(inverse_variance, Tensor):
                out[..., c:c + 1, :, :].addcmul_(deviation.mul_(inverse_variance), grad, value=-1.0)
            else:
                out[..., c:c + 1, :, :].addcmul_(deviation, grad, value=-inverse_variance)
    for name, parts, value in (("mu", mu_sums, mu), ("sigma", sigma_sums, sigma)):
        if parts:
            one_per_channel = isinstance(value, Tensor) and value.dim() == 1 and value.numel() == channels and channels > 1
            _add_sum(sums, name, torch.stack(parts) if one_per_channel else torch.stack(parts).sum())
