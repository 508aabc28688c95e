"""The Mertens fusion as a layer: :class:`Fusion` holds the parameters (learnable or buffers) and its
``forward`` is :func:`efusion.exposure_fusion` (Mertens, Kautz & Van Reeth, Pacific Graphics 2007).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _checks
from .functional import fuse_5d, weights_5d
from .params import (
    DEFAULTS,
    LEARNABLE_DEFAULT,
    NAMES,
    POSITIVE,
    SIGMA_FLOOR,
    check_layer_value,
    check_levels,
    parse_learnable,
    resolve_exponents,
)
from .presets import get_preset

__all__ = ["Fusion", "LEARNABLE_DEFAULT"]


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


class Fusion(nn.Module):
    """Mertens exposure fusion as a layer, with optionally learnable parameters.

    ``forward(stack, mask=None)`` is :func:`exposure_fusion` with the layer's parameters, except
    that it does not check the stack's values (NaN, values above 2): in training, a non-finite
    loss is the training loop's to handle (``efusion``'s training skips or names such a step).

    Learnable parameters are ``nn.Parameter``; the others are buffers, so ``.to()``,
    ``state_dict()`` and ``load_state_dict()`` carry all of them. Constraints during training:
    the exponents and sigma are parametrised as ``softplus(raw)`` with
    :mod:`torch.nn.utils.parametrize` (so they stay > 0; reading ``layer.contrast`` gives the
    constrained value, assigning to it sets the raw one; a learnable exponent therefore has to
    start > 0; a learnable sigma stays >= 1e-3); ``mu`` is unconstrained; ``levels`` is unconstrained and clamped to the valid
    range in the forward pass with a gradient that keeps pointing back inside (see
    :mod:`efusion.depth`). A learnable depth given as ``None`` starts at -1 (the automatic
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
        contrast: float | None = DEFAULTS["contrast"],
        saturation: float | None = DEFAULTS["saturation"],
        exposure: float | None = DEFAULTS["exposure"],
        mu: float | Sequence[float] = DEFAULTS["mu"],
        sigma: float | Sequence[float] = DEFAULTS["sigma"],
        levels: float | None = None,
        preset: str = "mertens",
        learnable: bool | Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.preset = get_preset(preset).name
        self.learnable = parse_learnable(learnable)
        given = {"contrast": contrast, "saturation": saturation, "exposure": exposure}
        contrast, saturation, exposure = resolve_exponents(contrast, saturation, exposure, preset)
        values = {"contrast": contrast, "saturation": saturation, "exposure": exposure, "mu": mu, "sigma": sigma}
        for name, value in values.items():
            tensor = check_layer_value(name, value)
            if name in self.learnable:
                if name in POSITIVE and not bool((tensor > 0).all()):
                    default = f" (the {self.preset!r} preset's default)" if given.get(name, 0.0) is None else ""
                    raise ValueError(
                        f"learnable {name} must start > 0, got {value!r}{default}: an exponent of 0 switches its "
                        "measure off, which a gradient cannot undo; start from a small positive value or keep it fixed"
                    )
                self.register_parameter(name, nn.Parameter(tensor))
                if name in POSITIVE:
                    floor = SIGMA_FLOOR if name == "sigma" else 0.0
                    parametrize.register_parametrization(self, name, _Softplus(floor))
            else:
                self.register_buffer(name, tensor)
        check_levels(levels)
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
        result = fuse_5d(
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
        for name in NAMES:
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

