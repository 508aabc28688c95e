"""efusion.synthetic.camera: render_exposures (the camera simulation) and bracket."""
from __future__ import annotations

import math

import pytest
import torch

from efusion.synthetic import MID_GREY, bracket, hdr_scene, render_exposures

from _synthetic_cases import luminance, on_grid


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
