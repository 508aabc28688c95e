"""The Fusion layer (efusion.layers): parameters, parametrisations, export, and module == functional."""
from __future__ import annotations

import pytest
import torch

from efusion import Fusion, exposure_fusion

from conftest import gradcheck_stack, scene


class TestFusionModule:
    @staticmethod
    def functional(layer, x):
        """The functional op with the layer's own (float32-stored) values."""
        values = layer.export()
        return exposure_fusion(x, **values)

    @pytest.mark.parametrize("start, moved", [(None, -0.4), (3.0, 0.6)], ids=["relative", "absolute"])
    def test_export_round_trips_through_a_params_file(self, tmp_path, start, moved):
        # training can move a depth past its valid range (the forward clamps it) and learn one
        # mu/sigma per channel: the exported file must be readable and fuse like the layer
        from efusion.io import read_params, write_params

        layer = Fusion(mu=[0.4, 0.5, 0.6], sigma=[0.25, 0.2, 0.3], levels=start, learnable=["mu", "sigma", "levels"]).double()
        with torch.no_grad():
            layer.levels.fill_(moved)
        write_params(tmp_path / "p.yaml", layer.export())
        params = read_params(tmp_path / "p.yaml")
        assert params["levels"] == (-1.0 if start is None else 1.0)
        assert len(params["mu"]) == 3 and len(params["sigma"]) == 3
        x = scene()
        torch.testing.assert_close(exposure_fusion(x, **params), layer(x), atol=1e-12, rtol=0)

    def test_per_channel_lists(self):
        x = scene()
        as_lists = exposure_fusion(x, mu=[0.4, 0.5, 0.6], sigma=[0.25, 0.2, 0.3])
        as_tensors = exposure_fusion(x, mu=torch.tensor([0.4, 0.5, 0.6], dtype=x.dtype),
                                     sigma=torch.tensor([0.25, 0.2, 0.3], dtype=x.dtype))
        torch.testing.assert_close(as_lists, as_tensors, atol=0, rtol=0)
        assert not torch.allclose(as_lists, exposure_fusion(x))
        with pytest.raises(TypeError, match="non-empty list of numbers"):
            exposure_fusion(x, mu=[])
        with pytest.raises(ValueError, match="one per channel"):
            exposure_fusion(x, sigma=[0.2, 0.3])

    def test_smoke_equals_functional(self):
        x = scene(b=2)
        kwargs = dict(contrast=0.7, saturation=1.1, exposure=1.3, mu=0.45, sigma=0.25, levels=3)
        for learnable in ((), True):
            layer = Fusion(**kwargs, learnable=learnable).double()
            torch.testing.assert_close(layer(x), self.functional(layer, x), atol=1e-12, rtol=0)
            # float32 storage of 0.7, 0.25, ... is the only difference to the exact numbers
            torch.testing.assert_close(layer(x), exposure_fusion(x, **kwargs), atol=1e-6, rtol=0)

    def test_default_equals_functional(self):
        x = scene()
        for learnable in ((), True):
            layer = Fusion(learnable=learnable).double()
            torch.testing.assert_close(layer(x), self.functional(layer, x), atol=1e-12, rtol=0)

    def test_learnable_sets(self):
        assert Fusion(learnable=True).learnable == ("contrast", "saturation", "exposure", "mu", "levels")
        layer = Fusion(learnable=["contrast", "mu"])
        assert {n for n, _ in layer.named_parameters()} == {"parametrizations.contrast.original", "mu"}
        assert {n for n, _ in layer.named_buffers()} == {"saturation", "exposure", "sigma"}
        assert isinstance(layer.mu, torch.nn.Parameter) and not isinstance(layer.saturation, torch.nn.Parameter)

    def test_every_learnable_parameter_gets_a_gradient(self):
        with pytest.warns(UserWarning, match="redundant"):
            layer = Fusion(learnable=["contrast", "saturation", "exposure", "mu", "sigma", "levels"], levels=3).double()
        out = layer(scene())
        (out * torch.rand_like(out)).sum().backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs() > 0, name

    def test_exposure_and_sigma_warns(self):
        with pytest.warns(UserWarning, match="depends only on exposure / sigma\\^2"):
            Fusion(learnable=["exposure", "sigma"])

    def test_state_dict_round_trip(self):
        layer = Fusion(contrast=0.5, levels=-2, learnable=True)
        with torch.no_grad():
            layer.contrast = torch.tensor(0.3)
            layer.mu.fill_(0.6)
            layer.levels.fill_(-1.5)
        clone = Fusion(learnable=True)
        clone.load_state_dict(layer.state_dict())
        assert clone.export() == layer.export()
        assert abs(clone.export()["contrast"] - 0.3) < 1e-6
        x = scene(dtype=torch.float32)
        torch.testing.assert_close(clone(x), layer(x))
        fixed = Fusion(contrast=2.0, levels=3)
        other = Fusion(levels=3)
        other.load_state_dict(fixed.state_dict())
        assert other.export() == fixed.export()

    def test_constraints_hold_under_training(self):
        with pytest.warns(UserWarning):
            layer = Fusion(learnable=["contrast", "saturation", "exposure", "sigma"])
        opt = torch.optim.SGD(layer.parameters(), lr=1000.0)
        x = scene(dtype=torch.float32)
        for _ in range(5):
            opt.zero_grad()
            # a loss that pushes every exponent and sigma down hard
            (layer.contrast + layer.saturation + layer.exposure + layer.sigma + layer(x).mean()).backward()
            opt.step()
            assert all(torch.isfinite(p).all() for p in layer.parameters())
        assert layer.contrast >= 0 and layer.saturation >= 0 and layer.exposure >= 0 and layer.sigma >= 1e-3
        assert torch.isfinite(layer(x)).all()

    def test_learnable_depth_moves_from_an_integer(self):
        layer = Fusion(levels=3, learnable=["levels"]).double()
        out = layer(scene())
        (out * torch.rand_like(out)).sum().backward()
        assert layer.levels.grad != 0

    def test_relative_learnable_depth_starts_at_maximum(self):
        layer = Fusion(learnable=["levels"]).double()
        assert layer.levels.item() == -1.0
        x = scene()
        torch.testing.assert_close(layer(x), exposure_fusion(x, **{**layer.export(), "levels": None}), atol=1e-14, rtol=0)

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            (dict(contrast=0.0, learnable=["contrast"]), ValueError, "learnable contrast must start > 0"),
            (dict(preset="opencv", learnable=True), ValueError, "exposure must start > 0, got 0.0 \\(the 'opencv' preset's default"),
            (dict(learnable=["gamma"]), ValueError, "unknown learnable parameter"),
            (dict(sigma=-1.0), ValueError, "sigma must be > 0"),
            (dict(exposure=-1.0), ValueError, "exposure must be >= 0"),
            (dict(levels=0.5), ValueError, "levels must be >= 1"),
            (dict(preset="gimp"), ValueError, "preset must be one of"),
            (dict(contrast=[1.0, 2.0]), ValueError, "contrast must be a number"),
        ],
    )
    def test_exception(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            Fusion(**kwargs)

    def test_gradcheck_module_parameters(self):
        layer = Fusion(learnable=True, levels=2.5).double()
        x = gradcheck_stack(1, 3, 3, 9, 11)
        names = [n for n, _ in layer.named_parameters()]
        values = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]

        def fn(*tensors):
            return torch.func.functional_call(layer, dict(zip(names, tensors)), (x,))

        assert torch.autograd.gradcheck(fn, tuple(values))
