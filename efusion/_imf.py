"""Intensity mapping functions between exposures, from histograms (used by alignment and deghosting).

Under a monotone camera response, the value at quantile q of one exposure of a scene maps to the
value at quantile q of another exposure of the same pixels: histogram specification gives the
intensity mapping function without knowing the response (M. D. Grossberg and S. K. Nayar,
"Determining the camera response from images: what is knowable?", IEEE TPAMI 25(11), 2003,
doi:10.1109/TPAMI.2003.1240119, Sec. 4).
"""
from __future__ import annotations

import torch
from torch import Tensor

#: histogram bins (8-bit input has 256 levels)
BINS = 256


def imf_table(gray: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Intensity mapping ``[M, K]`` from the bin centres of ``gray [M, P]`` to the exposure of ``target [M, P]``.

    Histogram specification over the pixels where ``valid``: under a monotone camera response,
    the value at quantile q of one exposure maps to the other's value at the same quantile
    (Grossberg & Nayar 2003, Sec. 4).
    """
    cdf_gray = cdf(gray, valid)
    cdf_target = cdf(target, valid)
    lower = torch.cat((torch.zeros_like(cdf_gray[..., :1]), cdf_gray[..., :-1]), dim=-1)
    q = (0.5 * (lower + cdf_gray)).contiguous()
    return inverse_cdf(cdf_target, q)


def cdf(gray: Tensor, valid: Tensor, dims: int = 1) -> Tensor:
    """Cumulative histogram ``[..., K]`` over the last ``dims`` dimensions of ``gray`` (entry k: share <= (k + 1) / K)."""
    lead = gray.shape[: gray.dim() - dims]
    gray, valid = gray.reshape(*lead, -1), valid.expand(gray.shape).reshape(*lead, -1)
    hist = torch.zeros(*lead, BINS, dtype=gray.dtype, device=gray.device)
    for part in chunks(gray.shape[-1], gray[..., :1].numel()):  # small temporaries (counts: the same sums in any order)
        index = (gray[..., part].clamp(0, 1) * BINS).long().clamp_(0, BINS - 1)
        hist.scatter_add_(-1, index, valid[..., part].to(gray.dtype))
    return hist.cumsum(-1) / hist.sum(-1, keepdim=True).clamp_min(1.0)


#: elements per chunk of a histogram's input (their int64 bin indices: 16 MiB)
CHUNK_ELEMENTS = 1 << 21


def chunks(length: int, rows: int) -> list[slice]:
    """Slices of a last dimension of ``length`` samples such that ``rows`` rows of one slice hold
    at most about :data:`CHUNK_ELEMENTS` elements (a whole-frame index tensor of a large frame was
    beyond what the allocator keeps, and each was faulted in afresh)."""
    step = max(1, CHUNK_ELEMENTS // max(1, rows))
    return [slice(start, min(length, start + step)) for start in range(0, length, step)]


def inverse_cdf(cumulative: Tensor, q: Tensor) -> Tensor:
    """Value at quantile ``q`` of a histogram's CDF (``cumulative[k]`` reached at value ``(k + 1) / K``), linear in the bin."""
    cdf = cumulative.contiguous()
    k = torch.searchsorted(cdf, q.contiguous()).clamp_(0, BINS - 1)
    hi = cdf.gather(-1, k)
    lo = torch.where(k > 0, cdf.gather(-1, (k - 1).clamp_min(0)), torch.zeros_like(hi))
    frac = ((q - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return (k.to(cdf.dtype) + frac) / BINS


def lookup(table: Tensor, x: Tensor) -> Tensor:
    """Piecewise-linear lookup of ``x [M, ...]`` in tables ``[M, K]`` given at bin centres."""
    m = table.shape[0]
    pos = (x.clamp(0, 1) * BINS - 0.5).clamp(0, BINS - 1)
    i0 = pos.floor().long().clamp_(0, BINS - 2)
    frac = pos - i0.to(pos.dtype)
    flat = i0.reshape(m, -1)
    v0 = table.gather(1, flat).view_as(x)
    v1 = table.gather(1, flat + 1).view_as(x)
    return v0 + frac * (v1 - v0)
