"""efusion.synthetic.scene: hdr_scene, the procedural HDR scene."""
from __future__ import annotations

import time

import pytest
import torch

from efusion import synthetic
from efusion.synthetic import MID_GREY, hdr_scene

from _synthetic_cases import log_range, luminance


class TestHdrScene:
    def test_smoke(self):
        scene = hdr_scene(48, 72)
        assert scene.shape == (3, 48, 72)
        assert scene.dtype == torch.float32
        assert scene.device.type == "cpu"

    @pytest.mark.parametrize("height, width", [(1, 1), (2, 7), (17, 5), (40, 101)])
    def test_cardinality(self, height, width):
        scene = hdr_scene(height, width, seed=3)
        assert scene.shape == (3, height, width)
        assert torch.isfinite(scene).all() and (scene > 0).all()

    def test_device_dtype(self, device, dtype):
        scene = hdr_scene(24, 36, seed=1, device=device, dtype=dtype)
        assert scene.device.type == device.type
        assert scene.dtype == dtype

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision(self, dtype):
        scene = hdr_scene(24, 36, seed=2, dtype=dtype)
        assert scene.dtype == dtype
        assert torch.isfinite(scene).all() and (scene > 0).all()

    def test_float64_matches_float32(self):
        single = hdr_scene(40, 60, seed=4).double()
        double = hdr_scene(40, 60, seed=4, dtype=torch.float64)
        relative = (single - double).abs() / double
        assert relative.median() < 1e-5
        assert relative.max() < 1e-2  # anti-aliasing ramps amplify rounding at a few edge pixels

    def test_same_scene_on_every_device(self, device):
        on_device = hdr_scene(32, 48, seed=5, device=device).cpu()
        on_cpu = hdr_scene(32, 48, seed=5)
        assert ((on_device - on_cpu).abs() / on_cpu).median() < 1e-4

    def test_deterministic(self):
        state = torch.random.get_rng_state()
        first = hdr_scene(40, 60, seed=7)
        second = hdr_scene(40, 60, seed=7)
        assert torch.equal(first, second)
        assert torch.equal(torch.random.get_rng_state(), state), "the global RNG must not be used"

    def test_seeds_give_different_layouts(self):
        scenes = [luminance(hdr_scene(48, 72, seed=seed)).log2() for seed in range(5)]
        for i in range(len(scenes)):
            for j in range(i + 1, len(scenes)):
                mean_difference = (scenes[i] - scenes[j]).abs().mean().item()
                assert mean_difference > 0.5, f"seeds {i} and {j} differ by only {mean_difference:.2f} stops"

    @pytest.mark.parametrize("seed", [0, 1, 2, 3])
    @pytest.mark.parametrize("dynamic_range_ev", [6.0, 14.0, 22.0])
    def test_dynamic_range(self, seed, dynamic_range_ev):
        scene = hdr_scene(64, 96, seed=seed, dynamic_range_ev=dynamic_range_ev)
        assert torch.isfinite(scene).all() and (scene > 0).all()
        assert abs(log_range(scene) - dynamic_range_ev) < 0.15
        assert luminance(scene).median().item() == pytest.approx(MID_GREY, rel=0.02)

    def test_light_sources_far_above_the_rest(self):
        y = luminance(hdr_scene(96, 144, seed=0)).flatten()
        p99 = torch.quantile(y, 0.99)
        assert y.max() / p99 > 2**3

    def test_resolution_independent(self):
        small = hdr_scene(60, 90, seed=6)
        large = hdr_scene(180, 270, seed=6)
        pooled = torch.nn.functional.avg_pool2d(large[None], 3)[0]
        difference = (luminance(small).log2() - luminance(pooled).log2()).abs()
        assert difference.median() < 0.15
        assert torch.quantile(difference.flatten(), 0.9) < 0.75  # edges land on different pixels

    def test_wide_frame_sees_more_of_the_same_room(self):
        narrow = hdr_scene(60, 60, seed=8)
        wide = hdr_scene(60, 120, seed=8)
        centre = wide[:, :, 30:90]
        # the same geometry; the calibration gains differ, as the wider view has another histogram
        pair = torch.stack([luminance(narrow).log2().flatten(), luminance(centre).log2().flatten()])
        assert torch.corrcoef(pair)[0, 1] > 0.98

    def test_exception(self):
        with pytest.raises(ValueError, match="height must be >= 1, got 0"):
            hdr_scene(0, 10)
        with pytest.raises(ValueError, match="width must be >= 1, got -3"):
            hdr_scene(10, -3)
        with pytest.raises(TypeError, match=r"height must be an int, got 2\.5"):
            hdr_scene(2.5, 10)
        with pytest.raises(TypeError, match="width must be an int, got True"):
            hdr_scene(10, True)
        with pytest.raises(ValueError, match=r"dynamic_range_ev must be > 0, got -1\.0"):
            hdr_scene(10, 10, dynamic_range_ev=-1)
        with pytest.raises(ValueError, match="dynamic_range_ev must be finite, got nan"):
            hdr_scene(10, 10, dynamic_range_ev=float("nan"))
        with pytest.raises(TypeError, match="seed must be an int, got 'a'"):
            hdr_scene(10, 10, seed="a")
        with pytest.raises(TypeError, match="dtype must be a floating torch.dtype, got torch.int32"):
            hdr_scene(10, 10, dtype=torch.int32)

    def test_bands_join_seamlessly(self, monkeypatch):
        banded = hdr_scene(90, 130, seed=9)
        monkeypatch.setattr(synthetic.scene, "_BAND_PIXELS", 1 << 30)
        whole = hdr_scene(90, 130, seed=9)
        assert ((banded - whole).abs() / whole).max() < 1e-3

    @pytest.mark.slow
    def test_large_frame_is_vectorised(self):
        start = time.perf_counter()
        scene = hdr_scene(1200, 1800, seed=0)
        elapsed = time.perf_counter() - start
        assert scene.shape == (3, 1200, 1800)
        # about 0.15 s on two cores; a Python loop over pixels would take minutes
        assert elapsed < 20, f"2 MP scene took {elapsed:.1f} s"
