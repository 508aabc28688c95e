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
