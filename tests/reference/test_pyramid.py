"""Pyramid ops against independent transliterations of MATLAB's code and against OpenCV."""
from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from efusion import (
    collapse_laplacian_pyramid,
    gaussian_pyramid,
    get_preset,
    laplacian_pyramid,
    pyr_down,
    pyr_up,
)
from efusion.reference.pyramid import level_size

cv2 = pytest.importorskip("cv2")

FILTER = np.array([1, 4, 6, 4, 1], dtype=np.float64) / 16


def _matlab_filter2(image: np.ndarray, pad_mode: str) -> np.ndarray:
    """imfilter(I, f' * f, mode) with a dense 5x5 kernel (correlation, 'same' size)."""
    kernel = np.outer(FILTER, FILTER)
    if pad_mode == "zero":
        padded = np.pad(image, 2)
    else:
        padded = np.pad(image, 2, mode=pad_mode)
    h, w = image.shape
    out = np.zeros_like(image)
    for i in range(5):
        for j in range(5):
            out += kernel[i, j] * padded[i:i + h, j:j + w]
    return out


def matlab_downsample(image: np.ndarray) -> np.ndarray:
    """Mertens' downsample.m: imfilter 'symmetric' then I(1:2:end, 1:2:end)."""
    return _matlab_filter2(image, "symmetric")[::2, ::2]


def matlab_upsample(image: np.ndarray, fine: tuple[int, int]) -> np.ndarray:
    """Mertens' upsample.m: padarray replicate, zero insertion times 4, imfilter (zero pad), crop."""
    padded = np.pad(image, 1, mode="edge")
    r, c = 2 * padded.shape[0], 2 * padded.shape[1]
    big = np.zeros((r, c))
    big[::2, ::2] = 4 * padded
    big = _matlab_filter2(big, "zero")
    odd = (2 * image.shape[0] - fine[0], 2 * image.shape[1] - fine[1])
    return big[2:r - 2 - odd[0], 2:c - 2 - odd[1]]


SIZES = [(1, 1), (1, 4), (2, 3), (3, 3), (5, 8), (7, 9), (16, 16), (17, 31)]


class TestPyrDown:
    def test_smoke(self):
        assert pyr_down(torch.rand(2, 3, 8, 10)).shape == (2, 3, 4, 5)

    @pytest.mark.parametrize("size", SIZES)
    def test_cardinality(self, size):
        h, w = size
        assert pyr_down(torch.rand(h, w)).shape == ((h + 1) // 2, (w + 1) // 2)

    @pytest.mark.parametrize("size", SIZES)
    def test_matches_matlab(self, size):
        x = np.random.default_rng(0).random(size)
        ours = pyr_down(torch.from_numpy(x), "mertens").numpy()
        np.testing.assert_allclose(ours, matlab_downsample(x), atol=1e-14)

    @pytest.mark.parametrize("size", SIZES)
    def test_matches_opencv(self, size):
        x = np.random.default_rng(1).random(size).astype(np.float32)
        ours = pyr_down(torch.from_numpy(x), "opencv").numpy()
        np.testing.assert_allclose(ours, cv2.pyrDown(x), atol=2e-7)

    def test_constant_preserved(self):
        x = torch.full((1, 9, 13), 0.3, dtype=torch.float64)
        for preset in ("mertens", "opencv"):
            torch.testing.assert_close(pyr_down(x, preset), torch.full((1, 5, 7), 0.3, dtype=torch.float64))

    def test_gradcheck(self):
        x = torch.rand(1, 2, 7, 9, dtype=torch.float64, requires_grad=True)
        for preset in ("mertens", "opencv"):
            assert torch.autograd.gradcheck(lambda t, preset=preset: pyr_down(t, preset), (x,))


class TestPyrUp:
    @pytest.mark.parametrize("size", SIZES)
    def test_matches_matlab(self, size):
        h, w = size
        coarse = np.random.default_rng(2).random(((h + 1) // 2, (w + 1) // 2))
        ours = pyr_up(torch.from_numpy(coarse), (h, w), "mertens").numpy()
        np.testing.assert_allclose(ours, matlab_upsample(coarse, (h, w)), atol=1e-14)

    @pytest.mark.parametrize("size", SIZES)
    def test_matches_opencv(self, size):
        h, w = size
        coarse = np.random.default_rng(3).random(((h + 1) // 2, (w + 1) // 2)).astype(np.float32)
        ours = pyr_up(torch.from_numpy(coarse), (h, w), "opencv").numpy()
        np.testing.assert_allclose(ours, cv2.pyrUp(coarse, dstsize=(w, h)), atol=3e-7)

    def test_exception(self):
        with pytest.raises(ValueError, match="pyr_up of a 3x4 image"):
            pyr_up(torch.rand(3, 4), (8, 8))

    def test_gradcheck(self):
        x = torch.rand(2, 4, 5, dtype=torch.float64, requires_grad=True)
        for preset in ("mertens", "opencv"):
            assert torch.autograd.gradcheck(lambda t, preset=preset: pyr_up(t, (7, 10), preset), (x,))


class TestLaplacianPyramid:
    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    @settings(max_examples=25, deadline=None)
    @given(h=st.integers(1, 40), w=st.integers(1, 40), levels=st.integers(1, 6))
    def test_round_trip(self, preset, h, w, levels):
        x = torch.rand(2, 3, h, w, dtype=torch.float64)
        pyramid = laplacian_pyramid(x, levels, preset)
        assert len(pyramid) == levels
        torch.testing.assert_close(collapse_laplacian_pyramid(pyramid, preset), x, atol=1e-14, rtol=0)

    def test_shapes(self):
        pyramid = gaussian_pyramid(torch.rand(1, 1, 17, 31), 4)
        assert [tuple(p.shape[-2:]) for p in pyramid] == [(17, 31), (9, 16), (5, 8), (3, 4)]

    def test_residual_is_gaussian_level(self):
        x = torch.rand(3, 20, 24, dtype=torch.float64)
        assert torch.equal(laplacian_pyramid(x, 3)[-1], gaussian_pyramid(x, 3)[-1])

    @pytest.mark.parametrize("levels", [0, -1, 2.5, True])
    def test_exception(self, levels):
        with pytest.raises(ValueError, match="levels must be an integer >= 1"):
            gaussian_pyramid(torch.rand(4, 4), levels)

    def test_empty_collapse(self):
        with pytest.raises(ValueError, match="empty pyramid"):
            collapse_laplacian_pyramid([])


class TestMaxLevels:
    @pytest.mark.parametrize("side", [1, 2, 3, 7, 8, 9, 340, 512, 8192, 32768])
    def test_mertens(self, side):
        # MATLAB: floor(log(min) / log(2)) in double; at least one level
        assert get_preset("mertens").max_levels(side, side + 5) == max(1, int(np.floor(np.log(side) / np.log(2))))

    @pytest.mark.parametrize("side", [1, 2, 3, 8, 340, 512, 8192, 32768])
    def test_opencv(self, side):
        # OpenCV: (int)(logf(min) / logf(2)) + 1, with the C library's single-precision logf
        # (numpy's float32 log differs by an ulp at 8192, so ask libm itself)
        try:
            libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        except OSError:
            pytest.skip("no C math library to compare with")
        libm.logf.restype, libm.logf.argtypes = ctypes.c_float, [ctypes.c_float]
        ratio = np.float32(libm.logf(side)) / np.float32(libm.logf(2.0))
        assert get_preset("opencv").max_levels(side, side) == int(ratio) + 1


class TestLevelSize:
    @settings(max_examples=25, deadline=None)
    @given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 9))
    def test_sizes_of_the_pyramid(self, height, width, levels):
        # level_size is what repeated pyr_down makes (ceil(n / 2) per step)
        pyramid = gaussian_pyramid(torch.zeros(height, width), levels)
        assert [level_size((height, width), l) for l in range(levels)] == [tuple(g.shape) for g in pyramid]

    def test_pyr_down_checks_a_given_size(self):
        assert pyr_down(torch.rand(1, 9, 8), size=(5, 4)).shape == (1, 5, 4)
        with pytest.raises(ValueError, match=r"gives 5x4, got size \(4, 4\)"):
            pyr_down(torch.rand(1, 9, 8), size=(4, 4))


class _DownUp(torch.nn.Module):
    def __init__(self, preset: str) -> None:
        super().__init__()
        self.preset = preset

    def forward(self, x):
        coarse = pyr_down(x, self.preset)
        return coarse, pyr_up(coarse, x.shape[-2:], self.preset)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["mertens", "opencv"])
def test_traced_filters_equal_eager(preset):
    # with symbolic sizes (torch.export) the filters run as gathers and weighted sums: the same
    # values as the strided eager code, to float32 rounding, at sizes other than the traced one
    from torch.export import Dim
    from torch.fx.experimental import _config as fx_config

    with fx_config.patch(backed_size_oblivious=True):
        program = torch.export.export(_DownUp(preset), (torch.rand(2, 12, 10),),
                                      dynamic_shapes=({1: Dim("h", min=1), 2: Dim("w", min=1)},))
    generator = torch.Generator().manual_seed(4)
    for height, width in [(1, 1), (1, 7), (2, 3), (9, 16), (31, 4)]:
        x = torch.rand(2, height, width, generator=generator)
        for got, want in zip(program.module()(x), _DownUp(preset)(x)):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
