"""The ``"cpu"`` backend's own machinery: band sizes, the workspace, and how it is selected."""
from __future__ import annotations

import pytest
import torch

import efusion
from efusion import backends
from efusion.backends.cpu.pyramid import DEFAULT_BAND_ELEMENTS, Workspace, band_rows


def test_band_rows():
    assert band_rows((1, 3, 3000, 4000), "cpu") % 2 == 0
    assert band_rows((1, 3, 7, 5), "cpu") == 8  # whole image (rounded up to even) when it fits
    assert band_rows((1, 3, 3000, 4000), "meta") == 3000  # off the CPU: no banding


def test_band_elements_option():
    shape = (1, 3, 3000, 4000)
    assert band_rows(shape, "cpu") == max(2, DEFAULT_BAND_ELEMENTS // (3 * 4000) // 2 * 2)
    with backends.use("cpu", band_elements=1):
        assert band_rows(shape, "cpu") == 2  # the smallest band: two rows
    with backends.use("cpu", band_elements=3 * 4000 * 10):
        assert band_rows(shape, "cpu") == 10
    assert band_rows(shape, "cpu", band_elements=1) == 2  # an explicit size wins


def test_workspace_reuses_memory():
    ws = Workspace(torch.empty(0))
    a = ws.get("x", (4, 5))
    b = ws.get("x", (2, 3))
    assert a.data_ptr() == b.data_ptr() and b.shape == (2, 3)
    assert ws.get("y", (2,), torch.bool).dtype == torch.bool


def _backend_of(op, stack, inputs=(), **kwargs):
    return backends.select(op, stack, inputs, preset=efusion.get_preset("mertens"), **kwargs).name


class TestSelection:
    def test_default_rules(self):
        x = torch.rand(1, 2, 3, 4, 4)
        assert _backend_of("fuse", x) == "cpu"
        assert _backend_of("fuse", x.half()) == "reference"  # half precision: the reference's float32 weights
        mask = torch.ones(1, 2, 1, 4, 4, requires_grad=True)
        assert _backend_of("fuse", x, (mask,), mask=mask) == "reference"  # the kernels give masks no gradient
        assert _backend_of("blend", x, (mask,)) == "cpu"
        assert _backend_of("fuse_frames", x[:, 0], (torch.tensor(1.0, requires_grad=True),)) == "reference"

    def test_use_chooses_and_restores(self):
        x = torch.rand(1, 2, 3, 4, 4)
        with backends.use("reference"):
            assert _backend_of("fuse", x) == "reference"
            with backends.use("cpu"):
                assert _backend_of("fuse", x) == "cpu"
            assert _backend_of("fuse", x) == "reference"
        assert _backend_of("fuse", x) == "cpu"

    def test_torch_func_runs_the_reference(self):
        seen = []
        x = torch.rand(1, 2, 3, 4, 4, dtype=torch.float64)
        torch.func.grad(lambda s: seen.append(_backend_of("fuse", s)) or s.sum())(x)
        assert seen == ["reference"]

    def test_errors(self):
        with pytest.raises(ValueError, match="unknown backend 'gpu'"), backends.use("gpu"):
            pass
        with pytest.raises(ValueError, match="already registered"):
            backends.register("cpu", backends.get("cpu"))
        with pytest.raises(ValueError, match="unknown op"):
            backends.select("pyramid", torch.rand(1, 2, 3, 4, 4), preset=efusion.get_preset("mertens"))

    def test_available(self):
        assert backends.available()[0] == "reference" and "cpu" in backends.available()

    def test_reference_results_differ_from_kernels_only_by_rounding(self):
        x = torch.rand(2, 3, 3, 17, 19, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        fused = efusion.exposure_fusion(x, contrast=0.7)
        with backends.use("reference"):
            reference = efusion.exposure_fusion(x, contrast=0.7)
        assert not fused.requires_grad
        torch.testing.assert_close(fused, reference, atol=1e-13, rtol=0)
