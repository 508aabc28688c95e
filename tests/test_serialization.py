"""Saving a Fusion: pickle, copy.deepcopy, torch.save / torch.load (also in a fresh process) and
state_dicts that move between layers with different learnable sets."""
from __future__ import annotations

import copy
import io
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from efusion import Fusion

CONFIGS = [
    {},
    {"learnable": True},
    {"learnable": ["sigma", "mu"], "mu": [0.4, 0.5, 0.6], "exposure": 0.0},
    {"learnable": ["levels"], "levels": 3.5},
    {"learnable": ["levels", "contrast"], "contrast": 0.5},
    {"levels": -2, "preset": "opencv", "sigma": [0.2, 0.25, 0.3]},
]


def stack(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 3, 20, 24, generator=torch.Generator().manual_seed(seed))


def trained(config: dict) -> Fusion:
    """A layer whose parameters moved away from where the constructor put them."""
    layer = Fusion(**config)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.0375)
    return layer


def torch_round_trip(layer: Fusion) -> Fusion:
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def assert_params_close(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if isinstance(value, str) or value is None:
            assert got[name] == value, name
        else:
            assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name


def assert_same_layer(a: Fusion, b: Fusion) -> None:
    assert type(a) is type(b) or type(a).__name__ == type(b).__name__
    assert a.learnable == b.learnable and a.preset == b.preset and a.relative_levels == b.relative_levels
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert x.requires_grad == y.requires_grad, name
    assert a.training == b.training
    x = stack()
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("route", ["pickle", "deepcopy", "torch.save"])
def test_round_trip(config, route):
    layer = trained(config).eval()
    if route == "pickle":
        other = pickle.loads(pickle.dumps(layer))
    elif route == "deepcopy":
        other = copy.deepcopy(layer)
    else:
        other = torch_round_trip(layer)
    assert other is not layer
    assert_same_layer(layer, other)


def test_copy_is_independent():
    layer = Fusion(learnable=True)
    other = copy.deepcopy(layer)
    with torch.no_grad():
        other.mu.fill_(0.1)
    assert layer.mu.item() == pytest.approx(0.5)


def test_round_trip_keeps_frozen_parameters_dtype_and_gradients():
    layer = Fusion(learnable=True).double()
    layer.mu.requires_grad_(False)
    other = pickle.loads(pickle.dumps(layer))
    assert not other.mu.requires_grad and other.levels.requires_grad
    assert other.contrast.dtype == torch.float64
    other(stack().double()).mean().backward()
    assert other.parametrizations.contrast.original.grad is not None


def test_torch_load_in_a_fresh_process(tmp_path):
    layer = trained({"learnable": True, "levels": -2.0})
    torch.save(layer, tmp_path / "layer.pt")
    torch.save(stack(1), tmp_path / "stack.pt")
    script = textwrap.dedent(
        """
        import sys, torch
        layer = torch.load("layer.pt", weights_only=False)
        torch.save(layer(torch.load("stack.pt")).detach(), "out.pt")
        """
    )
    env_path = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": env_path, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert torch.equal(torch.load(tmp_path / "out.pt"), layer(stack(1)).detach())


class TestStateDictAcrossLearnableSets:
    @pytest.mark.parametrize("source", [{}, {"learnable": True}, {"learnable": ["sigma", "contrast", "levels"]},
                                        {"levels": 3}, {"levels": -2.0, "learnable": ["levels"]}], ids=str)
    @pytest.mark.parametrize("target", [{}, {"learnable": True}, {"learnable": ["sigma", "saturation"]},
                                        {"learnable": ["levels"], "levels": 2.0}, {"levels": 4}], ids=str)
    def test_values_carry_over(self, source, target):
        src = trained(source)
        dst = Fusion(**target)
        dst.load_state_dict(src.state_dict())
        assert dst.learnable == Fusion(**target).learnable  # the new layer's choice
        expected = src.export()
        got = dst.export()
        for name in ("contrast", "saturation", "exposure", "mu", "sigma"):
            assert got[name] == pytest.approx(expected[name], rel=1e-6, abs=1e-7), name
        if expected["levels"] is None and "levels" in dst.learnable:
            assert got["levels"] == -1.0  # the automatic depth, as a relative learnable one
        else:
            assert got["levels"] == expected["levels"]
        x = stack(2)
        assert (dst(x) - src(x)).abs().max() <= 1e-5

    def test_one_message_for_a_value_a_learnable_parameter_cannot_take(self):
        with pytest.raises(ValueError, match=r"cannot load contrast=0\.0 into a Fusion that learns contrast"):
            Fusion(learnable=True).load_state_dict(Fusion(contrast=0.0).state_dict())

    def test_one_message_for_a_shape_mismatch(self):
        with pytest.raises(RuntimeError, match=r"size mismatch for mu") as error:
            Fusion().load_state_dict(Fusion(mu=[0.4, 0.5, 0.6]).state_dict())
        assert str(error.value).count("size mismatch") == 1

    def test_nested_in_a_model(self):
        source = torch.nn.Sequential(trained({"learnable": True}))
        target = torch.nn.Sequential(Fusion())
        target.load_state_dict(source.state_dict())
        assert_params_close(target[0].export(), source[0].export())


class TestFromParams:
    def test_export_round_trip(self):
        layer = trained({"learnable": True, "mu": [0.4, 0.5, 0.6], "preset": "opencv", "exposure": 1.0})
        other = Fusion.from_params(layer.export(), learnable=["mu"])
        assert other.learnable == ("mu",) and other.preset == "opencv"
        assert_params_close(other.export(), layer.export())

    def test_errors(self):
        with pytest.raises(TypeError, match="dict"):
            Fusion.from_params([1.0])
        with pytest.raises(ValueError, match="colour"):
            Fusion.from_params({"colour": 1.0})


class TestRelativeDepthMovedAboveZero:
    """A relative learnable depth that training moved above 0 still counts from the maximum
    (the forward pass clamps it to the maximum) after every way of saving it."""

    @staticmethod
    def moved() -> Fusion:
        layer = Fusion(learnable=["levels"], levels=-2.0)
        with torch.no_grad():
            layer.levels.fill_(0.5)
        return layer

    def test_still_relative_here(self):
        # the reference: relative 0.5 clamps to the maximum (-1); as an absolute depth it would be 1 level
        layer, x = self.moved(), stack(3)
        assert torch.equal(layer(x), Fusion(levels=-1.0)(x))
        assert not torch.equal(layer(x), Fusion(levels=1.0)(x))

    @pytest.mark.parametrize("route", ["pickle", "deepcopy", "torch.save"])
    def test_round_trip(self, route):
        layer = self.moved()
        other = {"pickle": lambda l: pickle.loads(pickle.dumps(l)), "deepcopy": copy.deepcopy,
                 "torch.save": torch_round_trip}[route](layer)
        assert other.relative_levels is True and other.levels.item() == 0.5
        assert_same_layer(layer, other)

    @pytest.mark.parametrize("target", [{"learnable": ["levels"], "levels": 3.0}, {"levels": 2}, {}], ids=str)
    def test_state_dict(self, target):
        layer, dst = self.moved(), Fusion(**target)
        dst.load_state_dict(layer.state_dict())
        assert dst.relative_levels is True and dst.levels.item() == 0.5
        x = stack(4)
        assert torch.equal(dst(x), layer(x))

    def test_export_round_trip(self):
        layer = self.moved()
        other = Fusion(**layer.export())
        assert other.relative_levels is True
        x = stack(5)
        assert torch.equal(other(x), layer(x))

    def test_state_dict_without_the_flag_falls_back_to_the_sign(self):
        # state_dicts written before the flag was stored: a negative depth is relative, a positive one absolute
        state = Fusion(levels=3.0).state_dict()
        del state["relative_levels"]
        dst = Fusion(learnable=["levels"])
        dst.load_state_dict(state)
        assert dst.relative_levels is False and dst.levels.item() == 3.0

    def test_flag_is_stored_only_with_a_depth(self):
        assert "relative_levels" not in Fusion().state_dict()
        assert Fusion(levels=-2).state_dict()["relative_levels"].item() is True
        assert Fusion(levels=4).state_dict()["relative_levels"].item() is False
