"""efusion.metrics.full_reference: PSNR and SSIM of an image against a ground truth (also
importable from efusion.quality and efusion.metrics)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from efusion.metrics import psnr, ssim

#: MATLAB rgb2gray's coefficients, written here as the independent reference
MATLAB_RGB2GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def luma(images: torch.Tensor) -> torch.Tensor:
    """``[..., C, H, W]`` float64 -> ``[..., 1, H, W]`` with MATLAB rgb2gray weights."""
    if images.shape[-3] == 1:
        return images
    return torch.einsum("...chw,c->...hw", images, torch.tensor(MATLAB_RGB2GRAY, dtype=torch.float64)).unsqueeze(-3)


def ssim_index_m(image: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """Transliteration of Wang's ``ssim_index.m`` (2D window, per-position loops, 'valid' region)."""
    axis = np.arange(11) - 5.0
    window = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * 1.5**2))
    window /= window.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    height, width = image.shape
    values = []
    for i in range(height - 10):
        for j in range(width - 10):
            x, y = image[i : i + 11, j : j + 11], reference[i : i + 11, j : j + 11]
            mx, my = (window * x).sum(), (window * y).sum()
            vx, vy = (window * x * x).sum() - mx * mx, (window * y * y).sum() - my * my
            cxy = (window * x * y).sum() - mx * my
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


class TestQuality:
    @pytest.fixture
    def pair(self):
        g = torch.Generator().manual_seed(0)
        reference = torch.rand(2, 3, 20, 26, generator=g, dtype=torch.float64)
        image = (reference + 0.2 * torch.rand(2, 3, 20, 26, generator=g, dtype=torch.float64)).clamp(0, 1)
        return image, reference

    def test_ssim_matches_ssim_index_m(self, pair):
        image, reference = pair
        expected = [ssim_index_m(luma(image[b])[0].numpy(), luma(reference[b])[0].numpy()) for b in range(2)]
        torch.testing.assert_close(ssim(image, reference), torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
        per_channel = [np.mean([ssim_index_m(image[b, c].numpy(), reference[b, c].numpy()) for c in range(3)]) for b in range(2)]
        torch.testing.assert_close(ssim(image, reference, gray=False), torch.tensor(per_channel, dtype=torch.float64),
                                   atol=1e-12, rtol=0)
        # scale invariance: 0-255 images with data_range=255 give the same index
        torch.testing.assert_close(ssim(image * 255, reference * 255, data_range=255), ssim(image, reference), atol=1e-12, rtol=0)

    def test_identical_and_symmetric(self, pair):
        image, reference = pair
        assert torch.equal(ssim(reference, reference), torch.ones(2, dtype=torch.float64))
        assert torch.isinf(psnr(reference, reference)).all()
        torch.testing.assert_close(ssim(image, reference), ssim(reference, image), atol=1e-14, rtol=0)
        assert (ssim(image, reference) < 1).all()

    def test_psnr_formula(self, pair):
        _, reference = pair
        shifted = reference + 0.1  # MSE 0.01 -> 20 dB
        torch.testing.assert_close(psnr(shifted, reference), torch.full((2,), 20.0, dtype=torch.float64), atol=1e-9, rtol=0)
        torch.testing.assert_close(psnr(shifted * 255, reference * 255, data_range=255), psnr(shifted, reference))

    def test_shapes(self, pair):
        image, reference = pair
        assert ssim(image[0], reference[0]).shape == () and psnr(image[0], reference[0]).shape == ()
        torch.testing.assert_close(ssim(image, reference), torch.stack([ssim(image[b], reference[b]) for b in range(2)]))
        assert ssim(image[:, :1], reference[:, :1]).shape == (2,)
        torch.testing.assert_close(ssim(image.float(), reference.float()).double(), ssim(image, reference), atol=1e-5, rtol=0)
        assert ssim(image.half(), reference.half()).dtype == torch.float16

    @pytest.mark.parametrize(
        "make, kwargs, error, match",
        [
            (lambda x, y: (x, y[..., :-1]), {}, ValueError, "same shape"),
            (lambda x, y: (x[..., :10, :], y[..., :10, :]), {}, ValueError, "smaller than the 11 x 11"),
            (lambda x, y: (x[0, 0], y[0, 0]), {}, ValueError, r"\[B, C, H, W\] or \[C, H, W\]"),
            (lambda x, y: ((x * 255).to(torch.uint8), y), {}, TypeError, "floating-point"),
            (lambda x, y: (x.numpy(), y), {}, TypeError, "torch.Tensor"),
            (lambda x, y: (x.float(), y), {}, TypeError, "share dtype"),
            (lambda x, y: (x, y), {"window_size": 10}, ValueError, "window_size"),
            (lambda x, y: (x, y), {"k2": 0.0}, ValueError, "k2"),
            (lambda x, y: (x, y), {"data_range": -1.0}, ValueError, "data_range"),
            (lambda x, y: (x[:, :2], y[:, :2]), {}, ValueError, "C = 2"),
        ],
    )
    def test_exception(self, pair, make, kwargs, error, match):
        image, reference = make(*pair)
        with pytest.raises(error, match=match):
            ssim(image, reference, **kwargs)


class TestPSNR:
    """The masked, floored PSNR that training logs is the same definition (10 log10(L^2 / MSE))."""

    def test_valid_counts_only_valid_pixels(self):
        g = torch.Generator().manual_seed(1)
        reference = torch.rand(2, 3, 8, 10, generator=g, dtype=torch.float64)
        image = reference.clone()
        image[..., :, :4] += 0.1  # error 0.1 on the left 4 columns only
        valid = torch.zeros(2, 1, 8, 10, dtype=torch.float64)
        valid[..., :, :4] = 1.0
        torch.testing.assert_close(psnr(image, reference, valid=valid), torch.full((2,), 20.0, dtype=torch.float64),
                                   atol=1e-9, rtol=0)
        # on the right half there is no error: infinite without a floor
        assert torch.isinf(psnr(image, reference, valid=1.0 - valid)).all()
        # all-valid equals no mask; unbatched equals batched
        torch.testing.assert_close(psnr(image, reference, valid=torch.ones_like(valid)), psnr(image, reference))
        torch.testing.assert_close(psnr(image[0], reference[0], valid=valid[0]), psnr(image, reference, valid=valid)[0])

    def test_mse_floor_caps_the_score(self):
        reference = torch.rand(1, 3, 6, 6, dtype=torch.float64)
        capped = psnr(reference, reference, mse_floor=1e-12)
        torch.testing.assert_close(capped, torch.full((1,), 120.0, dtype=torch.float64), atol=1e-9, rtol=0)
        shifted = reference + 0.1  # MSE 0.01, above the floor: unchanged
        torch.testing.assert_close(psnr(shifted, reference, mse_floor=1e-12), psnr(shifted, reference))
        assert psnr(shifted * 255, reference * 255, data_range=255, mse_floor=1e-12).item() == pytest.approx(20.0, abs=1e-9)
        assert math.isinf(psnr(reference, reference).item())

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"mse_floor": -1.0}, ValueError, "mse_floor"),
            ({"mse_floor": float("nan")}, ValueError, "mse_floor"),
            ({"valid": torch.ones(1, 1, 6, 5)}, ValueError, "valid must have shape"),
            ({"valid": [[1.0]]}, TypeError, "valid must be a torch.Tensor"),
        ],
    )
    def test_exception(self, kwargs, error, match):
        reference = torch.rand(1, 3, 6, 6)
        with pytest.raises(error, match=match):
            psnr(reference, reference, **kwargs)
