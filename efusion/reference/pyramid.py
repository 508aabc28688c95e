"""The reference Gaussian and Laplacian pyramids with the 5-tap binomial filter (Burt & Adelson, 1983).

All operations act on the last two dimensions of a tensor ``[..., H, W]``; leading dimensions
are batch. The filter ``[1, 4, 6, 4, 1] / 16`` is applied separably as sums of strided slices:
no dense 5x5 convolution, no transposed convolution, no work for samples that decimation drops.

Size conventions (both presets): downsampling keeps samples 0, 2, 4, ... so a side of ``n``
becomes ``ceil(n / 2)``; upsampling a side of ``m`` gives ``2m`` samples, cropped to the requested
fine size (``2m`` or ``2m - 1``). Border handling follows the preset (see :mod:`efusion.presets`).

Reference: P. J. Burt and E. H. Adelson, "The Laplacian Pyramid as a Compact Image Code",
IEEE Trans. Communications 31(4), 1983, doi:10.1109/TCOM.1983.1095851; border and size
conventions from Mertens' ``downsample.m`` / ``upsample.m`` and OpenCV's ``pyrDown`` / ``pyrUp``.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from ..presets import Preset, get_preset

__all__ = [
    "border_index",
    "collapse_laplacian_pyramid",
    "gaussian_pyramid",
    "laplacian_pyramid",
    "level_size",
    "pad",
    "pyr_down",
    "pyr_up",
]

#: the 5-tap binomial filter of Burt & Adelson, times 16
_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)


def level_size(size: Sequence, level: int) -> tuple:
    """``(H, W)`` of pyramid level ``level`` of an image of ``size = (H, W)``: ``ceil(H / 2^level)``
    and ``ceil(W / 2^level)`` (each step keeps samples 0, 2, 4, ...). Written as one division of the
    finest size, so symbolic sizes stay short expressions instead of ``level`` nested halvings."""
    return tuple(side if level == 0 else (side + (1 << level) - 1) // (1 << level) for side in size[:2])


def border_index(i: int, n: int, mode: str) -> int:
    """Source index of the (out-of-range) sample ``i`` of a side of length ``n``."""
    if mode == "replicate":
        return min(max(i, 0), n - 1)
    if mode == "symmetric":  # half-sample mirror: x[-1] = x[0], x[n] = x[n - 1]
        period = 2 * n
        i %= period
        return i if i < n else period - 1 - i
    if mode == "reflect101":  # whole-sample mirror: x[-1] = x[1], x[n] = x[n - 2]
        if n == 1:
            return 0
        period = 2 * n - 2
        i %= period
        return i if i < n else period - i
    raise ValueError(f"unknown border mode {mode!r}")


def pad(x: Tensor, dim: int, before: int, after: int, left_mode: str, right_mode: str) -> Tensor:
    """Pad ``x`` along ``dim`` with ``before``/``after`` samples taken by the border modes."""
    n = x.shape[dim]
    if _symbolic(n):  # traced with a dynamic size: border indices computed in the graph
        left_index = _border_indices(torch.arange(-before, 0, device=x.device), n, left_mode)
        right_index = _border_indices(torch.arange(after, device=x.device) + n, n, right_mode)
        return torch.cat([x.index_select(dim, left_index), x, x.index_select(dim, right_index)], dim=dim)
    left = [x.narrow(dim, border_index(i, n, left_mode), 1) for i in range(-before, 0)]
    right = [x.narrow(dim, border_index(i, n, right_mode), 1) for i in range(n, n + after)]
    return torch.cat([*left, x, *right], dim=dim)


def _symbolic(size) -> bool:
    """Whether a size is symbolic (``torch.export``, dynamic-shape tracing). Symbolic sizes take
    index tensors built by tensor operations instead of Python decisions on the value, so the
    traced graph holds for every size; the samples taken, and so the values, are the same."""
    return isinstance(size, torch.SymInt)


def _graph(*sizes) -> bool:
    """Whether to take the graph formulation of the filters (below): sizes are symbolic, or
    ``torch.compile`` traces the call (a graph a fraction of the size: it compiles several times faster)."""
    return any(_symbolic(size) for size in sizes) or torch.compiler.is_compiling()


def _border_indices(positions: Tensor, n, mode: str) -> Tensor:
    """:func:`border_index` for a tensor of positions and a (possibly symbolic) side ``n``."""
    side = torch.scalar_tensor(n, dtype=torch.int64, device=positions.device)
    if mode == "replicate":
        return positions.clamp(min=0).minimum(side - 1)
    if mode == "symmetric":
        period = 2 * side
        wrapped = positions.remainder(period)
        return torch.where(wrapped < side, wrapped, period - 1 - wrapped)
    if mode == "reflect101":
        period = (2 * side - 2).clamp(min=1)  # a side of 1 repeats its one sample
        wrapped = positions.remainder(period)
        return torch.where(wrapped < side, wrapped, period - wrapped)
    raise ValueError(f"unknown border mode {mode!r}")


def _take(x: Tensor, dim: int, start: int, count: int, step: int = 1) -> Tensor:
    """``count`` samples of ``x`` along ``dim`` from ``start`` with ``step``: a strided view, or
    for a symbolic ``count`` a gather (a slice would put a guard on the sizes)."""
    if _symbolic(count):
        return x.index_select(dim, torch.arange(count, device=x.device) * step + start)
    index = [slice(None)] * x.dim()
    index[dim] = slice(start, start + step * (count - 1) + 1, step)
    return x[tuple(index)]


def _down_1d(x: Tensor, dim: int, mode: str) -> Tensor:
    """Filter and decimate along a negative ``dim``."""
    n = x.shape[dim]
    m = (n + 1) // 2
    xp = pad(x, dim, 2, 2, mode, mode)
    # out[j] = (x[2j-2] + 4 x[2j-1] + 6 x[2j] + 4 x[2j+1] + x[2j+2]) / 16, padded indices + 2
    outer = _take(xp, dim, 0, m, 2) + _take(xp, dim, 4, m, 2)
    inner = _take(xp, dim, 1, m, 2) + _take(xp, dim, 3, m, 2)
    return (outer + 4.0 * inner + 6.0 * _take(xp, dim, 2, m, 2)) * 0.0625


def _up_1d(x: Tensor, dim: int, size: int, modes: tuple[str, str]) -> Tensor:
    """Upsample along a negative ``dim`` to ``size`` samples."""
    m = x.shape[dim]
    xp = pad(x, dim, 1, 1, modes[0], modes[1])
    before, centre, after = _take(xp, dim, 0, m), _take(xp, dim, 1, m), _take(xp, dim, 2, m)
    # Zero insertion then the filter scaled by 2 per axis leaves two polyphase components:
    # even fine samples see taps (1, 6, 1) / 8, odd ones (4, 4) / 8.
    even = (before + after) * 0.125 + centre * 0.75
    odd = (centre + after) * 0.5
    # interleave: stacking at a negative ``dim`` puts the phase right after the sample index
    fine = torch.stack((even, odd), dim=dim).flatten(dim - 1, dim)
    return _take(fine, dim, 0, size)


def pyr_down(x: Tensor, preset: str | Preset = "mertens", size: Sequence | None = None) -> Tensor:
    """Blur with the 5-tap binomial filter and keep every other sample.

    Mertens' ``downsample.m`` (``'symmetric'`` borders) or OpenCV's ``pyrDown`` (reflect-101),
    by preset.

    Args:
        x: tensor ``[..., H, W]``.
        preset: a preset (``"mertens"``, ``"opencv"``, ``"opencv-rgb"``) or its name.
        size: the coarse ``(ceil(H / 2), ceil(W / 2))`` if the caller has it (:func:`level_size`
            of the finest size: keeps a traced graph's size expressions short); checked if not symbolic.

    Returns:
        tensor ``[..., ceil(H / 2), ceil(W / 2)]``.

    Example:
        >>> pyr_down(torch.ones(1, 3, 5, 8)).shape
        torch.Size([1, 3, 3, 4])
    """
    mode = get_preset(preset).down_border
    height, width = x.shape[-2:]
    coarse = ((height + 1) // 2, (width + 1) // 2) if size is None else tuple(size[:2])
    if _graph(height, width):
        return _traced_down(x, coarse, mode)
    if coarse != ((height + 1) // 2, (width + 1) // 2):
        raise ValueError(f"pyr_down of a {height}x{width} image gives {(height + 1) // 2}x{(width + 1) // 2}, got size {coarse}")
    return _down_1d(_down_1d(x, -1, mode), -2, mode)


def pyr_up(x: Tensor, size: Sequence[int], preset: str | Preset = "mertens") -> Tensor:
    """Upsample by two (zero insertion, 5-tap filter times 4) and crop to ``size``.

    Mertens' ``upsample.m`` (coarse image edge-replicated) or OpenCV's ``pyrUp`` (first row and
    column mirrored, last replicated), by preset.

    Args:
        x: tensor ``[..., h, w]``.
        size: fine ``(H, W)`` with ``H`` in ``{2h - 1, 2h}`` and ``W`` in ``{2w - 1, 2w}``.
        preset: a preset (``"mertens"``, ``"opencv"``, ``"opencv-rgb"``) or its name.

    Returns:
        tensor ``[..., H, W]``.
    """
    height, width = (v if _symbolic(v) else int(v) for v in size[:2])
    h, w = x.shape[-2:]
    # traced sizes are not checked: they come from the finer level, for which this holds
    traced = any(_symbolic(v) for v in (height, width, h, w))
    if not traced and (height not in (2 * h - 1, 2 * h) or width not in (2 * w - 1, 2 * w)):
        raise ValueError(f"pyr_up of a {h}x{w} image gives 2h-1..2h x 2w-1..2w, got size {height}x{width}")
    modes = get_preset(preset).up_borders
    if _graph(height, width, h, w):
        return _traced_up(x, (height, width), modes)
    return _up_1d(_up_1d(x, -2, height, modes), -1, width, modes)


# Traced graphs (symbolic sizes: torch.export, efusion.export; torch.compile) compute the same filter along each
# axis as one gather and one weighted sum over the taps instead of the strided sums above: a few
# graph nodes per axis instead of dozens, each of which costs the tracer symbolic-shape reasoning.
# The gather's indices (border samples included) are computed in the graph, and every output size
# is one the caller gives (:func:`level_size`), so size expressions stay short. The taps are summed
# in another order, so the values equal the eager ones to float32 rounding, not bit for bit.


def _filter_along(x: Tensor, dim: int, sources: Tensor, taps: Tensor) -> Tensor:
    """``out[i] = sum_t taps[i, t] * x[sources[i, t]]`` along a negative ``dim``, for ``sources``
    and ``taps`` of shape ``[size, T]`` (``taps`` may be ``[1, T]``: the same for every ``i``)."""
    gathered = x.index_select(dim, sources.flatten()).unflatten(dim, sources.shape)
    return (gathered * taps.reshape(*taps.shape, *[1] * (-dim - 1))).sum(dim)


def _traced_down(x: Tensor, coarse: tuple, mode: str) -> Tensor:
    """:func:`pyr_down` for symbolic sizes, to the given ``coarse`` size: coarse sample ``j`` is
    the binomial sum of samples ``2j - 2 .. 2j + 2`` (border samples by ``mode``)."""
    taps = torch.tensor([[value / 16.0 for value in _TAPS]], dtype=x.dtype, device=x.device)
    offsets = torch.arange(-2, 3, device=x.device)
    for dim, size in ((-1, coarse[1]), (-2, coarse[0])):
        positions = 2 * torch.arange(size, device=x.device).unsqueeze(1) + offsets
        x = _filter_along(x, dim, _border_indices(positions, x.shape[dim], mode), taps)
    return x


def _traced_up(x: Tensor, fine: tuple, modes: tuple[str, str]) -> Tensor:
    """:func:`pyr_up` for symbolic sizes: fine sample ``i`` is a sum over coarse samples
    ``i // 2 - 1 .. i // 2 + 1`` with ``_up_1d``'s taps, (1, 6, 1) / 8 for even ``i`` and
    (0, 4, 4) / 8 for odd ``i`` (border samples by ``modes``, left and right)."""
    # the binomial taps times 2 split by phase: even (1, 6, 1) / 8, odd (0, 4, 4) / 8
    even, odd = (_TAPS[0], _TAPS[2], _TAPS[4]), (0.0, _TAPS[1], _TAPS[3])
    phase_taps = torch.tensor([[t / 8 for t in even], [t / 8 for t in odd]], dtype=x.dtype, device=x.device)
    offsets = torch.arange(-1, 2, device=x.device)
    for dim, size in ((-2, fine[0]), (-1, fine[1])):
        fine_index = torch.arange(size, device=x.device)
        positions = (fine_index // 2).unsqueeze(1) + offsets  # in -1 .. n
        x = _filter_along(x, dim, _up_sources(positions, x.shape[dim], modes), phase_taps.index_select(0, fine_index % 2))
    return x


def _up_sources(positions: Tensor, n, modes: tuple[str, str]) -> Tensor:
    """:func:`border_index` of ``positions`` in ``-1 .. n`` with the left and right border modes."""
    if modes[1] == "replicate" and modes[0] in ("replicate", "reflect101"):
        # replicate takes sample 0 for -1, reflect-101 sample 1 (0 for n = 1: the right clamp)
        left = positions.clamp(min=0) if modes[0] == "replicate" else positions.abs()
        return left.clamp(max=n - 1)
    # in-range positions map to themselves in every mode
    return torch.where(positions < 0, _border_indices(positions, n, modes[0]), _border_indices(positions, n, modes[1]))


def gaussian_pyramid(x: Tensor, levels: int, preset: str | Preset = "mertens") -> list[Tensor]:
    """Gaussian pyramid ``[x, down(x), down(down(x)), ...]`` with ``levels`` entries.

    Mertens' ``gaussian_pyramid.m`` / OpenCV's ``buildPyramid``.

    Args:
        x: tensor ``[..., H, W]``.
        levels: number of levels, >= 1 (level 0 is ``x`` itself).
        preset: a preset (``"mertens"``, ``"opencv"``, ``"opencv-rgb"``) or its name.

    Returns:
        list of ``levels`` tensors, level ``l`` of size ``ceil(H / 2^l) x ceil(W / 2^l)``.
    """
    _check_levels(levels)
    pyramid = [x]
    for _ in range(levels - 1):
        pyramid.append(pyr_down(pyramid[-1], preset))
    return pyramid


def laplacian_pyramid(x: Tensor, levels: int, preset: str | Preset = "mertens") -> list[Tensor]:
    """Laplacian pyramid: band-pass levels ``G_l - up(G_{l+1})`` and the Gaussian residual last.

    Mertens' ``laplacian_pyramid.m``. :func:`collapse_laplacian_pyramid` inverts it (exactly, up
    to floating-point rounding).

    Args:
        x: tensor ``[..., H, W]``.
        levels: number of levels, >= 1 (1 returns ``[x]``).
        preset: a preset (``"mertens"``, ``"opencv"``, ``"opencv-rgb"``) or its name.

    Returns:
        list of ``levels`` tensors; the shapes of :func:`gaussian_pyramid`.
    """
    gaussian = gaussian_pyramid(x, levels, preset)
    bands = [fine - pyr_up(coarse, fine.shape[-2:], preset) for fine, coarse in itertools.pairwise(gaussian)]
    return [*bands, gaussian[-1]]


def collapse_laplacian_pyramid(pyramid: Sequence[Tensor], preset: str | Preset = "mertens") -> Tensor:
    """Rebuild the image from a Laplacian pyramid (Mertens' ``reconstruct_laplacian_pyramid.m``).

    Args:
        pyramid: levels as returned by :func:`laplacian_pyramid` (finest first).
        preset: a preset (``"mertens"``, ``"opencv"``, ``"opencv-rgb"``) or its name.

    Returns:
        tensor with the shape of ``pyramid[0]``.
    """
    if len(pyramid) == 0:
        raise ValueError("cannot collapse an empty pyramid")
    image = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        image = band + pyr_up(image, band.shape[-2:], preset)
    return image


def _check_levels(levels: int) -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")

