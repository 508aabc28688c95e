"""Reference tone-mapping operators: the targets exposure fusion is tuned towards.

A tone-mapping operator turns scene-linear radiance (any positive range) into a display image in
[0, 1]. The training data render an exposure bracket from a radiance map and use the map,
tone-mapped by one of these operators, as the image the fusion of the bracket should look like.
Both operators work on luminance and keep each pixel's colour ratios (``rgb * L_out / L_in``,
as both papers do), then encode the result with the sRGB transfer function so it is comparable
with fused 8-bit sRGB frames.

- :func:`reinhard`: the global photographic operator of Reinhard, Stark, Shirley & Ferwerda,
  "Photographic Tone Reproduction for Digital Images", ACM SIGGRAPH 2002, Sec. 3.1 (Eqs. 1-4),
  doi:10.1145/566654.566575.
- :func:`durand`: the local operator of Durand & Dorsey, "Fast Bilateral Filtering for the
  Display of High-Dynamic-Range Images", ACM SIGGRAPH 2002, Secs. 3, 5.1 and 6,
  doi:10.1145/566570.566574: a bilateral filter splits log luminance into a base layer, whose
  contrast is compressed, and a detail layer, which is kept.

Everything is pure torch, batched over leading dimensions (``[..., 3, H, W]``), and runs on the
input's device. The operators are references, not trainable: they are not meant to be
differentiated (they are, but through ``quantile`` and ``max``).

Example:
    >>> radiance = torch.rand(3, 32, 48) * 100        # scene-linear, any positive range
    >>> reinhard(radiance).shape, durand(radiance).shape
    (torch.Size([3, 32, 48]), torch.Size([3, 32, 48]))
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from efusion import color
from efusion.color import REC709_LUMA, rgb_to_gray

__all__ = ["OPERATORS", "durand", "luminance", "reinhard", "srgb_encode", "tonemap"]

#: Rec. ITU-R BT.709-6 luminance weights of linear RGB (sRGB shares the primaries); the one
#: table is :data:`efusion.color.REC709_LUMA`
REC709 = REC709_LUMA
#: keeps logs and ratios finite at black pixels (radiance maps hold exact zeros)
_TINY = 1e-8


def _check_radiance(radiance: Tensor) -> None:
    if not isinstance(radiance, Tensor):
        raise TypeError(f"radiance must be a torch.Tensor, got {type(radiance).__name__}")
    if not radiance.is_floating_point():
        raise TypeError(f"radiance must be a floating-point tensor, got dtype {radiance.dtype}")
    if radiance.dim() < 3 or radiance.shape[-3] != 3:
        raise ValueError(f"radiance must be [..., 3, H, W] (linear RGB), got shape {tuple(radiance.shape)}")


def luminance(rgb: Tensor) -> Tensor:
    """Luminance of linear RGB with Rec. 709 weights: ``[..., 3, H, W]`` -> ``[..., 1, H, W]``."""
    return rgb_to_gray(rgb, REC709_LUMA)


def srgb_encode(linear: Tensor) -> Tensor:
    """The sRGB transfer function (IEC 61966-2-1:1999) of values clipped to [0, 1]."""
    return color.srgb_encode(linear.clamp(0.0, 1.0))


def _recolour(radiance: Tensor, lum_in: Tensor, lum_out: Tensor, saturation: float) -> Tensor:
    """Colour of ``radiance`` at luminance ``lum_out``: ``(rgb / L_in)^saturation * L_out``.

    ``saturation = 1`` keeps the colour ratios exactly (both papers); below 1 desaturates, as
    Schlick's and Tumblin's colour treatment does for strongly compressed ranges.
    """
    ratio = radiance.clamp(min=0.0) / lum_in.clamp(min=_TINY)
    if saturation != 1.0:
        ratio = ratio**saturation
    return ratio * lum_out


def _flat(x: Tensor) -> Tensor:
    """``[..., 1, H, W]`` -> ``[B, H * W]`` (one row per image)."""
    return x.reshape(-1, x.shape[-2] * x.shape[-1])



def reinhard(
    radiance: Tensor,
    *,
    key: float = 0.18,
    white: float | None = None,
    saturation: float = 1.0,
    encode: bool = True,
) -> Tensor:
    r"""Reinhard et al.'s global photographic operator (SIGGRAPH 2002, Sec. 3.1, Eqs. 1-4).

    With world luminance :math:`L_w` and its log-average
    :math:`\bar L_w = \exp(\operatorname{mean}\log(\delta + L_w))` (Eq. 1), the image is scaled to
    the ``key`` (Eq. 2) and compressed so that luminance ``white`` (in scaled units) maps to 1
    (Eq. 4):

    .. math::

        L = \frac{a}{\bar L_w} L_w, \qquad L_d = \frac{L\,(1 + L / L_{white}^2)}{1 + L}.

    ``white=None`` uses the image's largest scaled luminance, the paper's default choice, which
    burns out nothing; ``white=inf`` gives Eq. 3, ``L / (1 + L)``. Statistics are per image.

    Args:
        radiance: scene-linear RGB ``[..., 3, H, W]``, >= 0 (negatives are treated as 0).
        key: the key value ``a`` (0.18 for a normal-key scene; 0.09 low key, 0.36-0.72 high key).
        white: smallest scaled luminance mapped to pure white, > 0, or ``None`` (the maximum).
        saturation: exponent on the colour ratios (1 keeps them).
        encode: apply the sRGB transfer function (display values); ``False`` returns linear.

    Returns:
        ``[..., 3, H, W]`` in [0, 1].
    """
    _check_radiance(radiance)
    if not key > 0:
        raise ValueError(f"key must be > 0, got {key!r}")
    if white is not None and not white > 0:
        raise ValueError(f"white must be > 0 or None, got {white!r}")
    lum = luminance(radiance.clamp(min=0.0))
    log_average = torch.exp(torch.log(lum + 1e-6).mean(dim=(-2, -1), keepdim=True))  # delta of Eq. 1
    scaled = lum * (key / log_average)
    if white is None:
        l_white = scaled.amax(dim=(-2, -1), keepdim=True).clamp(min=_TINY)
    else:
        l_white = torch.full_like(log_average, float(white))
    display = scaled * (1.0 + scaled / l_white.square()) / (1.0 + scaled)
    out = _recolour(radiance, lum, display, saturation).clamp(0.0, 1.0)
    return srgb_encode(out) if encode else out


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` (radius 3 sigma, replicated borders)."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3.0 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), horizontal, groups=channels)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), vertical, groups=channels)


def bilateral_piecewise(signal: Tensor, spatial_sigma: float, range_sigma: float) -> Tensor:
    r"""Bilateral filter by piecewise-linear interpolation (Durand & Dorsey 2002, Sec. 5.1).

    The intensity range is sampled at levels :math:`i_j` spaced by ``range_sigma``; for each level
    the range weight :math:`g_j = \exp(-(I - i_j)^2 / 2\sigma_r^2)` and :math:`g_j I` are blurred
    by the spatial Gaussian and divided, giving the filter's response :math:`J_j` for a pixel of
    intensity :math:`i_j`; each pixel then interpolates linearly between the two levels that
    bracket its own intensity. (The paper also subsamples the image; this version does not.)

    Args:
        signal: ``[B, 1, H, W]`` (here log10 luminance).
        spatial_sigma: standard deviation of the spatial Gaussian, in pixels.
        range_sigma: standard deviation of the range Gaussian, in the signal's units.

    Returns:
        the filtered signal, ``[B, 1, H, W]``.
    """
    low = signal.amin(dim=(-3, -2, -1), keepdim=True)
    high = signal.amax(dim=(-3, -2, -1), keepdim=True)
    count = max(2, math.ceil(float((high - low).max()) / range_sigma) + 1)
    steps = torch.linspace(0.0, 1.0, count, dtype=signal.dtype, device=signal.device).view(1, count, 1, 1)
    levels = low + (high - low) * steps  # [B, count, 1, 1], per image
    weight = torch.exp(-0.5 * ((signal - levels) / range_sigma) ** 2)  # [B, count, H, W]
    responses = _gaussian_blur(weight * signal, spatial_sigma) / _gaussian_blur(weight, spatial_sigma).clamp(min=1e-12)
    span = (high - low).clamp(min=1e-12)
    position = ((signal - low) / span * (count - 1)).clamp(0, count - 1)  # [B, 1, H, W]
    lower = position.floor().clamp(max=count - 2).long()
    fraction = position - lower
    below = responses.gather(1, lower)
    above = responses.gather(1, lower + 1)
    return below + fraction * (above - below)


def durand(
    radiance: Tensor,
    *,
    target_contrast: float = 50.0,
    spatial_sigma: float = 0.02,
    range_sigma: float = 0.4,
    percentiles: tuple[float, float] = (1.0, 99.0),
    detail: float = 1.0,
    saturation: float = 1.0,
    encode: bool = True,
) -> Tensor:
    r"""Durand & Dorsey's local operator (SIGGRAPH 2002, Secs. 3 and 6): compress the base layer.

    In log10 luminance :math:`l`, the base layer :math:`b` is the bilateral filter of :math:`l`
    (:func:`bilateral_piecewise`) and the detail layer is :math:`l - b`. The base layer is scaled
    so that its span becomes ``log10(target_contrast)``, the detail is kept (times ``detail``),
    and the result is offset so the top of the base range maps to display white:

    .. math::

        l_d = k\,(b - b_{hi}) + \text{detail}\cdot(l - b), \qquad
        k = \frac{\log_{10} \text{target\_contrast}}{b_{hi} - b_{lo}}.

    The paper takes :math:`b_{lo}, b_{hi}` as the base layer's minimum and maximum; here they are
    the ``percentiles`` of the base layer (``(0, 100)`` gives the paper's choice), so a small
    very bright source (a sun) clips instead of darkening the whole image.

    Args:
        radiance: scene-linear RGB ``[..., 3, H, W]``, >= 0.
        target_contrast: contrast ratio (> 1) the base layer is compressed to.
        spatial_sigma: spatial standard deviation of the bilateral filter as a fraction of the
            image's longer side (the paper uses 2 % of the image size).
        range_sigma: range standard deviation in log10 units (the paper's 0.4).
        percentiles: low and high percentile of the base layer spanning the target contrast.
        detail: gain on the detail layer (1 keeps it as in the paper).
        saturation: exponent on the colour ratios (1 keeps them).
        encode: apply the sRGB transfer function (display values); ``False`` returns linear.

    Returns:
        ``[..., 3, H, W]`` in [0, 1].
    """
    _check_radiance(radiance)
    if not target_contrast > 1:
        raise ValueError(f"target_contrast must be > 1, got {target_contrast!r}")
    if not spatial_sigma > 0 or not range_sigma > 0:
        raise ValueError(f"spatial_sigma and range_sigma must be > 0, got {spatial_sigma!r} and {range_sigma!r}")
    lo_pct, hi_pct = (float(p) for p in percentiles)
    if not 0 <= lo_pct < hi_pct <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    lead = radiance.shape[:-3]
    height, width = radiance.shape[-2:]
    lum = luminance(radiance.clamp(min=0.0))
    log_lum = torch.log10(lum.clamp(min=_TINY)).reshape(-1, 1, height, width)
    base = bilateral_piecewise(log_lum, spatial_sigma * max(height, width), range_sigma)
    q = torch.tensor([lo_pct / 100, hi_pct / 100], dtype=base.dtype, device=base.device)
    bounds = torch.quantile(_flat(base).float(), q.float(), dim=1).to(base.dtype)  # [2, B]
    b_lo, b_hi = bounds[0].view(-1, 1, 1, 1), bounds[1].view(-1, 1, 1, 1)
    k = math.log10(target_contrast) / (b_hi - b_lo).clamp(min=1e-6)
    log_display = k * (base - b_hi) + detail * (log_lum - base)
    display = torch.pow(10.0, log_display).reshape(*lead, 1, height, width)
    out = _recolour(radiance, lum, display, saturation).clamp(0.0, 1.0)
    return srgb_encode(out) if encode else out


#: operator name -> function, for configs (``tonemap: reinhard``)
OPERATORS: dict[str, Callable[..., Tensor]] = {"reinhard": reinhard, "durand": durand}


def tonemap(radiance: Tensor, operator: str = "reinhard", **options) -> Tensor:
    """Apply the operator named ``operator`` (a key of :data:`OPERATORS`) with its ``options``."""
    if operator not in OPERATORS:
        raise ValueError(f"unknown tone-mapping operator {operator!r}; choose one of {sorted(OPERATORS)}")
    return OPERATORS[operator](radiance, **options)
