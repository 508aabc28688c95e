"""Pyramid depth -> per-level collapse coefficients (efusion.depth)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from efusion.depth import depth_plan
from efusion.presets import get_preset

MERTENS = get_preset("mertens")


def plan(levels, h=64, w=64, **kwargs):
    return depth_plan(levels, h, w, MERTENS, torch.float64, torch.device("cpu"), kwargs.pop("relative", None), **kwargs)


def test_integer_depth():
    band, residual = plan(3)
    assert band == [1.0, 1.0, 0.0] and residual == [0.0, 0.0, 1.0]


def test_automatic_and_relative_depth():
    assert plan(None) == plan(6)  # floor(log2(64)) levels
    assert plan(-1) == plan(6) and plan(-2) == plan(5)
    assert plan(100) == plan(6)  # clamped to the image's maximum
    assert plan(1) == ([0.0], [1.0])


def test_fractional_depth():
    band, residual = plan(2.25)
    assert band == [1.0, 0.25, 0.0] and residual == [0.0, 0.75, 0.25]


@settings(max_examples=30, deadline=None)
@given(st.floats(1.0, 6.0))
def test_tensor_depth_equals_number(levels):
    # dense tensor coefficients and sparse ones equal the number's plan (padded with zeros)
    band, residual = plan(levels)
    for sparse in (False, True):
        tb, tr = plan(torch.tensor(levels, dtype=torch.float64), sparse=sparse)
        tb = [float(c) for c in tb] + [0.0] * (6 - len(tb))
        tr = [float(c) for c in tr] + [0.0] * (6 - len(tr))
        expected_band = band + [0.0] * (6 - len(band))
        expected_residual = residual + [0.0] * (6 - len(residual))
        assert tb == pytest.approx(expected_band, abs=1e-12) and tr == pytest.approx(expected_residual, abs=1e-12)


def test_tensor_depth_gradient_is_kept_outside_the_range():
    levels = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    band, residual = plan(levels, relative=False)
    total = sum(c for c in band + residual if isinstance(c, torch.Tensor))
    (sum(i * c for i, c in enumerate(residual)) + total).backward()
    assert levels.grad is not None and levels.grad != 0  # clamped value, the nearest segment's gradient


class TestTracedDepthPlan:
    """The depth rule computed in a traced graph equals the eager plan (padded with zeros)."""

    @staticmethod
    def padded(coefficients, length):
        values = [float(c.detach()) if isinstance(c, torch.Tensor) else float(c) for c in coefficients]
        return values + [0.0] * (length - len(values))

    @staticmethod
    def both(levels, h, w, preset, relative=None, unrolled=16):
        from efusion.depth import traced_depth_plan

        preset = get_preset(preset)
        cpu = torch.device("cpu")
        eager = depth_plan(levels, h, w, preset, torch.float64, cpu, relative)
        traced = traced_depth_plan(levels, h, w, preset, torch.float64, cpu, relative, unrolled)
        return eager, traced

    @settings(max_examples=60, deadline=None)
    @given(
        h=st.integers(1, 65535), w=st.integers(1, 65535),  # depths up to 16 (opencv at 2^16: 17)
        levels=st.one_of(st.none(), st.integers(1, 20), st.integers(-20, -1), st.floats(1.0, 18.0), st.floats(-18.0, -1.0)),
        preset=st.sampled_from(["mertens", "opencv"]),
    )
    def test_equals_eager_plan(self, h, w, levels, preset):
        eager, traced = self.both(levels, h, w, preset)
        for e, t in zip(eager, traced):
            assert self.padded(t, 16) == pytest.approx(self.padded(e, 16), abs=1e-12)

    @pytest.mark.parametrize("side", [1, 2, 3, 7, 8, 8191, 8192, 8193, 32767, 32768, 32769, 65535])
    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    def test_automatic_depth_at_powers_of_two(self, side, preset):
        # OpenCV's float32 logf makes 8192 and 32768 one level short: kept by the traced rule
        eager, traced = self.both(None, side, side + 5, preset)
        assert self.padded(traced[1], 16) == self.padded(eager[1], 16)

    def test_tensor_depth_and_gradient(self):
        depth = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
        eager, traced = self.both(depth, 40, 50, "mertens", relative=True)
        for e, t in zip(eager, traced):
            assert self.padded(t, 16) == pytest.approx(self.padded(e, 16), abs=1e-12)
        sum(c for c in traced[1] if isinstance(c, torch.Tensor)).backward()
        assert depth.grad is not None

    def test_capped_at_the_unrolled_levels(self):
        _, traced = self.both(None, 1000, 1000, "mertens", unrolled=5)  # automatic depth 9
        assert len(traced[1]) == 5 and float(traced[1][4]) == 1.0
