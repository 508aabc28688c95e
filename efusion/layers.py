"""The Mertens fusion as a layer: :class:`Fusion` holds the parameters (learnable or buffers) and its
``forward`` is :func:`efusion.exposure_fusion` (Mertens, Kautz & Van Reeth, Pacific Graphics 2007).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

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

__all__ = ["LEARNABLE_DEFAULT", "Fusion"]

#: state_dict key of whether ``levels`` counts from the automatic maximum (beside ``levels``)
_RELATIVE_KEY = "relative_levels"


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
    counts absolute levels or levels from the maximum, and that choice is kept however training
    moves it (the ``state_dict`` stores it as ``relative_levels``, pickling and :meth:`export` keep it).

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

    # parameters or buffers (nn.Module's __getattr__ finds them; declared for readers and mypy)
    contrast: Tensor
    saturation: Tensor
    exposure: Tensor
    mu: Tensor
    sigma: Tensor

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
        exponents = resolve_exponents(contrast, saturation, exposure, preset)
        values = {**dict(zip(("contrast", "saturation", "exposure"), exponents)), "mu": mu, "sigma": sigma}
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
        self.relative_levels: bool | None
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

    @classmethod
    def from_params(cls, params: dict, learnable: bool | Iterable[str] = ()) -> Fusion:
        """A layer from :meth:`export`'s dictionary (or a parameter file's, :func:`efusion.io.read_params`).

        This is the portable route between configurations and versions: plain numbers, no tensor
        keys. ``learnable`` is the new layer's choice, whatever the exporting layer learned.
        """
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict as Fusion.export() returns, got {type(params).__name__}")
        unknown = sorted(set(params) - {*NAMES, "preset"})
        if unknown:
            raise ValueError(f"unknown fusion parameter(s) {unknown}; expected among {[*NAMES, 'preset']}")
        return cls(**params, learnable=learnable)

    def __reduce_ex__(self, protocol):
        # A parametrised module refuses plain pickling; the layer is rebuilt instead from its
        # configuration and its state_dict (raw values, so parameters come back bit for bit).
        cls = type(self).__bases__[0] if parametrize.is_parametrized(self) else type(self)
        frozen = [name for name, p in self.named_parameters() if not p.requires_grad]
        return _restore, (cls, self._configuration(), self.state_dict(), frozen, self.training)

    def __deepcopy__(self, memo):
        restore, args = self.__reduce_ex__(2)
        return restore(*copy.deepcopy(args, memo))

    def _configuration(self) -> dict:
        """Constructor arguments that rebuild this layer's structure (values come from the state_dict)."""
        config: dict = {"preset": self.preset, "learnable": self.learnable}
        for name in NAMES[:-1]:  # placeholders of the right shape; positive for learnable exponents
            config[name] = getattr(self, name).detach().cpu().clamp(min=1.0).tolist()
        config["levels"] = None if self.levels is None else (-1.0 if self.relative_levels else 1.0)
        return config

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # Whether a depth counts from the maximum is written down, not left to its sign: training
        # may move a relative learnable depth above 0 (clamped to the maximum in the forward pass).
        if self.levels is not None:
            destination[f"{prefix}{_RELATIVE_KEY}"] = torch.tensor(bool(self.relative_levels))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # The values carry over between learnable sets: a learnable positive parameter is stored
        # raw (``parametrizations.X.original``, before the softplus), a fixed one as its value.
        for name in POSITIVE:
            raw_key, value_key = f"{prefix}parametrizations.{name}.original", f"{prefix}{name}"
            floor = SIGMA_FLOOR if name == "sigma" else 0.0
            learnable_here = parametrize.is_parametrized(self, name)
            with torch.no_grad():
                if raw_key in state_dict and not learnable_here:
                    state_dict[value_key] = _Softplus(floor)(state_dict.pop(raw_key))
                elif value_key in state_dict and learnable_here:
                    value = state_dict.pop(value_key)
                    try:
                        state_dict[raw_key] = _Softplus(floor).right_inverse(value)
                    except ValueError as error:
                        raise ValueError(
                            f"cannot load {name}={value.tolist()} into a Fusion that learns {name}: {error}"
                        ) from None
        levels_key = f"{prefix}levels"
        stored_relative = state_dict.pop(f"{prefix}{_RELATIVE_KEY}", None)
        if levels_key in state_dict:
            value = state_dict[levels_key]
            if self.levels is None:  # an automatic depth here: take the stored one
                self._buffers["levels"] = torch.empty_like(value)
            if value.dim() == 0:  # state_dicts from before the flag was stored: the sign decides
                self.relative_levels = bool(value < 0) if stored_relative is None else bool(stored_relative)
        elif self.levels is not None:  # stored automatic depth
            if "levels" in self._parameters:  # learnable: the automatic depth is -1, relative
                state_dict[levels_key] = torch.tensor(-1.0)
                self.relative_levels = True
            else:
                self._buffers["levels"] = None
                self.relative_levels = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        values = ", ".join(f"{k}={v!r}" if not isinstance(v, float) else f"{k}={v:.4g}" for k, v in self.export().items())
        return f"{values}, learnable={list(self.learnable)}"



def _restore(cls: type, config: dict, state: dict, frozen: list, training: bool) -> Fusion:
    """Rebuild a pickled :class:`Fusion` (see ``Fusion.__reduce_ex__``)."""
    layer = cls(**config)
    layer.load_state_dict(state, assign=True)
    for name, parameter in layer.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return layer.train(training)
