"""Input validation shared by the public ops (efusion._checks): typed errors naming what was received."""
from __future__ import annotations

import pytest
import torch

from efusion import _checks


class TestAsStack:
    def test_shapes(self):
        stack, unbatched = _checks.as_stack(torch.rand(3, 3, 4, 5))
        assert stack.shape == (1, 3, 3, 4, 5) and unbatched
        stack, unbatched = _checks.as_stack(torch.rand(2, 3, 1, 4, 5))
        assert stack.shape == (2, 3, 1, 4, 5) and not unbatched
        stack, unbatched = _checks.as_stack([torch.rand(3, 4, 5), torch.rand(3, 4, 5)])
        assert stack.shape == (1, 2, 3, 4, 5) and unbatched

    @pytest.mark.parametrize(
        "value, error, match",
        [
            ([], ValueError, "has no frames"),
            ([torch.rand(3, 4, 5), "x"], TypeError, r"stack\[1\] must be a torch.Tensor, got str"),
            ([torch.rand(3, 4, 5), torch.rand(3, 4, 6)], ValueError, "frames differ in size: stack\\[0\\] is 3 x 4 x 5"),
            (torch.randint(0, 255, (3, 3, 4, 5), dtype=torch.uint8), TypeError, "stack.float\\(\\) / 255"),
            (torch.rand(3, 4, 5), ValueError, "got 3 dimensions"),
            (torch.rand(0, 3, 4, 5), ValueError, "N = 0 frames"),
            (torch.rand(2, 2, 4, 5), ValueError, "got C = 2"),
            (torch.rand(2, 3, 0, 5), ValueError, "H x W = 0 x 5"),
            (3.0, TypeError, "got float"),
        ],
    )
    def test_exception(self, value, error, match):
        with pytest.raises(error, match=match):
            _checks.as_stack(value)


def test_as_weights_and_mask():
    stack, unbatched = _checks.as_stack(torch.rand(2, 3, 4, 5))
    assert _checks.as_weights(torch.rand(2, 1, 4, 5), stack, unbatched).shape == (1, 2, 1, 4, 5)
    with pytest.raises(ValueError, match=r"weights must have shape \[2, 1, 4, 5\]"):
        _checks.as_weights(torch.rand(2, 3, 4, 5), stack, unbatched)
    mask = _checks.as_mask(torch.ones(1, 4, 5, dtype=torch.bool), stack, unbatched)
    assert mask.shape == (1, 1, 1, 4, 5) and mask.dtype == stack.dtype
    with pytest.raises(ValueError, match="does not broadcast to the weight shape"):
        _checks.as_mask(torch.ones(3, 1, 4, 5), stack, unbatched)
    assert _checks.as_mask(None, stack, unbatched) is None


def test_check_scalar():
    _checks.check_scalar(0.0, "contrast", minimum=0.0)
    _checks.check_scalar(torch.tensor([0.1, 0.2, 0.3]), "sigma", minimum=0.0, strict=True, size=3)
    with pytest.raises(ValueError, match=r"sigma must be > 0.0, got 0.0"):
        _checks.check_scalar(torch.tensor([0.1, 0.0, 0.3]), "sigma", minimum=0.0, strict=True, size=3)
    with pytest.raises(ValueError, match="mu must be a number, got NaN"):
        _checks.check_scalar(float("nan"), "mu")
    with pytest.raises(TypeError, match="floating-point tensor"):
        _checks.check_scalar(torch.tensor(1), "contrast")


@pytest.mark.parametrize("levels", [None, 1, 2.5, -1, -3.5, torch.tensor(2.0)])
def test_check_levels_accepts(levels):
    _checks.check_levels(levels)


@pytest.mark.parametrize(
    "levels, error, match",
    [(0, ValueError, "levels must be >= 1"), (-0.5, ValueError, "levels must be >= 1"), (True, TypeError, "got bool"),
     (torch.tensor([2.0]), ValueError, "0-dim tensor"), ("3", TypeError, "got str")],
)
def test_check_levels_rejects(levels, error, match):
    with pytest.raises(error, match=match):
        _checks.check_levels(levels)
