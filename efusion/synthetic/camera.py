"""Camera simulation: :func:`render_exposures` photographs a radiance map (exposure, noise, clipping,
tone response, quantisation) and :func:`bracket` chains it with :func:`~efusion.synthetic.hdr_scene`."""
from __future__ import annotations

import math

import torch

from ..color import srgb_encode
from ._common import check_float, check_int, check_seed, rec709_luminance
from .scene import MID_GREY, hdr_scene

__all__ = ["RESPONSES", "bracket", "render_exposures"]

Tensor = torch.Tensor

#: names accepted by ``render_exposures(response=...)``
RESPONSES = ("srgb", "gamma2.2", "linear")
#: auto exposure estimates the median from at most this many pixels (a regular subgrid)
_MEDIAN_SAMPLES = 1 << 20


def _srgb_(linear: Tensor) -> Tensor:
    """In place: the sRGB transfer function (:func:`efusion.color.srgb_encode`) on values in ``[0, 1]``."""
    return srgb_encode(linear, inplace=True)


def _gamma22_(linear: Tensor) -> Tensor:
    return linear.pow_(1 / 2.2)


def _identity_(linear: Tensor) -> Tensor:
    return linear


_RESPONSES = {"srgb": _srgb_, "gamma2.2": _gamma22_, "linear": _identity_}
#: elements per step of the in-place camera pipeline on CPU (cache-sized, so no full-size temporaries)
_CHUNK = 1 << 18


def _ev_tensor(ev, device, dtype) -> Tensor:
    if isinstance(ev, Tensor):
        values = ev.detach().to(device=device, dtype=torch.float64).reshape(-1)
        if ev.dim() > 1:
            raise ValueError(f"ev must be one-dimensional, got shape {tuple(ev.shape)}")
    else:
        if isinstance(ev, (int, float)) and not isinstance(ev, bool):
            ev = (ev,)
        try:
            items = [float(check_float("ev", e)) for e in ev]
        except TypeError as error:
            raise TypeError(f"ev must be a sequence of real numbers, got {ev!r}") from error
        values = torch.tensor(items, dtype=torch.float64, device=device)
    if values.numel() == 0:
        raise ValueError(f"ev must hold at least one exposure value, got {ev!r}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"ev must be finite, got {ev!r}")
    return values


def render_exposures(
    radiance: Tensor,
    ev=(-2.0, 0.0, 2.0),
    *,
    exposure=None,
    response="srgb",
    bit_depth: int | None = 8,
    noise_std: float = 0.0,
    seed: int = 0,
) -> Tensor:
    r"""Photographs a radiance map at several exposures, like a camera's exposure bracket.

    For each exposure value ``ev``, in order:

    1. expose: ``radiance * exposure * 2**ev``. ``exposure=None`` puts the median luminance (Rec. 709
       weights, estimated from at most 2**20 pixels on a regular subgrid) at :data:`MID_GREY` for
       ``ev = 0``, per image of a batch;
    2. add noise: Gaussian, standard deviation ``noise_std`` of full scale, from a generator seeded with
       ``seed`` on the radiance's device (so noise differs between devices);
    3. clip to ``[0, 1]`` (sensor saturation);
    4. apply the response: ``"srgb"`` the IEC 61966-2-1:1999 transfer function
       (``12.92 v`` for ``v <= 0.0031308``, else ``1.055 v**(1/2.4) - 0.055``), ``"gamma2.2"``
       (``v**(1/2.2)``), ``"linear"``, or a callable mapping ``[0, 1]`` to ``[0, 1]``, given the whole
       ``[B, N, C, H, W]`` stack (its output is clamped to ``[0, 1]``);
    5. quantise to ``bit_depth`` bits: ``round(v * (2**b - 1)) / (2**b - 1)`` (8 -> k/255,
       16 -> k/65535); ``None`` keeps continuous values.

    Before noise, a brighter exposure is pixelwise at least as bright. This is a data generator, not a
    differentiable op: it runs without autograd, filling the output in place (on CPU in cache-sized
    chunks, so memory traffic is one write of the result). In float16/bfloat16, 16-bit levels are not
    representable exactly.

    Args:
        radiance: non-negative scene-linear radiance.
        ev: exposure values in stops (a sequence, a 1-D tensor or one number); non-empty and finite.
        exposure: base exposure multiplier (positive number, or a tensor of one per batch item);
            ``None`` for automatic.
        response: ``"srgb"``, ``"gamma2.2"``, ``"linear"`` or a callable.
        bit_depth: integer from 1 to 16, or ``None``.
        noise_std: noise standard deviation as a fraction of full scale (>= 0).
        seed: seed of the noise generator.

    Returns:
        Frames in ``[0, 1]``, darkest first when ``ev`` is ascending, in the radiance's dtype and device.

    Shape:
        - radiance: :math:`(C, H, W)` or :math:`(B, C, H, W)`.
        - Output: :math:`(N, C, H, W)` or :math:`(B, N, C, H, W)`, with ``N = len(ev)``.

    Example:
        >>> frames = render_exposures(hdr_scene(32, 48), ev=(-2, 0, 2))
        >>> frames.shape
        torch.Size([3, 3, 32, 48])
        >>> bool(torch.equal(torch.round(frames * 255) / 255, frames))
        True
    """
    if not isinstance(radiance, Tensor):
        raise TypeError(f"radiance must be a torch.Tensor, got {type(radiance).__name__}")
    if not radiance.is_floating_point():
        raise TypeError(f"radiance must have a floating dtype, got {radiance.dtype}")
    if radiance.dim() not in (3, 4):
        raise ValueError(f"radiance must have shape [C, H, W] or [B, C, H, W], got {tuple(radiance.shape)}")
    if isinstance(response, str):
        if response not in _RESPONSES:
            raise ValueError(f"response must be one of {RESPONSES} or a callable, got {response!r}")
        curve = _RESPONSES[response]
    elif callable(response):
        curve = response
    else:
        raise TypeError(f"response must be a string or a callable, got {response!r}")
    if bit_depth is not None:
        check_int("bit_depth", bit_depth)
        if bit_depth > 16:
            raise ValueError(f"bit_depth must be between 1 and 16 or None, got {bit_depth}")
    noise_std = check_float("noise_std", noise_std, nonnegative=True)
    check_seed(seed)
    evs = _ev_tensor(ev, radiance.device, radiance.dtype)

    batched = radiance.dim() == 4
    images = radiance.detach() if batched else radiance.detach()[None]
    count = images.shape[0]
    if exposure is None:
        step = max(1, math.isqrt(images[0, 0].numel() // _MEDIAN_SAMPLES))
        luminance = rec709_luminance(images[:, :, ::step, ::step])
        median = luminance.reshape(count, -1).median(dim=1).values.double()
        if not bool((median > 0).all()):
            raise ValueError(f"automatic exposure needs a positive median luminance, got {median.tolist()}; "
                             "pass exposure=")
        base = MID_GREY / median
    else:
        if isinstance(exposure, Tensor):
            base = exposure.detach().to(device=radiance.device, dtype=torch.float64).reshape(-1)
            if base.numel() not in (1, count):
                raise ValueError(f"exposure must hold 1 or {count} values, got shape {tuple(exposure.shape)}")
            if not bool(((base > 0) & torch.isfinite(base)).all()):
                raise ValueError(f"exposure must be positive and finite, got {exposure!r}")
        else:
            base = torch.tensor([check_float("exposure", exposure, positive=True)], dtype=torch.float64,
                                device=radiance.device)
        base = base.expand(count)
    scales = (base[:, None] * torch.exp2(evs)[None, :]).tolist()  # [B][N]

    generator = None
    if noise_std > 0:
        generator = torch.Generator(device=radiance.device)
        generator.manual_seed(seed)
    builtin = isinstance(response, str)
    levels = None if bit_depth is None else float(2**bit_depth - 1)
    frames = torch.empty((count, len(scales[0])) + images.shape[1:], device=radiance.device, dtype=radiance.dtype)
    size = images[0].numel()
    chunk = _CHUNK if radiance.device.type == "cpu" else size
    # one pass per cache-sized chunk: expose, noise, clip, (built-in) response, quantise, all in place
    with torch.no_grad():
        for b in range(count):
            source = images[b].reshape(-1)
            for n, scale in enumerate(scales[b]):
                target = frames[b, n].view(-1)
                for start in range(0, size, chunk):
                    out = torch.mul(source[start:start + chunk], scale, out=target[start:start + chunk])
                    if generator is not None:
                        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
                        out.add_(noise.mul_(noise_std))
                    out.clamp_(0.0, 1.0)
                    if builtin:
                        curve(out)
                        if levels is not None:
                            out.mul_(levels).round_().div_(levels)
        if not builtin:
            shape = frames.shape
            frames = curve(frames)
            if not isinstance(frames, Tensor) or frames.shape != shape:
                raise ValueError(f"the response callable must return a tensor of shape {tuple(shape)}, got "
                                 f"{getattr(frames, 'shape', type(frames).__name__)}")
            frames = frames.clamp(0.0, 1.0)
            if levels is not None:
                frames = frames.mul(levels).round_().div_(levels)
    return frames if batched else frames[0]


def bracket(
    height: int,
    width: int,
    n_frames: int = 3,
    *,
    ev_step: float = 2.0,
    seed: int = 0,
    dynamic_range_ev: float = 14.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **render_kwargs,
) -> Tensor:
    r"""A synthetic exposure bracket: :func:`hdr_scene` photographed by :func:`render_exposures`.

    The exposure values are centred on 0 and spaced by ``ev_step``
    (``n_frames=3, ev_step=2`` gives ``(-2, 0, 2)``), darkest first. ``seed`` selects the scene and
    seeds the noise (when ``noise_std > 0``).

    Args:
        height: frame height in pixels.
        width: frame width in pixels.
        n_frames: number of exposures (>= 1).
        ev_step: stops between consecutive exposures (> 0).
        seed: selects the scene (and the noise).
        dynamic_range_ev: the scene's dynamic range, see :func:`hdr_scene`.
        device: device of the frames.
        dtype: floating dtype of the frames.
        **render_kwargs: passed to :func:`render_exposures` (``exposure``, ``response``, ``bit_depth``,
            ``noise_std``).

    Returns:
        Frames in ``[0, 1]``.

    Shape:
        - Output: :math:`(N, 3, H, W)`.

    Example:
        >>> bracket(32, 48, n_frames=5, ev_step=1.5).shape
        torch.Size([5, 3, 32, 48])
    """
    check_int("n_frames", n_frames)
    ev_step = check_float("ev_step", ev_step, positive=True)
    for key in ("ev", "seed"):
        if key in render_kwargs:
            raise TypeError(f"bracket() sets {key!r} itself; got {key}={render_kwargs[key]!r}")
    evs = [(k - (n_frames - 1) / 2) * ev_step for k in range(n_frames)]
    scene = hdr_scene(height, width, seed=seed, dynamic_range_ev=dynamic_range_ev, device=device, dtype=dtype)
    return render_exposures(scene, evs, seed=seed, **render_kwargs)
