"""Pyramid kernels of the ``"cpu"`` backend: :mod:`efusion.reference.pyramid`'s filters and their
adjoints written into preallocated buffers, one band of rows at a time (no autograd graph).

``down_into`` equals :func:`efusion.reference.pyramid.pyr_down`, ``add_up_into`` adds
:func:`~efusion.reference.pyramid.pyr_up`, ``accumulate_band_into`` adds a weighted level of
:func:`~efusion.reference.pyramid.laplacian_pyramid`; the ``*_adjoint_*`` kernels are the
transposes the hand-written backward passes need.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ...presets import Preset
from ...reference.pyramid import border_index
from .. import current_options

# ----------------------------------------------------------------------------------------------
# The functions above are the reference: clear, differentiable, and what ``torch.compile`` traces.
# The kernels below compute the same filters, and their adjoints for hand-written backward
# passes, into preallocated buffers. Three things make them fast on a CPU: (1) no fresh large
# tensors, because the first touch of freshly mapped memory (page faults) costs more than the
# arithmetic done on it; (2) images are processed in bands of rows small enough for the
# temporaries of all the passes over a band to stay in cache; (3) the 1/16 and 1/8 tap
# normalisations are powers of two, so they are exact and folded into one scaling per 2-D
# operation. Tap sums use ``add_(..., alpha=)`` (a fused multiply-add): the rounding differs
# from the reference by an ulp, never structurally (the pyramid is linear).
#
# Adjoints. Along one axis, downsampling D reads x[2j + k] with taps (1, 4, 6, 4, 1), k = -2..2,
# and upsampling U writes y[2i + k] with the same taps. So the adjoint of D is U with zero
# borders and the adjoint of U is D with zero borders, plus "folds": a tap that D (or U) reads
# outside the axis is a mirrored copy of a sample inside, and its share of the gradient goes
# back to that sample.

_TAPS = ((-2, 1.0), (-1, 4.0), (0, 6.0), (1, 4.0), (2, 1.0))


def _axis(x: Tensor, dim: int, start: int, stop: int, step: int = 1) -> Tensor:
    """``x[..., start:stop:step]`` along ``dim`` (-1: columns, -2: rows), a view."""
    if dim == -1:
        return x[..., start:stop:step]
    return x[..., start:stop:step, :]


def _sample(x: Tensor, dim: int, index: int) -> Tensor:
    return x.narrow(dim, index, 1)


def _source(i: int, n: int, mode: str) -> int | None:
    """Index of the sample that stands for sample ``i`` of an axis of ``n``; ``None`` when it is 0."""
    if 0 <= i < n:
        return i
    return None if mode == "zero" else border_index(i, n, mode)


def _weighted_sum_into(out: Tensor, terms: list[tuple[float, Tensor | None]]) -> None:
    """``out = sum(weight * term)``, skipping ``None`` (zero) terms, in the interior kernels' order."""
    present = [(weight, term) for weight, term in terms if term is not None]
    if not present:
        out.zero_()
        return
    weight, term = present[0]
    torch.mul(term, weight, out=out) if weight != 1.0 else out.copy_(term)
    for weight, term in present[1:]:
        out.add_(term, alpha=weight)


def _down_taps_into(x: Tensor, dim: int, centre: int, mode: str, out: Tensor) -> None:
    """One output sample of the unscaled 5-tap filter at input ``centre``, borders by ``mode``."""
    n = x.shape[dim]
    taps = {k: _source(centre + k, n, mode) for k in (-2, -1, 0, 1, 2)}
    sample = {k: None if i is None else _sample(x, dim, i) for k, i in taps.items()}
    _weighted_sum_into(out, [(1.0, sample[-2]), (1.0, sample[2]), (6.0, sample[0]), (4.0, sample[-1]), (4.0, sample[1])])


def _down_1d_into(x: Tensor, out: Tensor, dim: int, mode: str, start: int = 0) -> None:
    """``out`` = 16 x (5-tap filter, keep even samples) of ``x`` along ``dim``.

    ``x`` spans the whole axis; ``out`` holds output samples ``start, start + 1, ...`` of the
    ``ceil(n / 2)`` (a band, when filtering rows band by band).
    """
    n = x.shape[dim]
    m = (n + 1) // 2
    stop = start + out.shape[dim]
    # interior: output j reads x[2j - 2 .. 2j + 2], all inside for 1 <= j <= m - 2
    lo, hi = max(start, 1), min(stop, m - 1)
    if lo < hi:
        o = _axis(out, dim, lo - start, hi - start)
        torch.add(_axis(x, dim, 2 * lo - 2, 2 * hi - 2, 2), _axis(x, dim, 2 * lo + 2, 2 * hi + 2, 2), out=o)
        o.add_(_axis(x, dim, 2 * lo, 2 * hi, 2), alpha=6.0)
        o.add_(_axis(x, dim, 2 * lo - 1, 2 * hi - 1, 2), alpha=4.0)
        o.add_(_axis(x, dim, 2 * lo + 1, 2 * hi + 1, 2), alpha=4.0)
    for j in sorted({0, m - 1}):
        if start <= j < stop:
            _down_taps_into(x, dim, 2 * j, mode, _sample(out, dim, j - start))


def _up_taps_into(c: Tensor, dim: int, i: int, odd: bool, modes: tuple[str, str], out: Tensor) -> None:
    """One fine sample (2i or 2i + 1) of the unscaled upsampling filter, borders by ``modes``."""
    m = c.shape[dim]

    def tap(k: int) -> Tensor | None:
        index = _source(k, m, modes[0] if k < 0 else modes[1])
        return None if index is None else _sample(c, dim, index)

    if odd:
        _weighted_sum_into(out, [(4.0, tap(i + 1)), (4.0, tap(i))])
    else:
        _weighted_sum_into(out, [(1.0, tap(i - 1)), (1.0, tap(i + 1)), (6.0, tap(i))])


def _up_1d_into(c: Tensor, out: Tensor, dim: int, modes: tuple[str, str]) -> None:
    """``out`` = 8 x (zero insertion, 5-tap filter times 2) of ``c`` along ``dim``, cropped.

    ``c`` has ``m`` samples along ``dim`` and ``out`` ``2m - 1`` or ``2m``. The two polyphase
    components: fine sample 2i = c[i-1] + 6 c[i] + c[i+1], fine sample 2i+1 = 4 c[i] + 4 c[i+1].
    """
    m, n = c.shape[dim], out.shape[dim]
    even, odd = _axis(out, dim, 0, n, 2), _axis(out, dim, 1, n, 2)
    if m > 2:
        o = _axis(even, dim, 1, m - 1)
        torch.add(_axis(c, dim, 0, m - 2), _axis(c, dim, 2, m), out=o)
        o.add_(_axis(c, dim, 1, m - 1), alpha=6.0)
    if m > 1:
        o = _axis(odd, dim, 0, m - 1)
        torch.mul(_axis(c, dim, 1, m), 4.0, out=o)
        o.add_(_axis(c, dim, 0, m - 1), alpha=4.0)
    for i in sorted({0, m - 1}):
        _up_taps_into(c, dim, i, False, modes, _sample(even, dim, i))
    if n == 2 * m:
        _up_taps_into(c, dim, m - 1, True, modes, _sample(odd, dim, m - 1))


def _fold_down_adjoint_(g: Tensor, out: Tensor, dim: int, mode: str) -> None:
    """``out`` (n samples) += the border part of D^T g (unscaled; ``g`` has ceil(n/2) samples)."""
    m, n = g.shape[dim], out.shape[dim]
    for j in sorted({0, m - 1}):
        for k, weight in _TAPS:
            if not 0 <= 2 * j + k < n:
                _sample(out, dim, border_index(2 * j + k, n, mode)).add_(_sample(g, dim, j), alpha=weight)


def _fold_up_adjoint_(y: Tensor, out: Tensor, dim: int, modes: tuple[str, str], start: int = 0) -> None:
    """``out`` += the border part of U^T y (unscaled): the virtual coarse samples -1 and m.

    ``y`` spans the fine axis (n samples); ``out`` holds coarse samples ``start, ...``.
    """
    n = y.shape[dim]
    m = (n + 1) // 2
    for i, mode in ((-1, modes[0]), (m, modes[1])):
        target = border_index(i, m, mode) - start
        if not 0 <= target < out.shape[dim]:
            continue
        for k, weight in _TAPS:
            if 0 <= 2 * i + k < n:
                _sample(out, dim, target).add_(_sample(y, dim, 2 * i + k), alpha=weight)


class Workspace:
    """Named scratch buffers, allocated once and reused (views of the needed shape).

    Reusing memory matters on a CPU: a fresh multi-megabyte tensor is mapped lazily and its first
    touch page-faults, which costs more than the arithmetic done on it.
    """

    def __init__(self, like: Tensor) -> None:
        self.dtype, self.device = like.dtype, like.device
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
        dtype = dtype or self.dtype
        numel = 1
        for s in shape:
            numel *= int(s)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
            buffer = torch.empty(max(numel, 1), dtype=dtype, device=self.device)
            self._buffers[name] = buffer
        return buffer[:numel].view(tuple(shape))


#: default float elements per band temporary (option ``band_elements`` of the backend): a band of rows goes through all the passes of one step
#: while its temporaries stay in cache (a few MiB each; measured best here with 32 MiB of L3)
DEFAULT_BAND_ELEMENTS = 1 << 20


def band_rows(shape: Sequence[int], device: torch.device, multiple: int = 2, band_elements: int | None = None) -> int:
    """Rows per band for a tensor of ``shape [..., H, W]``; all rows off the CPU (no cache to block for).

    ``band_elements``: elements per band temporary; by default the ``band_elements`` option given
    to ``efusion.backends.use("cpu", band_elements=...)``, else :data:`DEFAULT_BAND_ELEMENTS`.
    """
    if band_elements is None:
        band_elements = int(current_options().get("band_elements", DEFAULT_BAND_ELEMENTS))
    height = int(shape[-2])
    if torch.device(device).type != "cpu":
        return height + height % multiple
    per_row = 1
    for size in list(shape[:-2]) + [shape[-1]]:
        per_row *= int(size)
    rows = max(multiple, (band_elements // max(per_row, 1)) // multiple * multiple)
    return min(rows, height + height % multiple)


def _rows_then_cols_into(x: Tensor, out: Tensor, one_d, scale: float, ws: Workspace, rows: int) -> None:
    """A separable halving operator band by band: ``one_d(src, dst, dim, start)`` along rows into
    a band buffer, then along columns into ``out``, then ``out *= scale``."""
    m = out.shape[-2]
    shape = list(x.shape)
    for i0 in range(0, m, rows):
        i1 = min(i0 + rows, m)
        shape[-2] = i1 - i0
        band = ws.get("rows_pass", shape)
        one_d(x, band, -2, i0)
        o = out[..., i0:i1, :]
        one_d(band, o, -1, 0)
        o.mul_(scale)


def down_into(x: Tensor, out: Tensor, mode: str, ws: Workspace, rows: int) -> None:
    """``out = pyr_down(x)`` (D), band by band."""

    def one_d(src: Tensor, dst: Tensor, dim: int, start: int) -> None:
        _down_1d_into(src, dst, dim, mode, start)

    _rows_then_cols_into(x, out, one_d, 1.0 / 256.0, ws, rows)


def up_adjoint_into(y: Tensor, out: Tensor, preset: Preset, ws: Workspace, rows: int) -> None:
    """``out = U^T y``: the adjoint of ``pyr_up`` from ``y``'s size to ``out``'s, band by band."""
    modes = preset.up_borders

    def one_d(src: Tensor, dst: Tensor, dim: int, start: int) -> None:
        _down_1d_into(src, dst, dim, "zero", start)
        _fold_up_adjoint_(src, dst, dim, modes, start)

    _rows_then_cols_into(y, out, one_d, 1.0 / 64.0, ws, rows)


def _cols_then_rows_band(coarse: Tensor, r0: int, r1: int, cols_op, row_modes: tuple[str, str], ws: Workspace, width: int) -> Tensor:
    """Fine rows ``[r0, r1)`` (r0 even) of a separable doubling operator, unscaled, in a buffer.

    ``cols_op(src, dst)`` doubles the columns of the coarse rows the band reads; the rows are
    then doubled by the upsampling taps, rows beyond the coarse image taken by ``row_modes``.
    """
    m = coarse.shape[-2]
    # coarse rows the band reads, with one row of border on each side: [first, last)
    first, last = r0 // 2 - 1, (r1 + 1) // 2 + 1
    shape = list(coarse.shape)
    shape[-2], shape[-1] = last - first, width
    cols = ws.get("cols_pass", shape)
    lo, hi = max(first, 0), min(last, m)
    cols_op(coarse[..., lo:hi, :], cols[..., lo - first:hi - first, :])
    for row, mode in ((-1, row_modes[0]), (m, row_modes[1])):
        if first <= row < last:
            source = _source(row, m, mode)
            if source is None:
                cols[..., row - first, :].zero_()
            else:
                cols[..., row - first, :].copy_(cols[..., source - first, :])
    # rows pass: band row 2k reads cols rows k, k+1, k+2; band row 2k+1 reads rows k+1, k+2
    shape[-2] = r1 - r0
    fine = ws.get("rows_pass", shape)
    n_even, n_odd = (r1 - r0 + 1) // 2, (r1 - r0) // 2
    even, odd = fine[..., 0::2, :], fine[..., 1::2, :]
    torch.add(cols[..., 0:n_even, :], cols[..., 2:n_even + 2, :], out=even)
    even.add_(cols[..., 1:n_even + 1, :], alpha=6.0)
    if n_odd:
        torch.mul(cols[..., 2:n_odd + 2, :], 4.0, out=odd)
        odd.add_(cols[..., 1:n_odd + 1, :], alpha=4.0)
    return fine


def _up_band(coarse: Tensor, r0: int, r1: int, preset: Preset, ws: Workspace, width: int) -> Tensor:
    """Fine rows ``[r0, r1)`` of 64 x ``pyr_up(coarse)`` (U, unscaled), in a workspace buffer."""
    modes = preset.up_borders

    def cols_op(src: Tensor, dst: Tensor) -> None:
        _up_1d_into(src, dst, -1, modes)

    return _cols_then_rows_band(coarse, r0, r1, cols_op, modes, ws, width)


def _laplacian_band(fine: Tensor, coarse: Tensor, r0: int, r1: int, preset: Preset, ws: Workspace) -> Tensor:
    """Rows ``[r0, r1)`` (r0 even) of the Laplacian level ``fine - pyr_up(coarse)``, in a workspace
    buffer (overwritten by the next band)."""
    band = _up_band(coarse, r0, r1, preset, ws, fine.shape[-1])
    return torch.sub(fine[..., r0:r1, :], band, alpha=1.0 / 64.0, out=band)


def _laplacian_bands(fine: Tensor, coarse: Tensor, preset: Preset, ws: Workspace, rows: int):
    """``(r0, r1, band)``: :func:`_laplacian_band` for each band of ``rows`` rows."""
    height = fine.shape[-2]
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        yield r0, r1, _laplacian_band(fine, coarse, r0, r1, preset, ws)


def accumulate_band_into(
    acc: Tensor, weight: Tensor, fine: Tensor, coarse: Tensor, preset: Preset, ws: Workspace, rows: int
) -> None:
    """``acc += weight * (fine - pyr_up(coarse))``: one Laplacian level, weighted, band by band."""
    for r0, r1, band in _laplacian_bands(fine, coarse, preset, ws, rows):
        acc[..., r0:r1, :].addcmul_(weight[..., r0:r1, :], band)


def laplacian_dot_band_into(
    out: Tensor, grad: Tensor, fine: Tensor, coarse: Tensor, r0: int, r1: int, preset: Preset, ws: Workspace
) -> None:
    """Rows ``[r0, r1)`` (r0 even) of ``sum over channels of (fine - pyr_up(coarse)) * grad`` into
    ``out [..., 1, r1 - r0, W]``."""
    _channel_dot_into(out, _laplacian_band(fine, coarse, r0, r1, preset, ws), grad[..., r0:r1, :])


def _channel_dot_into(out: Tensor, x: Tensor, y: Tensor) -> None:
    """``out = sum over channels of x * y``, without a many-channel product in between."""
    torch.mul(x[..., 0:1, :, :], y[..., 0:1, :, :], out=out)
    for c in range(1, x.shape[-3]):
        out.addcmul_(x[..., c:c + 1, :, :], y[..., c:c + 1, :, :])


def add_up_into(acc: Tensor, coarse: Tensor, preset: Preset, ws: Workspace, rows: int) -> None:
    """``acc += pyr_up(coarse)`` band by band (one step of collapsing a pyramid, in place)."""
    height, width = acc.shape[-2:]
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        acc[..., r0:r1, :].add_(_up_band(coarse, r0, r1, preset, ws, width), alpha=1.0 / 64.0)


def add_down_adjoint_into(acc: Tensor, g: Tensor, mode: str, ws: Workspace, rows: int) -> None:
    """``acc += D^T g``: the adjoint of ``pyr_down`` (border ``mode``) from ``g``'s size to ``acc``'s."""
    height = acc.shape[-2]
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        add_down_adjoint_band_into(acc[..., r0:r1, :], g, r0, height, mode, ws)


def add_down_adjoint_band_into(acc: Tensor, g: Tensor, r0: int, height: int, mode: str, ws: Workspace) -> None:
    """Rows ``[r0, r0 + k)`` (r0 even) of ``D^T g`` added into ``acc [..., k, W]``, for a level of
    ``height`` rows (bands taken in any order give :func:`add_down_adjoint_into`'s bits)."""
    r1 = r0 + acc.shape[-2]
    width = acc.shape[-1]

    def cols_op(src: Tensor, dst: Tensor) -> None:
        _up_1d_into(src, dst, -1, ("zero", "zero"))
        _fold_down_adjoint_(src, dst, -1, mode)

    acc.add_(_cols_then_rows_band(g, r0, r1, cols_op, ("zero", "zero"), ws, width), alpha=1.0 / 256.0)
    # rows folds: taps of the first and last coarse rows that D read beyond the image, landing here
    m = g.shape[-2]
    shape = list(g.shape)
    shape[-2], shape[-1] = 1, width
    for j in sorted({0, m - 1}):
        targets = [(border_index(2 * j + k, height, mode), weight) for k, weight in _TAPS if not 0 <= 2 * j + k < height]
        targets = [(row, weight) for row, weight in targets if r0 <= row < r1]
        if not targets:
            continue
        cols = ws.get("fold_row", shape)
        cols_op(g[..., j:j + 1, :], cols)
        for row, weight in targets:
            acc[..., row - r0, :].add_(cols[..., 0, :], alpha=weight / 256.0)
