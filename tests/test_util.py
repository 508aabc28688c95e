"""efusion._util: the small helpers several modules share (Gaussian window, masked mean, number check)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from efusion._util import gaussian_taps, is_positive_number, masked_mean


@pytest.mark.parametrize("size, sigma", [(1, 1.0), (5, 0.8), (11, 1.5), (21, 3.7)])
def test_gaussian_taps_is_fspecial(size, sigma):
    # MATLAB fspecial('gaussian', [size size], sigma) is separable: its 1-D factor, normalised
    x = np.arange(size) - (size - 1) / 2
    expected = np.exp(-(x**2) / (2 * sigma**2))
    expected /= expected.sum()
    taps = gaussian_taps(size, sigma)
    assert taps.dtype == torch.float64 and taps.shape == (size,)
    np.testing.assert_allclose(taps.numpy(), expected, rtol=1e-15, atol=0)
    assert torch.equal(taps, taps.flip(0))
    assert gaussian_taps(size, sigma, dtype=torch.float32).dtype == torch.float32


def test_masked_mean():
    values = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).view(2, 3, 2, 2)
    torch.testing.assert_close(masked_mean(values, None), values.mean(dim=(1, 2, 3)))
    valid = torch.zeros(2, 1, 2, 2)
    valid[0, 0, 0, 0] = 1  # one pixel of image 0; none of image 1
    torch.testing.assert_close(masked_mean(values, valid), torch.stack([values[0, :, 0, 0].mean(), values.new_zeros(())]))


@pytest.mark.parametrize("value, expected", [(1, True), (0.5, True), (0, False), (-1.0, False), (math.inf, False),
                                             (math.nan, False), (True, False), ("1", False), (torch.tensor(1.0), False)])
def test_is_positive_number(value, expected):
    assert is_positive_number(value) is expected
