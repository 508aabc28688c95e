"""Quality measures and weights against direct transliterations of Mertens' MATLAB code and OpenCV."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import gradcheck_stack
from efusion import contrast, luma, mertens_weights, saturation, well_exposedness

cv2 = pytest.importorskip("cv2")

MATLAB_GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def random_stack(n=3, h=12, w=15, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g, dtype=dtype)
    x[:, :, :3, :4] = 0.5  # flat, achromatic patch
    x[0, :, -2:, -3:] = 0.0  # black
    x[-1, :, -2:, :2] = 1.0  # white
    return x


def np_frames(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]


class TestMeasuresAgainstMatlab:
    """contrast.m / saturation.m / well_exposedness.m written out in numpy."""

    def test_contrast(self):
        x = random_stack()
        for frame, ours in zip(np_frames(x), contrast(x)):
            mono = frame @ MATLAB_GRAY
            p = np.pad(mono, 1, mode="edge")
            lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * mono
            np.testing.assert_allclose(ours[0].numpy(), np.abs(lap), atol=1e-14)

    def test_saturation(self):
        x = random_stack()
        for frame, ours in zip(np_frames(x), saturation(x)):
            np.testing.assert_allclose(ours[0].numpy(), frame.std(axis=-1), atol=1e-14)

    def test_well_exposedness(self):
        x = random_stack()
        for frame, ours in zip(np_frames(x), well_exposedness(x)):
            expected = np.prod(np.exp(-0.5 * (frame - 0.5) ** 2 / 0.2**2), axis=-1)
            np.testing.assert_allclose(ours[0].numpy(), expected, rtol=1e-13)

    def test_well_exposedness_per_channel(self):
        x = random_stack()
        mu, sigma = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.1, 0.2, 0.3])
        expected = np.prod(
            np.exp(-0.5 * (np_frames(x) - mu.numpy()) ** 2 / sigma.numpy() ** 2), axis=-1
        )
        np.testing.assert_allclose(well_exposedness(x, mu, sigma)[:, 0].numpy(), expected, rtol=1e-6)

    def test_weights(self):
        x = random_stack()
        frames = np_frames(x)
        raw = []
        for frame in frames:
            mono = frame @ MATLAB_GRAY
            p = np.pad(mono, 1, mode="edge")
            c = np.abs(p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * mono)
            s = frame.std(axis=-1)
            e = np.prod(np.exp(-0.5 * (frame - 0.5) ** 2 / 0.04), axis=-1)
            raw.append(c**2 * s**1.5 * e**0.5 + 1e-12)
        raw = np.stack(raw)
        expected = raw / raw.sum(0)
        ours = mertens_weights(x, contrast=2.0, saturation=1.5, exposure=0.5)
        np.testing.assert_allclose(ours[:, 0].numpy(), expected, rtol=1e-10, atol=1e-15)


class TestMeasuresAgainstOpenCV:
    def test_luma_and_contrast(self):
        rng = np.random.default_rng(0)
        frame = (rng.integers(0, 256, (20, 30, 3)).astype(np.float32)) * np.float32(1 / 255)
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        x = torch.from_numpy(frame).permute(2, 0, 1)
        np.testing.assert_allclose(luma(x, "opencv-rgb")[0].numpy(), gray, atol=1.2e-7)
        lap = np.abs(cv2.Laplacian(gray, cv2.CV_32F))
        np.testing.assert_allclose(contrast(x, "opencv-rgb")[0].numpy(), lap, atol=1e-6)

    def test_luma_and_contrast_of_bgr_frames(self):
        # OpenCV's users hold cv2.imread's BGR frames; merge.cpp converts them with RGB2GRAY anyway
        rng = np.random.default_rng(1)
        frame = (rng.integers(0, 256, (20, 30, 3)).astype(np.float32)) * np.float32(1 / 255)  # RGB
        gray = cv2.cvtColor(np.ascontiguousarray(frame[..., ::-1]), cv2.COLOR_RGB2GRAY)
        x = torch.from_numpy(frame).permute(2, 0, 1)
        np.testing.assert_allclose(luma(x, "opencv")[0].numpy(), gray, atol=1.2e-7)
        lap = np.abs(cv2.Laplacian(gray, cv2.CV_32F))
        np.testing.assert_allclose(contrast(x, "opencv")[0].numpy(), lap, atol=1e-6)


class TestWeights:
    def test_sum_to_one(self):
        w = mertens_weights(random_stack(n=4))
        torch.testing.assert_close(w.sum(0), torch.ones(1, 12, 15, dtype=torch.float64))

    def test_cardinality(self):
        assert mertens_weights(torch.rand(2, 5, 3, 8, 9)).shape == (2, 5, 1, 8, 9)
        assert mertens_weights(torch.rand(5, 1, 8, 9)).shape == (5, 1, 8, 9)

    def test_exponent_zero_switches_measure_off(self):
        x = random_stack()
        only_exposure = mertens_weights(x, contrast=0, saturation=0)
        e = well_exposedness(x) + 1e-12
        torch.testing.assert_close(only_exposure, e / e.sum(0))
        # the same through tensor exponents (the learnable path)
        zero = torch.tensor(0.0, dtype=torch.float64)
        torch.testing.assert_close(mertens_weights(x, contrast=zero, saturation=zero), only_exposure)

    def test_zero_measure_to_a_power_stays_zero(self):
        # gray pixels have saturation 0: 0 ** 0.5 must be 0, not eps ** 0.5
        x = torch.full((2, 3, 4, 4), 0.5, dtype=torch.float64)
        x[0, 0] = 0.6  # frame 0 coloured, frame 1 gray everywhere
        w = mertens_weights(x, contrast=0, saturation=0.5, exposure=0)
        assert torch.all(w[1] < 1e-9)

    def test_tensor_and_number_exponents_agree(self):
        x = random_stack()
        kwargs = dict(contrast=0.7, saturation=1.3, exposure=2.0, mu=0.45, sigma=0.25)
        as_tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in kwargs.items()}
        torch.testing.assert_close(mertens_weights(x, **as_tensors), mertens_weights(x, **kwargs))

    def test_mask(self):
        x = random_stack(n=3)
        mask = torch.ones(3, 1, 1, 1, dtype=torch.float64)
        mask[2] = 0
        torch.testing.assert_close(mertens_weights(x, mask=mask)[:2], mertens_weights(x[:2]))
        assert torch.all(mertens_weights(x, mask=mask)[2] == 0)

    def test_mask_everything_removed_gives_zero(self):
        w = mertens_weights(random_stack(n=2), mask=torch.zeros(2, 1, 12, 15))
        assert torch.all(w == 0)

    def test_gray_stack_has_no_saturation(self):
        x = random_stack()[:, :1]
        e = well_exposedness(x)
        c = contrast(x)
        raw = c * e + 1e-12
        torch.testing.assert_close(mertens_weights(x), raw / raw.sum(0))

    def test_half_precision_runs(self):
        x = random_stack(dtype=torch.float32)
        for dtype in (torch.float16, torch.bfloat16):
            w = mertens_weights(x.to(dtype))
            assert w.dtype == dtype and torch.isfinite(w).all()
            # the same frames in float32: only the rounding of the result differs
            torch.testing.assert_close(w.float(), mertens_weights(x.to(dtype).float()), atol=1e-2, rtol=0)

    def test_gradients_finite_at_zero_measures(self):
        x = random_stack().requires_grad_()
        params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in
                  dict(contrast=0.5, saturation=0.5, exposure=1.0, mu=0.5, sigma=0.2).items()}
        (mertens_weights(x, **params) * torch.rand(3, 1, 12, 15, dtype=torch.float64)).sum().backward()
        for t in [x, *params.values()]:
            assert torch.isfinite(t.grad).all()

    def test_gradcheck_stack(self):
        # Exponents 1 and >= 2 only: at achromatic or flat pixels a measure is 0 and m^p with
        # 1 < p < 2 is C^1 but not C^2 there, so finite differences err by ~eps^(p-1) although the
        # analytical gradient (0) is exact. Parameters are checked at other exponents below.
        x = gradcheck_stack(2, 3, 6, 7).requires_grad_()
        params = [torch.tensor(v, dtype=torch.float64) for v in (1.0, 2.0, 1.7, 0.45, 0.22)]

        def fn(x):
            return mertens_weights(x, contrast=params[0], saturation=params[1], exposure=params[2],
                                   mu=params[3], sigma=params[4])

        assert torch.autograd.gradcheck(fn, (x,))

    def test_gradcheck_parameters(self):
        x = gradcheck_stack(2, 3, 6, 7)
        params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.8, 1.3, 1.7, 0.45, 0.22)]

        def fn(c, s, e, mu, sigma):
            return mertens_weights(x, contrast=c, saturation=s, exposure=e, mu=mu, sigma=sigma)

        assert torch.autograd.gradcheck(fn, tuple(params))

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            (dict(contrast=-1.0), ValueError, "contrast must be >= 0"),
            (dict(saturation=-0.1), ValueError, "saturation must be >= 0"),
            (dict(exposure=float("nan")), ValueError, "exposure must be a number"),
            (dict(sigma=0.0), ValueError, "sigma must be > 0"),
            (dict(sigma=torch.tensor(-0.2)), ValueError, "sigma must be > 0"),
            (dict(mu="0.5"), TypeError, "mu must be a number or a tensor"),
            (dict(contrast=torch.tensor([1.0, 2.0])), ValueError, "contrast must be a number or a 0-dim tensor"),
            (dict(mu=torch.ones(2)), ValueError, "3 values \\(one per channel\\)"),
            (dict(preset="matlab"), ValueError, "preset must be one of"),
            (dict(mask=torch.ones(2, 1, 12, 15)), ValueError, "does not broadcast to the weight shape"),
        ],
    )
    def test_exception(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            mertens_weights(random_stack(), **kwargs)
