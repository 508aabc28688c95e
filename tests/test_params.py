"""The fusion parameters: one set of names and defaults, used by the functions, the layer and files."""
from __future__ import annotations

import inspect

import pytest
import torch

import efusion
from efusion import params


def test_defaults_are_the_signatures():
    for fn in (efusion.exposure_fusion, efusion.fuse_frames, efusion.Fusion.__init__):
        signature = inspect.signature(fn).parameters
        for name in params.NAMES:
            assert signature[name].default == params.DEFAULTS[name], (fn.__qualname__, name)
    signature = inspect.signature(efusion.mertens_weights).parameters
    assert {name: signature[name].default for name in params.NAMES[:5]} == {k: params.DEFAULTS[k] for k in params.NAMES[:5]}


def test_defaults_are_mertens():
    # exponents: the preset's; well_exposedness.m's Gaussian (0.5, 0.2)
    assert params.DEFAULTS == {"contrast": None, "saturation": None, "exposure": None, "mu": 0.5, "sigma": 0.2, "levels": None}
    # exposure_fusion.m's default [1 1 1]; cv2.createMergeMertens()'s (1, 1, 0)
    assert params.resolve_exponents(None, None, None, "mertens") == (1.0, 1.0, 1.0)
    assert params.resolve_exponents(None, None, None, "opencv") == (1.0, 1.0, 0.0)
    assert params.resolve_exponents(None, 0.5, 2.0, "opencv") == (1.0, 0.5, 2.0)
    assert params.resolve_exponents(None, None, None, "opencv-rgb") == (1.0, 1.0, 1.0)


def test_layer_export_names_every_parameter():
    assert set(efusion.Fusion().export()) == {*params.NAMES, "preset"}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(contrast=-0.1), ValueError, "contrast must be >= 0"),
        (dict(exposure=torch.ones(2)), ValueError, "exposure must be a number or a 0-dim tensor"),
        (dict(sigma=0.0), ValueError, "sigma must be > 0"),
        (dict(mu=[0.4, 0.5]), ValueError, "mu must be a 0-dim tensor or have 3 values"),
        (dict(mu="0.5"), TypeError, "mu must be a number or a tensor"),
        (dict(saturation=True), TypeError, "saturation must be a number or a tensor"),
    ],
)
def test_check_params_errors(kwargs, error, match):
    values = {**dict(zip(params.NAMES[:5], (1.0, 1.0, 1.0, 0.5, 0.2))), **kwargs}
    with pytest.raises(error, match=match):
        params.check_params(*(values[k] for k in params.NAMES[:5]), channels=3)


def test_check_params_per_channel_lists_become_tensors():
    mu, sigma = params.check_params(1.0, 1.0, 1.0, [0.4, 0.5, 0.6], 0.2, channels=3)
    assert torch.equal(mu, torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64)) and sigma == 0.2


def test_parse_learnable():
    assert params.parse_learnable(True) == params.LEARNABLE_DEFAULT
    assert params.parse_learnable(False) == ()
    assert params.parse_learnable("mu") == ("mu",)
    assert params.parse_learnable(["mu", "mu", "levels"]) == ("mu", "levels")
    with pytest.raises(ValueError, match="unknown learnable parameter"):
        params.parse_learnable(["gamma"])
    with pytest.warns(UserWarning, match="redundant"):
        params.parse_learnable(["exposure", "sigma"])


def test_check_layer_value():
    assert params.check_layer_value("mu", [0.4, 0.5, 0.6]).shape == (3,)
    with pytest.raises(ValueError, match="contrast must be a number, got"):
        params.check_layer_value("contrast", [1.0, 2.0])
    with pytest.raises(ValueError, match="sigma must be > 0"):
        params.check_layer_value("sigma", 0.0)


@pytest.mark.parametrize(
    "name, value, message",
    [("sigma", 0.0, "'sigma' must be > 0"), ("contrast", -1.0, "'contrast' must be >= 0"),
     ("levels", 0.5, "'levels' must be >= 1"), ("mu", float("nan"), "'mu' must be a number, got NaN")],
)
def test_check_value_label_names_the_value_in_the_message(name, value, message):
    # parameter files and flags quote the key; the message is made whole, never rewritten
    with pytest.raises(ValueError, match=f"^{message}"):
        params.check_value(name, value, label=repr(name))
    with pytest.raises(ValueError, match=f"^{message.replace(repr(name), name)}"):
        params.check_value(name, value)
