"""Tests for efusion.synthetic: procedural HDR scenes, the camera simulation and brackets."""
from __future__ import annotations

import doctest
import math
import pathlib
import time

import pytest
import torch

import efusion.color
import efusion.synthetic as synthetic
from efusion.synthetic import MID_GREY, bracket, hdr_scene, render_exposures


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.2126, 0.7152, 0.0722], dtype=rgb.dtype, device=rgb.device)
    return torch.einsum("...chw,c->...hw", rgb, weights)


def log_range(scene: torch.Tensor) -> float:
    """log2(p99 / p1) of luminance, the dynamic range as the module defines it."""
    log_y = luminance(scene.double()).log2().flatten()
    low, high = torch.quantile(log_y, log_y.new_tensor([0.01, 0.99])).tolist()
    return high - low


def on_grid(frames: torch.Tensor, levels: int) -> bool:
    return torch.equal(torch.round(frames * levels) / levels, frames)


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


class TestRenderExposures:
    def test_smoke(self):
        frames = render_exposures(hdr_scene(32, 48))
        assert frames.shape == (3, 3, 32, 48)
        assert frames.dtype == torch.float32
        assert frames.min() >= 0 and frames.max() <= 1

    def test_cardinality_batched(self):
        scenes = torch.stack([hdr_scene(16, 24, seed=seed) for seed in range(2)])
        frames = render_exposures(scenes, ev=(-1.0, 0.0, 1.0, 2.0))
        assert frames.shape == (2, 4, 3, 16, 24)
        for b in range(2):
            assert torch.equal(frames[b], render_exposures(scenes[b], ev=(-1.0, 0.0, 1.0, 2.0)))

    def test_device_dtype(self, device, dtype):
        scene = hdr_scene(16, 24, device=device, dtype=dtype)
        frames = render_exposures(scene, noise_std=0.01)
        assert frames.device.type == device.type and frames.dtype == dtype
        assert frames.min() >= 0 and frames.max() <= 1

    def test_single_channel(self):
        frames = render_exposures(torch.rand(1, 8, 8) + 0.1, ev=0.0)
        assert frames.shape == (1, 1, 8, 8)

    @pytest.mark.parametrize("response", ["srgb", "gamma2.2", "linear"])
    @pytest.mark.parametrize("bit_depth", [8, 16, None])
    def test_monotone_in_ev(self, response, bit_depth):
        frames = render_exposures(hdr_scene(32, 48, seed=1), ev=(-3.0, -1.0, 0.0, 0.5, 2.0, 4.0),
                                  response=response, bit_depth=bit_depth)
        assert (frames[1:] >= frames[:-1]).all()

    @pytest.mark.parametrize("bit_depth, levels", [(8, 255), (16, 65535), (1, 1), (10, 1023)])
    def test_quantisation_grid(self, bit_depth, levels, dtype):
        frames = render_exposures(hdr_scene(32, 48, dtype=dtype), bit_depth=bit_depth, noise_std=0.02)
        assert on_grid(frames, levels)

    def test_no_quantisation(self):
        frames = render_exposures(hdr_scene(32, 48), bit_depth=None)
        assert not on_grid(frames, 65535)

    def test_srgb_matches_iec_61966_2_1(self):
        linear = torch.tensor([0.0, 0.001, 0.0031308, 0.2, 0.5, 1.0], dtype=torch.float64)
        encoded = render_exposures(linear.reshape(1, 1, -1), ev=(0.0,), exposure=1.0, bit_depth=None)[0, 0, 0]
        expected = [0.0, 0.01292, 0.0031308 * 12.92, 1.055 * 0.2 ** (1 / 2.4) - 0.055,
                    1.055 * 0.5 ** (1 / 2.4) - 0.055, 1.0]
        assert encoded.tolist() == pytest.approx(expected, abs=1e-12)
        # both branches meet at the threshold (to the precision of the standard's constants)
        assert 1.055 * 0.0031308 ** (1 / 2.4) - 0.055 == pytest.approx(encoded[2].item(), abs=1e-6)

    def test_other_responses(self):
        linear = torch.tensor([0.0, 0.01, 0.25, 0.5, 1.0], dtype=torch.float64).reshape(1, 1, -1)
        gamma = render_exposures(linear, ev=0.0, exposure=1.0, response="gamma2.2", bit_depth=None)
        assert torch.allclose(gamma[0], linear ** (1 / 2.2))
        identity = render_exposures(linear, ev=0.0, exposure=1.0, response="linear", bit_depth=None)
        assert torch.equal(identity[0], linear)
        custom = render_exposures(linear, ev=0.0, exposure=1.0, response=torch.sqrt, bit_depth=None)
        assert torch.allclose(custom[0], linear.sqrt())
        clamped = render_exposures(linear, ev=0.0, exposure=1.0, response=lambda v: 2 * v, bit_depth=8)
        assert clamped.max() == 1.0 and on_grid(clamped, 255)

    def test_clips_and_scales(self):
        radiance = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64).reshape(1, 1, 3)
        frames = render_exposures(radiance, ev=(-1.0, 0.0, 1.0), exposure=2.0, response="linear", bit_depth=None)
        expected = torch.tensor([[0.1, 0.3, 0.6], [0.2, 0.6, 1.0], [0.4, 1.0, 1.0]], dtype=torch.float64)
        assert torch.allclose(frames[:, 0, 0], expected)

    def test_exposure_per_batch_item(self):
        radiance = torch.full((2, 1, 1, 1), 0.1, dtype=torch.float64)
        frames = render_exposures(radiance, ev=0.0, exposure=torch.tensor([1.0, 4.0]), response="linear",
                                  bit_depth=None)
        assert frames.flatten().tolist() == pytest.approx([0.1, 0.4])

    def test_auto_exposure_puts_median_at_mid_grey(self):
        scenes = torch.stack([hdr_scene(40, 60, seed=1) * 37.0, hdr_scene(40, 60, seed=2) * 0.01])
        frames = render_exposures(scenes, ev=(0.0,), response="linear", bit_depth=None)
        for b in range(2):
            assert luminance(frames[b, 0]).median().item() == pytest.approx(MID_GREY, rel=1e-3)

    def test_noise(self):
        grey = torch.full((3, 64, 64), 0.25)
        state = torch.random.get_rng_state()
        first = render_exposures(grey, ev=(0.0,), exposure=2.0, response="linear", bit_depth=None, noise_std=0.05,
                                 seed=3)
        again = render_exposures(grey, ev=(0.0,), exposure=2.0, response="linear", bit_depth=None, noise_std=0.05,
                                 seed=3)
        other = render_exposures(grey, ev=(0.0,), exposure=2.0, response="linear", bit_depth=None, noise_std=0.05,
                                 seed=4)
        assert torch.equal(torch.random.get_rng_state(), state), "the global RNG must not be used"
        assert torch.equal(first, again) and not torch.equal(first, other)
        assert first.mean().item() == pytest.approx(0.5, abs=0.005)
        assert first.std().item() == pytest.approx(0.05, rel=0.05)
        clean = render_exposures(grey, ev=(0.0,), exposure=2.0, response="linear", bit_depth=None)
        assert torch.equal(clean, torch.full_like(clean, 0.5))

    def test_input_untouched(self):
        scene = hdr_scene(16, 24)
        copy = scene.clone()
        render_exposures(scene, noise_std=0.1)
        assert torch.equal(scene, copy)

    def test_exception(self):
        scene = hdr_scene(8, 8)
        with pytest.raises(ValueError, match=r"ev must hold at least one exposure value, got \(\)"):
            render_exposures(scene, ev=())
        with pytest.raises(ValueError, match="ev must be finite, got inf"):
            render_exposures(scene, ev=(0.0, math.inf))
        with pytest.raises(TypeError, match="ev must be a sequence of real numbers, got None"):
            render_exposures(scene, ev=None)
        with pytest.raises(ValueError, match="response must be one of .* got 'sRGB'"):
            render_exposures(scene, response="sRGB")
        with pytest.raises(TypeError, match="response must be a string or a callable, got 3"):
            render_exposures(scene, response=3)
        with pytest.raises(ValueError, match="bit_depth must be >= 1, got 0"):
            render_exposures(scene, bit_depth=0)
        with pytest.raises(ValueError, match="bit_depth must be between 1 and 16 or None, got 32"):
            render_exposures(scene, bit_depth=32)
        with pytest.raises(TypeError, match=r"bit_depth must be an int, got 8\.0"):
            render_exposures(scene, bit_depth=8.0)
        with pytest.raises(ValueError, match=r"noise_std must be >= 0, got -0\.1"):
            render_exposures(scene, noise_std=-0.1)
        with pytest.raises(ValueError, match=r"exposure must be > 0, got 0\.0"):
            render_exposures(scene, exposure=0.0)
        with pytest.raises(ValueError, match=r"exposure must hold 1 or 1 values, got shape \(2,\)"):
            render_exposures(scene, exposure=torch.tensor([1.0, 2.0]))
        with pytest.raises(TypeError, match="radiance must be a torch.Tensor, got list"):
            render_exposures([[[0.5]]])
        with pytest.raises(TypeError, match="radiance must have a floating dtype, got torch.uint8"):
            render_exposures(torch.zeros(3, 4, 4, dtype=torch.uint8))
        with pytest.raises(ValueError, match=r"radiance must have shape \[C, H, W\] or \[B, C, H, W\], got \(4, 4\)"):
            render_exposures(torch.ones(4, 4))
        with pytest.raises(ValueError, match="automatic exposure needs a positive median luminance"):
            render_exposures(torch.zeros(3, 4, 4))
        with pytest.raises(ValueError, match="the response callable must return a tensor of shape"):
            render_exposures(scene, response=lambda v: v.mean())


class TestBracket:
    def test_smoke(self):
        frames = bracket(32, 48)
        assert frames.shape == (3, 3, 32, 48)
        assert frames.min() >= 0 and frames.max() <= 1
        assert on_grid(frames, 255)

    @pytest.mark.parametrize("n_frames", [1, 2, 5])
    def test_evs_centred_on_zero(self, n_frames):
        frames = bracket(24, 36, n_frames, ev_step=1.5, seed=2)
        evs = [(k - (n_frames - 1) / 2) * 1.5 for k in range(n_frames)]
        assert torch.equal(frames, render_exposures(hdr_scene(24, 36, seed=2), evs))

    def test_passes_arguments_on(self, device):
        frames = bracket(24, 36, seed=1, dynamic_range_ev=10.0, device=device, dtype=torch.float64, bit_depth=16,
                         response="linear")
        assert frames.device.type == device.type and frames.dtype == torch.float64
        expected = render_exposures(hdr_scene(24, 36, seed=1, dynamic_range_ev=10.0, device=device,
                                              dtype=torch.float64), (-2.0, 0.0, 2.0), bit_depth=16, response="linear")
        assert torch.equal(frames, expected)

    @pytest.mark.parametrize("seed", range(6))
    def test_scene_needs_fusion(self, seed):
        scene = hdr_scene(96, 144, seed=seed)
        dark, middle, bright = render_exposures(scene)  # ev -2, 0, +2
        clipped = [(frame.amax(0) >= 1).float().mean().item() for frame in (dark, middle, bright)]
        crushed = [(frame.amax(0) <= 3 / 255).float().mean().item() for frame in (dark, middle, bright)]
        # the middle exposure loses highlights and shadows ...
        assert clipped[1] > 0.05
        assert crushed[1] > 0.01
        # ... the darkest frame keeps the highlights, the brightest the shadows
        assert clipped[0] < 0.03
        assert crushed[2] < 0.015 and crushed[2] < crushed[1] / 1.5
        shadows = luminance(scene).flatten() <= torch.quantile(luminance(scene).flatten(), 0.05)
        levels = [frame.flatten(1)[:, shadows].unique(dim=1).shape[1] for frame in (middle, bright)]
        assert levels[1] > 1.5 * levels[0], f"distinct colours in the darkest 5 %: {levels}"

    def test_exception(self):
        with pytest.raises(ValueError, match="n_frames must be >= 1, got 0"):
            bracket(8, 8, 0)
        with pytest.raises(ValueError, match=r"ev_step must be > 0, got 0\.0"):
            bracket(8, 8, ev_step=0)
        with pytest.raises(TypeError, match="ev_step must be a real number, got '2'"):
            bracket(8, 8, ev_step="2")
        with pytest.raises(TypeError, match="bracket\\(\\) sets 'ev' itself"):
            bracket(8, 8, ev=(0.0,))
        with pytest.raises(ValueError, match="height must be >= 1, got 0"):
            bracket(0, 8)


@pytest.mark.parametrize("module", [synthetic, synthetic.scene, synthetic.camera], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0 and results.failed == 0


def _imports(path) -> set[str]:
    source = open(path).read()
    return {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}


def test_imports_only_torch_and_math():
    # the package's modules import each other and efusion.color (sRGB curve, Rec. 709 weights),
    # which needs only torch too
    package = pathlib.Path(synthetic.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "scene.py", "camera.py", "raster.py"}
    own = {"." + m.stem for m in modules}
    for module in modules:
        assert _imports(module) <= {"__future__", "math", "torch", "..color"} | own, module.name
    assert _imports(efusion.color.__file__) <= {"__future__", "torch"}
