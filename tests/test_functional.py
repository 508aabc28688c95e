"""exposure_fusion, blend, mertens_weights (efusion.functional): shapes, errors, invariants, depth, gradients."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from efusion import (
    Fusion,
    backends,
    blend,
    collapse_laplacian_pyramid,
    exposure_fusion,
    fuse_frames,
    gaussian_pyramid,
    get_preset,
    laplacian_pyramid,
    mertens_weights,
)

from conftest import TOLERANCES, gradcheck_stack, scene


class TestExposureFusion:
    def test_smoke(self, device, dtype):
        out = exposure_fusion(scene(dtype=dtype).to(device))
        assert out.shape == (3, 20, 24) and out.dtype == dtype and out.device.type == device.type

    @pytest.mark.parametrize("shape, expected", [((4, 3, 9, 11), (3, 9, 11)), ((2, 4, 3, 9, 11), (2, 3, 9, 11)),
                                                 ((3, 1, 9, 11), (1, 9, 11)), ((2, 3, 1, 9, 11), (2, 1, 9, 11))])
    def test_cardinality(self, shape, expected):
        assert exposure_fusion(torch.rand(shape)).shape == expected

    def test_list_of_frames(self):
        x = scene()
        torch.testing.assert_close(exposure_fusion(list(x)), exposure_fusion(x))

    def test_equals_blend_of_weights(self):
        x = scene()
        kwargs = dict(contrast=0.5, saturation=2.0, exposure=1.5, mu=0.4, sigma=0.3)
        expected = blend(x, mertens_weights(x, **kwargs), levels=3)
        torch.testing.assert_close(exposure_fusion(x, levels=3, **kwargs), expected, rtol=0, atol=0)

    def test_equals_explicit_pyramid_blend(self):
        # Mertens' exposure_fusion.m loop written with the public pyramid functions
        x, levels = scene(n=4), 4
        w = mertens_weights(x)
        acc = None
        for frame, weight in zip(x, w):
            lap, gw = laplacian_pyramid(frame, levels), gaussian_pyramid(weight, levels)
            terms = [g * l for g, l in zip(gw, lap)]
            acc = terms if acc is None else [a + t for a, t in zip(acc, terms)]
        torch.testing.assert_close(exposure_fusion(x, levels=levels), collapse_laplacian_pyramid(acc), atol=1e-14, rtol=0)

    def test_single_frame_is_returned(self):
        x = scene(n=1)
        assert torch.equal(exposure_fusion(x), x[0])

    @pytest.mark.parametrize("size", [(1, 1), (2, 3), (1, 7), (3, 2)])
    def test_tiny_images(self, size):
        x = torch.rand(3, 3, *size, dtype=torch.float64)
        out = exposure_fusion(x)
        assert out.shape == (3, *size) and torch.isfinite(out).all()
        # depth clamps to one level: a per-pixel weighted average
        torch.testing.assert_close(out, (mertens_weights(x) * x).sum(0))

    def test_non_finite_input_is_refused_with_frame_and_count(self):
        x = scene()
        x[1, 0, 5, 5] = float("nan")
        x[1, 2, 0, 0] = float("inf")
        with pytest.raises(ValueError, match="frame 1 has 2 non-finite value"):
            exposure_fusion(x)
        with pytest.raises(ValueError, match="frame 1 has 2 non-finite value"):
            mertens_weights(x)
        mask = torch.ones(x.shape[0], 1, *x.shape[-2:])
        mask[1, :, 5, 5] = 0
        with pytest.raises(ValueError, match="frame 1 has 1 non-finite value"):  # the one left unmasked
            exposure_fusion(x, mask=mask)
        mask[1, :, 0, 0] = 0
        assert torch.isfinite(exposure_fusion(x, mask=mask)).all()  # masked: not looked at

    def test_unscaled_integer_values_are_refused(self):
        x = scene()
        with pytest.raises(ValueError, match="values up to 255.*divide 8-bit images by 255"):
            exposure_fusion(x * 255)
        with pytest.raises(ValueError, match="above 2"):
            fuse_frames(list(x * 255))
        # HDR renders overshoot a little: accepted up to efusion._checks.MAX_SAMPLE = 2
        assert torch.isfinite(exposure_fusion(x * 2)).all()

    @pytest.mark.parametrize(
        "stack, kwargs, error, match",
        [
            (torch.rand(3, 9, 11), {}, ValueError, "must be \\[N, C, H, W\\] or \\[B, N, C, H, W\\], got 3 dimensions"),
            (torch.rand(1, 1, 3, 3, 9, 11), {}, ValueError, "got 6 dimensions"),
            (torch.randint(0, 255, (3, 3, 9, 11), dtype=torch.int32), {}, TypeError, "uint8 or uint16 tensor, or a floating-point"),
            (torch.rand(0, 3, 9, 11), {}, ValueError, "N = 0"),
            (torch.rand(3, 2, 9, 11), {}, ValueError, "C = 1 \\(gray\\) or 3 \\(RGB\\) channels, got C = 2"),
            (torch.rand(3, 3, 0, 11), {}, ValueError, "frames are empty"),
            ([torch.rand(3, 9, 11), torch.rand(3, 9, 12)], {}, ValueError, "frames differ in size: stack\\[0\\] is 3 x 9 x 11 but stack\\[1\\] is 3 x 9 x 12"),
            ([], {}, ValueError, "no frames"),
            ("frames", {}, TypeError, "must be a torch.Tensor"),
            (torch.rand(3, 3, 9, 11), {"mask": torch.ones(2, 1, 9, 11)}, ValueError, "does not broadcast"),
            (torch.rand(3, 3, 9, 11), {"mask": [1, 1, 1]}, TypeError, "mask must be a torch.Tensor"),
            (torch.rand(3, 3, 9, 11), {"contrast": -1}, ValueError, "contrast must be >= 0"),
            (torch.rand(3, 3, 9, 11), {"sigma": 0}, ValueError, "sigma must be > 0"),
            (torch.rand(3, 3, 9, 11), {"levels": 0.5}, ValueError, "levels must be >= 1"),
            (torch.rand(3, 3, 9, 11), {"levels": 0}, ValueError, "levels must be >= 1"),
            (torch.rand(3, 3, 9, 11), {"levels": "3"}, TypeError, "levels must be None, a number"),
            (torch.rand(3, 3, 9, 11), {"levels": torch.ones(2)}, ValueError, "0-dim tensor"),
            (torch.rand(3, 3, 9, 11), {"preset": "photoshop"}, ValueError, "preset must be one of"),
        ],
    )
    def test_exception(self, stack, kwargs, error, match):
        with pytest.raises(error, match=match):
            exposure_fusion(stack, **kwargs)

    def test_blend_weight_shape_error(self):
        with pytest.raises(ValueError, match="weights must have shape \\[3, 1, 9, 11\\]"):
            blend(torch.rand(3, 3, 9, 11), torch.rand(3, 3, 9, 11))


class TestInvariants:
    @settings(max_examples=20, deadline=None)
    @given(n=st.integers(1, 4), c=st.sampled_from([1, 3]), h=st.integers(1, 19), w=st.integers(1, 19),
           seed=st.integers(0, 2**16), preset=st.sampled_from(["mertens", "opencv"]))
    def test_identical_frames_give_the_frame(self, n, c, h, w, seed, preset):
        frame = torch.rand(c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        out = exposure_fusion(frame.expand(n, c, h, w), preset=preset)
        torch.testing.assert_close(out, frame, atol=1e-6, rtol=0)

    @settings(max_examples=20, deadline=None)
    @given(n=st.integers(2, 5), seed=st.integers(0, 2**16), levels=st.sampled_from([None, 1, 2, 2.5, -2]))
    def test_permutation_invariance(self, n, seed, levels):
        x = scene(n=n, seed=seed, h=13, w=17)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(exposure_fusion(x[perm], levels=levels), exposure_fusion(x, levels=levels),
                                   atol=1e-12, rtol=0)

    @settings(max_examples=20, deadline=None)
    @given(value=st.floats(0, 1), n=st.integers(1, 4), h=st.integers(1, 16), w=st.integers(1, 16))
    def test_constant_stack_gives_constant(self, value, n, h, w):
        out = exposure_fusion(torch.full((n, 3, h, w), value, dtype=torch.float64))
        torch.testing.assert_close(out, torch.full((3, h, w), value, dtype=torch.float64), atol=1e-12, rtol=0)

    @settings(max_examples=15, deadline=None)
    @given(b=st.integers(1, 3), n=st.integers(2, 4), seed=st.integers(0, 2**16))
    def test_batch_equals_one_by_one(self, b, n, seed):
        x = scene(b=b, n=n, seed=seed, h=11, w=14)
        batched = exposure_fusion(x, contrast=0.7, levels=2.5)
        for i in range(b):
            torch.testing.assert_close(batched[i], exposure_fusion(x[i], contrast=0.7, levels=2.5), atol=1e-14, rtol=0)

    def test_masked_padding_frames_change_nothing(self):
        # burst 0 has 4 frames, burst 1 has 2 frames padded with 2 garbage frames
        x = scene(b=2, n=4)
        mask = torch.ones(2, 4, 1, 1, 1, dtype=torch.float64)
        mask[1, 2:] = 0
        padded = x.clone()
        padded[1, 2:] = torch.rand(2, 3, 20, 24, dtype=torch.float64)
        out = exposure_fusion(padded, mask=mask)
        torch.testing.assert_close(out[0], exposure_fusion(x[0]), atol=1e-14, rtol=0)
        torch.testing.assert_close(out[1], exposure_fusion(x[1, :2]), atol=1e-14, rtol=0)

    def test_weights_sum_to_one(self):
        w = mertens_weights(scene(b=2, n=5))
        torch.testing.assert_close(w.sum(1), torch.ones(2, 1, 20, 24, dtype=torch.float64))


class TestDepth:
    def test_automatic_depth(self):
        x = scene(h=20, w=40)  # floor(log2(20)) = 4
        assert get_preset("mertens").max_levels(20, 40) == 4
        torch.testing.assert_close(exposure_fusion(x), exposure_fusion(x, levels=4), rtol=0, atol=0)

    def test_relative_depth(self):
        x = scene()
        torch.testing.assert_close(exposure_fusion(x, levels=-1), exposure_fusion(x), rtol=0, atol=0)
        torch.testing.assert_close(exposure_fusion(x, levels=-2), exposure_fusion(x, levels=3), rtol=0, atol=0)

    def test_depth_beyond_maximum_is_clamped(self):
        x = scene()
        torch.testing.assert_close(exposure_fusion(x, levels=50), exposure_fusion(x), rtol=0, atol=0)

    def test_integer_float_and_tensor_are_the_discrete_result(self):
        x = scene()
        discrete = exposure_fusion(x, levels=3)
        assert torch.equal(exposure_fusion(x, levels=3.0), discrete)
        torch.testing.assert_close(exposure_fusion(x, levels=torch.tensor(3.0)), discrete, atol=1e-15, rtol=0)

    @pytest.mark.parametrize("depth", [1.25, 2.5, 3.75])
    def test_fractional_depth_interpolates(self, depth):
        x = scene()
        k, t = int(depth), depth - int(depth)
        expected = (1 - t) * exposure_fusion(x, levels=k) + t * exposure_fusion(x, levels=k + 1)
        torch.testing.assert_close(exposure_fusion(x, levels=depth), expected, atol=1e-14, rtol=0)
        torch.testing.assert_close(exposure_fusion(x, levels=torch.tensor(depth, dtype=torch.float64)), expected,
                                   atol=1e-14, rtol=0)

    @pytest.mark.parametrize("depth, lower, upper", [(2.0, 2, 3), (1.0, 1, 2), (4.0, 3, 4), (2.4, 2, 3), (9.0, 3, 4)])
    def test_gradient_is_one_sided_at_integers(self, depth, lower, upper):
        # maximum depth for 20 x 24 is 4: at 4 (and beyond) the slope is the last segment's
        x = scene()
        levels = torch.tensor(depth, dtype=torch.float64, requires_grad=True)
        probe = torch.rand(3, 20, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        (exposure_fusion(x, levels=levels) * probe).sum().backward()
        slope = ((exposure_fusion(x, levels=upper) - exposure_fusion(x, levels=lower)) * probe).sum()
        torch.testing.assert_close(levels.grad, slope)

    def test_gradcheck_depth(self):
        x = gradcheck_stack(2, 3, 3, 9, 11)
        levels = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda lv: exposure_fusion(x, levels=lv), (levels,))


def _params(requires_grad=True, **values):
    defaults = dict(contrast=0.8, saturation=1.2, exposure=1.5, mu=0.45, sigma=0.22)
    defaults.update(values)
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=requires_grad) for k, v in defaults.items()}


class TestGradients:
    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    def test_gradcheck_stack(self, preset):
        # 2 bursts x 3 frames x 3 x 9 x 11: 3 pyramid levels, flat, achromatic, 0 and 1 pixels.
        # At a flat pixel the contrast |Laplacian| and at a gray pixel the saturation (a standard
        # deviation) have |x|-type kinks: with exponents <= 1 the fusion is not differentiable
        # there (autograd returns the symmetric subgradient), so the hard pixels are checked with
        # exponents 2, where C^2 and S^2 are smooth. Default exponents are checked on generic input.
        x = gradcheck_stack(2, 3, 3, 9, 11).requires_grad_()
        params = _params(requires_grad=False, contrast=2.0, saturation=2.0, exposure=1.5)
        assert get_preset(preset).max_levels(9, 11) >= 3
        # fast mode checks random vector-Jacobian products: the full Jacobian is 594 x 891
        assert torch.autograd.gradcheck(lambda s: exposure_fusion(s, preset=preset, **params), (x,), fast_mode=True)

    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    def test_gradcheck_stack_default_exponents(self, preset):
        x = torch.rand(2, 3, 3, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        x.requires_grad_()
        assert torch.autograd.gradcheck(lambda s: exposure_fusion(s, preset=preset), (x,), fast_mode=True)

    def test_gradcheck_stack_full_jacobian(self):
        x = gradcheck_stack(2, 3, 6, 7).requires_grad_()
        params = _params(requires_grad=False, contrast=2.0, saturation=2.0, exposure=1.5)
        assert torch.autograd.gradcheck(lambda s: exposure_fusion(s, levels=2, **params), (x,))

    @pytest.mark.parametrize("name", ["contrast", "saturation", "exposure", "mu", "sigma"])
    def test_gradcheck_parameter(self, name):
        x = gradcheck_stack(2, 3, 3, 9, 11)
        params = _params(requires_grad=False)
        params[name].requires_grad_()

        def fn(value):
            return exposure_fusion(x, levels=2.6, **{**params, name: value})

        assert torch.autograd.gradcheck(fn, (params[name],))

    def test_gradients_finite_everywhere(self):
        # includes pixels where every frame sits on the 1e-12 floor (flat and gray in all frames)
        x = torch.full((2, 3, 3, 9, 11), 0.5, dtype=torch.float64)
        x[:, 1] = 0.0
        x[:, 2, :, 4:, 5:] = torch.rand(2, 3, 5, 6, dtype=torch.float64)
        x.requires_grad_()
        params = _params(contrast=0.5, saturation=0.5, exposure=0.5)
        levels = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        out = exposure_fusion(x, levels=levels, **params)
        (out * torch.rand_like(out)).sum().backward()
        for t in [x, levels, *params.values()]:
            assert t.grad is not None and torch.isfinite(t.grad).all()


class TestDtypes:
    @pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
    def test_half_precision_runs(self, half):
        x = scene(dtype=torch.float32)
        out = exposure_fusion(x.to(half))
        assert out.dtype == half and torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), exposure_fusion(x.to(half).float()), atol=TOLERANCES[half], rtol=0)

    def test_float32_close_to_float64(self):
        x = scene()
        torch.testing.assert_close(exposure_fusion(x.float()).double(), exposure_fusion(x), atol=1e-5, rtol=0)

    def test_kernels_follow_the_input(self):
        x = scene(dtype=torch.float32)
        out = exposure_fusion(x, contrast=torch.tensor(1.0, dtype=torch.float64), levels=torch.tensor(2.5))
        assert out.dtype == torch.float32


class TestIntegerFrames:
    """uint8 / uint16 stacks: scaled to [0, 1], fused in float32, measured on their exact values."""

    @staticmethod
    def faint_detail() -> torch.Tensor:
        # 16-bit frames, gray and flat but for one blue code step in frame 0: a gray Laplacian of
        # 0.114 / 65535 ~ 1.7e-6 there, which float32 samples (rounded by ~3e-8, luma residuals
        # below 2**-19 counted as 0) cannot tell from rounding; float64 gives frame 0 almost all the weight
        x = torch.full((2, 3, 9, 9), 40000, dtype=torch.int32)
        x[1] = 20000
        x[0, :, 4, 4] += torch.tensor([0, 0, 1])
        return x.to(torch.uint16)

    def test_exact_where_float32_samples_are_not(self):
        codes = self.faint_detail()
        exact = mertens_weights(codes.double() / 65535, saturation=0.0, exposure=0.0)
        assert exact[0, 0, 4, 4] > 0.99
        for backend in (None, "reference"):
            with backends.use(backend):
                torch.testing.assert_close(mertens_weights(codes, saturation=0.0, exposure=0.0).double(), exact,
                                           atol=1e-6, rtol=0)
                rounded = mertens_weights(codes.float() / 65535, saturation=0.0, exposure=0.0)
                assert (rounded.double() - exact).abs().max() > 0.4  # what the float32 samples give

    def test_scaled_as_fuse_frames(self):
        g = torch.Generator().manual_seed(20)
        eight = torch.randint(0, 256, (3, 3, 13, 17), generator=g, dtype=torch.uint8)
        fused = exposure_fusion(eight)
        assert fused.dtype == torch.float32
        assert torch.equal(fused, exposure_fusion(eight.to(torch.int32).mul(257).to(torch.uint16)))  # k/255 = 257k/65535
        assert torch.equal(fused, fuse_frames(list(eight)))
        torch.testing.assert_close(fused, exposure_fusion(eight.float() / 255), atol=1e-4, rtol=0)
        # a list of frames, batched stacks: the same
        assert torch.equal(exposure_fusion(list(eight)), fused)
        assert torch.equal(exposure_fusion(eight.unsqueeze(0).expand(2, -1, -1, -1, -1))[1], fused)

    def test_masked_and_opencv_calls_measure_the_float32_samples(self):
        # a mask fills masked pixels with values off the integer grid; OpenCV measures its float32 samples
        g = torch.Generator().manual_seed(21)
        eight = torch.randint(0, 256, (3, 3, 13, 17), generator=g, dtype=torch.uint8)
        mask = (torch.rand(3, 1, 13, 17, generator=g) > 0.2).float()
        assert torch.equal(exposure_fusion(eight, mask=mask), exposure_fusion(eight.float() / 255, mask=mask))
        reciprocal = eight.float() * float(torch.tensor(1 / 255, dtype=torch.float32))  # convertTo(CV_32F, 1/255)
        assert torch.equal(exposure_fusion(eight, preset="opencv"), exposure_fusion(reciprocal, preset="opencv"))

    def test_frames_must_not_mix_integer_and_float(self):
        frames = [torch.zeros(3, 5, 6, dtype=torch.uint8), torch.zeros(3, 5, 6)]
        with pytest.raises(TypeError, match="frames mix integer and floating-point samples"):
            fuse_frames(frames)
        with pytest.raises(TypeError, match="frames mix integer and floating-point samples"):
            fuse_frames(frames[::-1])


@pytest.mark.slow
class TestCompile:
    def test_dynamo_functional(self):
        x = scene(b=2, dtype=torch.float32)
        compiled = torch.compile(exposure_fusion, fullgraph=True)
        torch.testing.assert_close(compiled(x, contrast=0.8, levels=3), exposure_fusion(x, contrast=0.8, levels=3),
                                   atol=1e-5, rtol=0)

    def test_dynamo_module(self):
        x = scene(b=2, dtype=torch.float32)
        layer = Fusion(learnable=True)
        compiled = torch.compile(layer, fullgraph=True)
        out = compiled(x)
        torch.testing.assert_close(out, layer(x), atol=1e-5, rtol=0)
        out.mean().backward()
        assert all(p.grad is not None for p in layer.parameters())


class TestBlend:
    def test_smoke(self, dtype):
        x, w = scene(dtype=dtype), torch.rand(3, 1, 20, 24, dtype=dtype)
        out = blend(x, w / w.sum(0), levels=3)
        assert out.shape == (3, 20, 24) and out.dtype == dtype and torch.isfinite(out).all()

    @pytest.mark.parametrize("shape, expected", [((3, 1, 9, 7), (1, 9, 7)), ((2, 4, 3, 9, 7), (2, 3, 9, 7))])
    def test_cardinality(self, shape, expected):
        weights = torch.full((*shape[:-3], 1, *shape[-2:]), 1.0 / shape[-4])
        assert blend(torch.rand(shape), weights).shape == expected

    def test_convex_weights_of_identical_frames_give_the_frame(self):
        frame = torch.rand(3, 17, 13, dtype=torch.float64)
        w = torch.rand(4, 1, 17, 13, dtype=torch.float64)
        torch.testing.assert_close(blend(frame.expand(4, 3, 17, 13), w / w.sum(0)), frame, atol=1e-12, rtol=0)

    @pytest.mark.parametrize(
        "weights, kwargs, error, match",
        [
            (torch.rand(3, 1, 8, 8), dict(levels=0), ValueError, "levels must be >= 1"),
            (torch.rand(3, 3, 8, 8), {}, ValueError, r"weights must have shape \[3, 1, 8, 8\]"),
            ([0.5], {}, TypeError, "weights must be a torch.Tensor"),
            (torch.ones(3, 1, 8, 8, dtype=torch.int64), {}, TypeError, "weights must be floating point"),
            (torch.rand(3, 1, 8, 8), dict(preset="gimp"), ValueError, "preset must be one of"),
        ],
    )
    def test_exception(self, weights, kwargs, error, match):
        with pytest.raises(error, match=match):
            blend(torch.rand(3, 3, 8, 8), weights, **kwargs)

    def test_gradcheck(self):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(1, 2, 3, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.rand(1, 2, 1, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, w: blend(x, w, levels=2.5), (x, w))


class TestMertensWeights:
    def test_smoke(self, dtype):
        w = mertens_weights(scene(dtype=dtype))
        assert w.shape == (3, 1, 20, 24) and w.dtype == dtype
        torch.testing.assert_close(w.sum(0), torch.ones(1, 20, 24, dtype=dtype), atol=TOLERANCES[dtype], rtol=0)

    @pytest.mark.parametrize("shape, expected", [((3, 1, 9, 7), (3, 1, 9, 7)), ((2, 4, 3, 9, 7), (2, 4, 1, 9, 7))])
    def test_cardinality(self, shape, expected):
        assert mertens_weights(torch.rand(shape)).shape == expected

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [(dict(contrast=-1.0), ValueError, "contrast must be >= 0"), (dict(sigma=[0.1, 0.2]), ValueError, "3 values"),
         (dict(mask=torch.ones(2, 1, 8, 8)), ValueError, "does not broadcast"), (dict(preset=3), ValueError, "preset")],
    )
    def test_exception(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            mertens_weights(torch.rand(3, 3, 8, 8), **kwargs)

    def test_gradcheck(self):
        # a checkerboard far from the measures' kinks (|Laplacian| and saturation bounded away from 0)
        checker = ((torch.arange(5).view(5, 1) + torch.arange(6)) % 2 * 2 - 1).double()
        gains = torch.tensor([0.25, 0.15, 0.05], dtype=torch.float64).view(3, 1, 1)
        x = (torch.tensor([0.4, 0.6], dtype=torch.float64).view(2, 1, 1, 1) + gains * checker).requires_grad_()
        sigma = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, s: mertens_weights(x, sigma=s), (x, sigma))


class TestFuseFramesStacked:
    def test_masks_through_the_stacked_path(self):
        # the reference backend streams nothing: fuse_frames stacks the frames and their masks
        # ([1, H, W] each) into [B, N, 1, H, W] for exposure_fusion
        g = torch.Generator().manual_seed(10)
        frames = torch.rand(4, 3, 16, 18, generator=g, dtype=torch.float64)
        masks = [torch.rand(1, 16, 18, generator=g) > 0.4 for _ in range(4)]
        with backends.use("reference"):
            fused = fuse_frames(list(frames), masks=masks)
            expected = exposure_fusion(frames, mask=torch.stack(masks).double())
        assert torch.equal(fused, expected)
