"""Reference tone-mapping operators (training.tonemap)."""
from __future__ import annotations

import math

import pytest
import torch

from training import tonemap


def _radiance(seed: int = 0, size=(3, 24, 32), span_ev: float = 12.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    log2 = torch.rand(size, generator=g) * span_ev - span_ev / 2
    return torch.exp2(log2)


class TestReinhard:
    def test_smoke(self):
        out = tonemap.reinhard(_radiance())
        assert out.shape == (3, 24, 32)
        assert out.min() >= 0 and out.max() <= 1

    def test_formula(self):
        # a gray image: L_d = L (1 + L / Lw^2) / (1 + L) with L = key / logavg * Lw, then sRGB
        radiance = torch.tensor([0.01, 0.1, 1.0, 10.0]).view(1, 1, 4).expand(3, 1, 4).clone()
        out = tonemap.reinhard(radiance, key=0.18, white=math.inf, encode=False)
        lum = radiance[0]
        log_average = torch.exp(torch.log(lum + 1e-6).mean())
        scaled = 0.18 / log_average * lum
        expected = scaled / (1 + scaled)
        torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[1], expected, rtol=1e-5, atol=1e-6)

    def test_white_point_maps_max_to_one(self):
        gray = _radiance(1)[:1].expand(3, -1, -1)
        out = tonemap.reinhard(gray, encode=False)
        assert float(out.max()) == pytest.approx(1.0, abs=1e-5)
        assert float(out.max()) <= 1.0

    def test_monotonic_in_luminance(self):
        ramp = torch.logspace(-3, 3, 50).view(1, 1, 50).expand(3, 1, 50).clone()
        out = tonemap.reinhard(ramp)[0, 0]
        assert bool((out[1:] >= out[:-1]).all())

    def test_batch_matches_single(self):
        batch = torch.stack([_radiance(2), _radiance(3) * 50])
        out = tonemap.reinhard(batch)
        torch.testing.assert_close(out[1], tonemap.reinhard(batch[1]))

    def test_colour_ratios_kept(self):
        radiance = torch.tensor([0.2, 0.4, 0.8]).view(3, 1, 1).expand(3, 4, 4) * torch.linspace(0.1, 2, 16).view(1, 4, 4)
        out = tonemap.reinhard(radiance, white=math.inf, encode=False)  # nothing clips
        assert float(out.max()) < 1
        ratio = out[0] / out[2]
        torch.testing.assert_close(ratio, torch.full_like(ratio, 0.25), rtol=1e-4, atol=1e-6)

    def test_exception(self):
        with pytest.raises(ValueError, match="3, H, W"):
            tonemap.reinhard(torch.rand(4, 8, 8))
        with pytest.raises(TypeError):
            tonemap.reinhard(torch.ones(3, 4, 4, dtype=torch.int32))
        with pytest.raises(ValueError, match="key"):
            tonemap.reinhard(torch.rand(3, 4, 4), key=0)


class TestDurand:
    def test_smoke(self):
        out = tonemap.durand(_radiance(size=(2, 3, 40, 30)))
        assert out.shape == (2, 3, 40, 30)
        assert out.min() >= 0 and out.max() <= 1

    def test_bilateral_preserves_a_step_edge(self):
        step = torch.zeros(1, 1, 32, 32)
        step[..., 16:] = 3.0
        base = tonemap.bilateral_piecewise(step, spatial_sigma=4.0, range_sigma=0.4)
        torch.testing.assert_close(base, step, atol=1e-3, rtol=0)

    def test_bilateral_smooths_small_detail(self):
        g = torch.Generator().manual_seed(0)
        texture = 0.05 * torch.randn(1, 1, 64, 64, generator=g)
        base = tonemap.bilateral_piecewise(texture, spatial_sigma=3.0, range_sigma=0.4)
        assert float(base.std()) < 0.3 * float(texture.std())

    def test_compresses_large_scale_contrast_keeps_detail(self):
        # left half 1000x brighter than right, both with the same fine texture
        g = torch.Generator().manual_seed(1)
        texture = torch.exp(0.1 * torch.randn(1, 32, 64, generator=g))
        level = torch.ones(1, 32, 64)
        level[..., :32] = 1000.0
        radiance = (level * texture).expand(3, -1, -1).clone()
        out = tonemap.durand(radiance, target_contrast=10.0, percentiles=(0.0, 100.0), encode=False)
        lum = tonemap.luminance(out)[0]
        ratio = float(lum[:, 4:28].mean() / lum[:, 36:60].mean())
        assert 5 < ratio < 20  # 1000:1 compressed to about the target contrast
        # the detail layer is kept: the dark side (nothing clips there) has the input's texture
        detail = torch.log(lum[4:28, 40:60]).std()
        assert float(detail) == pytest.approx(float(torch.log(texture[0, 4:28, 40:60]).std()), rel=0.2)

    def test_dispatch(self):
        radiance = _radiance()
        torch.testing.assert_close(tonemap.tonemap(radiance, "durand", range_sigma=0.5), tonemap.durand(radiance, range_sigma=0.5))
        with pytest.raises(ValueError, match="unknown tone-mapping operator"):
            tonemap.tonemap(radiance, "drago")

    def test_exception(self):
        with pytest.raises(ValueError, match="target_contrast"):
            tonemap.durand(_radiance(), target_contrast=1.0)
        with pytest.raises(ValueError, match="percentiles"):
            tonemap.durand(_radiance(), percentiles=(50, 10))
