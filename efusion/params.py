"""The fusion parameters, defined once: names, defaults, domains, validation, per-channel rules.

``contrast``, ``saturation``, ``exposure``: exponents >= 0 of Mertens' three measures (0
switches a measure off; ``None``, the default, is the preset's own default, see
:func:`resolve_exponents`); ``mu``, ``sigma``: centre and width (> 0) of the well-exposedness
Gaussian, one value or one per channel; ``levels``: the pyramid depth (see :mod:`efusion.depth`).
Mertens, Kautz & Van Reeth, "Exposure Fusion", Pacific Graphics 2007, Section 3.1 (the defaults
are ``exposure_fusion.m``'s).

The functional API, :class:`efusion.Fusion`, parameter files (:mod:`efusion.io`) and the command
line take their defaults and checks from here.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from . import _checks
from ._checks import check_levels
from ._util import ParamLike
from .presets import get_preset

__all__ = [
    "DEFAULTS",
    "EXPONENTS",
    "LEARNABLE_DEFAULT",
    "NAMES",
    "PER_CHANNEL",
    "POSITIVE",
    "SIGMA_FLOOR",
    "check_layer_value",
    "check_levels",
    "check_params",
    "check_value",
    "parse_learnable",
    "resolve_exponents",
]

#: every fusion parameter, in the order the functions take them
NAMES = ("contrast", "saturation", "exposure", "mu", "sigma", "levels")
#: exponents ``None``: the preset's (:attr:`efusion.Preset.exponent_defaults`: Mertens'
#: ``exposure_fusion(I, [1 1 1])``, OpenCV's ``createMergeMertens(1, 1, 0)``); ``well_exposedness.m``'s
#: Gaussian; ``levels=None`` is the preset's automatic depth
DEFAULTS: dict[str, Any] = {  # exponents None: the preset's (Preset.exponent_defaults)
    "contrast": None, "saturation": None, "exposure": None, "mu": 0.5, "sigma": 0.2, "levels": None,
}
#: the exponents of the three measures: >= 0, one value
EXPONENTS = ("contrast", "saturation", "exposure")
#: may be one value per channel
PER_CHANNEL = ("mu", "sigma")
#: must stay positive (exponents >= 0, sigma > 0); a learnable one is parametrised by a softplus
POSITIVE = ("contrast", "saturation", "exposure", "sigma")
#: ``learnable=True``: every identifiable parameter. ``sigma`` is left out because
#: ``E^e = exp(-e * sum_c (I_c - mu)^2 / (2 sigma^2))`` depends on ``e / sigma^2`` only.
LEARNABLE_DEFAULT = ("contrast", "saturation", "exposure", "mu", "levels")
#: smallest sigma a learnable sigma can reach (``1 / sigma^2`` stays finite in float32 inputs)
SIGMA_FLOOR = 1e-3


def resolve_exponents(contrast, saturation, exposure, preset) -> tuple[ParamLike, ParamLike, ParamLike]:
    """The three exponents with each ``None`` replaced by the preset's default
    (:attr:`efusion.Preset.exponent_defaults`)."""
    default_c, default_s, default_e = get_preset(preset).exponent_defaults
    return (default_c if contrast is None else contrast, default_s if saturation is None else saturation,
            default_e if exposure is None else exposure)


def check_value(name: str, value, *, label: str | None = None) -> None:
    """Check one number against parameter ``name``'s domain (exponents >= 0, ``sigma`` > 0,
    ``levels`` >= 1 or <= -1, ``mu`` any), raising the errors the fusion functions raise; parameter
    files and the command line check their values with it. ``label`` is how the message calls the
    value (default ``name``; parameter files quote it: ``'sigma' must be > 0``)."""
    shown = name if label is None else label
    if name == "levels":
        check_levels(value, shown)
    elif name == "sigma":
        _checks.check_scalar(value, shown, minimum=0.0, strict=True)
    elif name == "mu":
        _checks.check_scalar(value, shown)
    elif name in EXPONENTS:  # 0 switches a measure off
        _checks.check_scalar(value, shown, minimum=0.0)
    else:
        raise ValueError(f"unknown fusion parameter {name!r}; one of {list(NAMES)}")


def check_params(contrast, saturation, exposure, mu, sigma, channels: int) -> tuple[ParamLike, ParamLike]:
    """Validate the weight parameters (numbers or tensors; see :func:`efusion.mertens_weights`) and
    return ``mu, sigma`` with per-channel lists turned into tensors."""
    for name, value in (("contrast", contrast), ("saturation", saturation), ("exposure", exposure)):
        if isinstance(value, Tensor) and value.dim() != 0:
            raise ValueError(f"{name} must be a number or a 0-dim tensor, got shape {list(value.shape)}")
        _checks.check_scalar(value, name, minimum=0.0)
    mu, sigma = _checks.as_channel_param(mu, "mu"), _checks.as_channel_param(sigma, "sigma")
    _checks.check_scalar(mu, "mu", size=channels)
    _checks.check_scalar(sigma, "sigma", minimum=0.0, strict=True, size=channels)
    return mu, sigma


def check_layer_value(name: str, value) -> Tensor:
    """One of :class:`efusion.Fusion`'s parameters (not ``levels``) as a tensor of the default
    dtype, validated: a number, or for ``mu``/``sigma`` one value per channel (up to 3)."""
    tensor = torch.as_tensor(value, dtype=torch.get_default_dtype()).clone()
    if tensor.dim() > 1 or (tensor.dim() == 1 and name not in PER_CHANNEL):
        raise ValueError(f"{name} must be a number{' or one value per channel' if name in PER_CHANNEL else ''}, got {value!r}")
    _checks.check_scalar(tensor, name, minimum=0.0 if name in POSITIVE else None, strict=name == "sigma", size=3)
    return tensor


def parse_learnable(learnable: bool | Iterable[str]) -> tuple[str, ...]:
    """``learnable`` as given to :class:`efusion.Fusion` -> a tuple of parameter names."""
    if learnable is True:
        return LEARNABLE_DEFAULT
    if learnable is False or learnable is None:
        return ()
    if isinstance(learnable, str):
        learnable = [learnable]
    names = tuple(dict.fromkeys(learnable))
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown learnable parameter(s) {unknown}; choose among {list(NAMES)} or True")
    if "exposure" in names and "sigma" in names:
        warnings.warn(
            "learning both 'exposure' and 'sigma' is redundant: the well-exposedness weight "
            "exp(-exposure * sum_c (I_c - mu)^2 / (2 sigma^2)) depends only on exposure / sigma^2, "
            "so the two drift along a flat valley; learn one of them",
            UserWarning,
            stacklevel=3,
        )
    return names
