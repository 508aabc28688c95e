"""efusion.color: gray/luma weight tables, rgb_to_gray and the sRGB transfer function."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from efusion.color import MATLAB_GRAY, OPENCV_GRAY, REC709_LUMA, rgb_to_gray, srgb_encode


def srgb_iec(v: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1:1999 section 5.2, written from the standard in float64."""
    return np.where(v <= 0.0031308, 12.92 * v, 1.055 * np.power(np.maximum(v, 0.0031308), 1 / 2.4) - 0.055)


class TestTables:
    def test_weights_are_the_documented_ones(self):
        assert MATLAB_GRAY == (0.298936021293775, 0.587043074451121, 0.114020904255103)
        assert OPENCV_GRAY == (0.299, 0.587, 0.114)
        assert REC709_LUMA == (0.2126, 0.7152, 0.0722)

    @pytest.mark.parametrize("table", [MATLAB_GRAY, OPENCV_GRAY, REC709_LUMA])
    def test_white_stays_white(self, table):
        assert sum(table) == pytest.approx(1.0, abs=1e-12)


class TestRgbToGray:
    def test_weighted_sum(self):
        rgb = torch.rand(2, 3, 5, 7, dtype=torch.float64)
        expected = 0.298936021293775 * rgb[:, 0] + 0.587043074451121 * rgb[:, 1] + 0.114020904255103 * rgb[:, 2]
        torch.testing.assert_close(rgb_to_gray(rgb), expected.unsqueeze(1), atol=1e-15, rtol=0)
        torch.testing.assert_close(rgb_to_gray(rgb, REC709_LUMA)[:, 0],
                                   0.2126 * rgb[:, 0] + 0.7152 * rgb[:, 1] + 0.0722 * rgb[:, 2], atol=1e-15, rtol=0)

    def test_gray_passes_through_and_dtype_is_kept(self):
        gray = torch.rand(4, 1, 3, 3)
        assert rgb_to_gray(gray) is gray
        assert rgb_to_gray(torch.rand(3, 4, 4, dtype=torch.float16)).shape == (1, 4, 4)
        assert rgb_to_gray(torch.rand(3, 4, 4, dtype=torch.float16)).dtype == torch.float16


class TestSrgbEncode:
    def test_matches_iec_61966_2_1(self):
        v = np.concatenate([np.linspace(0.0, 1.0, 1001), [0.0031308, 0.0031309, 1e-6]])
        out = srgb_encode(torch.from_numpy(v)).numpy()
        np.testing.assert_allclose(out, srgb_iec(v), rtol=0, atol=1e-15)
        assert srgb_encode(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist() == pytest.approx([0.0, 1.0], abs=1e-15)

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.floats(0.0, 1.0, width=32), min_size=1, max_size=64))
    def test_inplace_gives_the_same_bits(self, values):
        x = torch.tensor(values, dtype=torch.float32)
        expected = srgb_encode(x)
        y = x.clone()
        out = srgb_encode(y, inplace=True)
        assert out.data_ptr() == y.data_ptr() and torch.equal(out, expected)

    def test_monotone_and_differentiable(self):
        x = torch.linspace(0.0, 1.0, 257, dtype=torch.float64, requires_grad=True)
        y = srgb_encode(x)
        assert bool((y[1:] > y[:-1]).all())
        y.sum().backward()
        assert bool(torch.isfinite(x.grad).all() and (x.grad > 0).all())
