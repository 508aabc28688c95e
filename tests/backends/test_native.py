"""The ``"native"`` backend beyond the conformance suite: its operators against the reference
functions they equal, which calls it takes, thread-count independence, and the fallback when
the kernels cannot be built (no compiler) or are turned off (``EFUSION_NATIVE=0``)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from efusion import backends, blend, exposure_fusion, fuse_frames, mertens_weights
from efusion.backends.native import BACKEND, build, conventions, supported
from efusion.presets import PRESETS, Preset
from efusion.reference.blend import blend as reference_blend
from efusion.reference.masks import fill_masked
from efusion.reference.measures import WEIGHT_FLOOR, fusion_weights, laplacian, luma

from conftest import gradcheck_stack, requires_shared

ROOT = Path(__file__).resolve().parents[2]
#: the conformance suite's bound: values agree with the reference to this, per dtype
BOUND = {torch.float32: 1e-6, torch.float64: 1e-12}

needs_native = pytest.mark.skipif(not build.load(), reason="native kernels unavailable (no C++ compiler?)")


def _select(op: str, stack, inputs):
    return backends.select(op, stack, inputs, preset=PRESETS["mertens"]).name


@needs_native
class TestOperators:
    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    def test_weights_bit_for_bit(self, preset, dtype):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(2, 4, 3, 19, 23, generator=g, dtype=dtype)
        x[:, 1, :, 3:7] = 0.5  # flat gray rows: contrast and saturation exactly 0
        codes, reals = conventions(PRESETS[preset])
        for exponents, mu, sigma, per_channel in (([1.0, 1.0, 1.0], 0.5, 0.2, False),
                                                   ([0.7, 1.3, 2.0], [0.4, 0.5, 0.6], [0.1, 0.2, 0.3], True)):
            mus = mu if isinstance(mu, list) else [mu] * 3
            sigmas = sigma if isinstance(sigma, list) else [sigma] * 3
            fast = torch.ops.efusion_native.weights(x, exponents, mus, sigmas, per_channel, reals, codes)
            as_param = (lambda v: torch.tensor(v, dtype=dtype)) if per_channel else (lambda v: v)
            slow = fusion_weights(x, None, *exponents, as_param(mu), as_param(sigma), PRESETS[preset])
            assert torch.equal(fast, slow)  # the reference's operations, torch's own sqrt/exp/log

    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    @pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 4), (9, 11), (33, 17)])
    def test_blend_bit_for_bit(self, preset, size, dtype):
        # the blend's operations are IEEE sums and products in the reference's order: the same bits
        g = torch.Generator().manual_seed(1)
        x = torch.rand(2, 3, 3, *size, generator=g, dtype=dtype)
        w = torch.rand(2, 3, 1, *size, generator=g, dtype=dtype)
        for levels in (None, 1, 2, 2.5, -2, 7.25):
            with backends.use("native"):
                fast = blend(x, w, levels=levels, preset=preset)
            assert torch.equal(fast, reference_blend(x, w, levels, PRESETS[preset]))

    @settings(max_examples=15, deadline=None)
    @given(
        batch=st.integers(1, 2), frames=st.integers(2, 5), channels=st.sampled_from([1, 3]),
        height=st.integers(1, 24), width=st.integers(1, 24), preset=st.sampled_from(["mertens", "opencv"]),
        levels=st.one_of(st.none(), st.floats(1.0, 6.0), st.integers(-4, -1)),
        double=st.booleans(), seed=st.integers(0, 2**16),
    )
    def test_fuse_equals_reference(self, batch, frames, channels, height, width, preset, levels, double, seed):
        dtype = torch.float64 if double else torch.float32
        x = torch.rand(batch, frames, channels, height, width, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        with backends.use("native"):
            assert backends.select("fuse", x, (None, 1, 1, 1, 0.5, 0.2, levels), preset=PRESETS[preset]).name == "native"
            fast = exposure_fusion(x, levels=levels, preset=preset)
        with backends.use("reference"):
            slow = exposure_fusion(x, levels=levels, preset=preset)
        torch.testing.assert_close(fast, slow, atol=BOUND[dtype], rtol=0)

    @pytest.mark.parametrize("frames", [2, 5, 17])
    def test_fuse_frames_streams_the_stacked_bits(self, frames):
        # two passes, one frame at a time (raw_weights, blend_add, blend_collapse): the normaliser
        # summed in torch's order (cascades of 16 frames) and the blend in the reference's
        images = torch.randint(0, 256, (frames, 2, 3, 21, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
        for dtype, levels in ((torch.float32, None), (torch.float64, 2.5)):
            # float32: the uint8 stack itself (measured on its exact samples, as the streamed frames)
            stack = images.transpose(0, 1) if dtype == torch.float32 else images.transpose(0, 1).to(dtype) / 255
            with backends.use("native"):
                streamed = fuse_frames(list(images), dtype=dtype, levels=levels, contrast=0.5)
            assert torch.equal(streamed, exposure_fusion(stack, levels=levels, contrast=0.5))
            with backends.use("reference"):
                expected = exposure_fusion(stack, levels=levels, contrast=0.5)
            torch.testing.assert_close(streamed, expected, atol=BOUND[dtype], rtol=0)

    @settings(max_examples=12, deadline=None)
    @given(
        batch=st.integers(1, 2), frames=st.integers(2, 19), channels=st.sampled_from([1, 3]),
        height=st.integers(1, 20), width=st.integers(1, 20), preset=st.sampled_from(["mertens", "opencv"]),
        levels=st.one_of(st.none(), st.floats(1.0, 6.0)), double=st.booleans(), seed=st.integers(0, 2**16),
    )
    def test_two_pass_fuse_is_the_one_pass_bits(self, batch, frames, channels, height, width, preset, levels, double,
                                                seed):
        # fuse_two_pass: the normaliser first, then each frame's weights again; the same operations
        # in the same order as fuse, so the same bits (and the reference within the bound)
        dtype = torch.float64 if double else torch.float32
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, frames, channels, height, width, generator=g, dtype=dtype)
        codes, reals = conventions(PRESETS[preset])
        with backends.use("native"):
            band, residual = BACKEND._plan(levels, x, PRESETS[preset])
        args = (x, [0.8, 1.0, 1.5], [0.4, 0.5, 0.6][:channels], [0.2, 0.25, 0.3][:channels], True, reals, band, residual,
                codes)
        two_pass = torch.ops.efusion_native.fuse_two_pass(*args)
        assert torch.equal(two_pass, torch.ops.efusion_native.fuse(*args))
        with backends.use("native", weight_bytes=0):  # N > C: the two passes
            fast = exposure_fusion(x, levels=levels, preset=preset)
        with backends.use("reference"):
            slow = exposure_fusion(x, levels=levels, preset=preset)
        torch.testing.assert_close(fast, slow, atol=BOUND[dtype], rtol=0)

    @pytest.mark.slow
    def test_fuse_memory_is_flat_in_frames(self):
        # issue 13: the extra peak memory of a no-grad exposure_fusion must not grow with N (the
        # kernel's peak, VmHWM after a reset, in a fresh process whose large blocks are unmapped on free)
        script = """
import json, sys, torch, efusion
from efusion import backends
def rss(field):
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(field)) * 1024
peaks = {}
for frames in (3, 12):
    x = torch.rand(1, frames, 3, 500, 600)
    with torch.no_grad(), backends.use('native', weight_bytes=0):
        efusion.exposure_fusion(x[:, :, :, :8, :8])
        before = rss('VmRSS:')
        open('/proc/self/clear_refs', 'w').write('5')
        out = efusion.exposure_fusion(x)
        peaks[frames] = (rss('VmHWM:') - before) / x[0, 0].nbytes
    del x, out
print(json.dumps(peaks))
"""
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0 and "clear_refs" in done.stderr:
            pytest.skip("the kernel's peak counter cannot be reset here")
        assert done.returncode == 0, done.stderr
        peaks = {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
        # in frames' sizes: the blended pyramid about 4/3 (the result is written into it), the
        # normaliser and one frame's weights 2/3, one frame's Gaussian levels about 4/9; holding the
        # 12 weight planes would add 4 frames at N = 12
        assert peaks[3] < 3.0, peaks
        assert peaks[12] < 1.15 * peaks[3], peaks

    def test_threads_do_not_change_bits(self):
        x = torch.rand(2, 5, 3, 67, 45, generator=torch.Generator().manual_seed(2))
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = exposure_fusion(x, levels=3.5)
            torch.set_num_threads(3)
            three = exposure_fusion(x, levels=3.5)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(one, three)

    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    def test_threads_split_levels_with_halos(self, preset):
        # wide, short levels: each thread computes its coarse rows and, again privately, the coarse
        # rows at its block's edges that another thread owns; the reference's bits (3 frames: no
        # reordered sum) whatever the split
        x = torch.rand(2, 3, 3, 23, 700, generator=torch.Generator().manual_seed(5))
        threads = torch.get_num_threads()
        with backends.use("reference"):
            expected = exposure_fusion(x, levels=3.5, preset=preset)
        try:
            for count in (2, 3):
                torch.set_num_threads(count)
                with backends.use("native"):
                    assert torch.equal(exposure_fusion(x, levels=3.5, preset=preset), expected)
        finally:
            torch.set_num_threads(threads)

    def test_channel_order(self):
        # channel_order "bgr" (codes 7-9 = 2, 1, 0) reads the stack's channels reversed: the same
        # weights as "rgb" on the flipped stack (exposure off: its channel sum follows the stack order)
        x = torch.rand(2, 3, 3, 11, 13, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        codes, reals = conventions(PRESETS["mertens"])
        args = ([1.0, 1.0, 0.0], [0.5] * 3, [0.2] * 3, False)
        bgr = torch.ops.efusion_native.weights(x, *args, reals, codes[:7] + [2, 1, 0])
        assert torch.equal(bgr, torch.ops.efusion_native.weights(x.flip(2), *args, reals, codes))
        assert not torch.equal(bgr, torch.ops.efusion_native.weights(x, *args, reals, codes))

    def test_flat_contrast(self):
        # float32 |Laplacian| below the threshold counts as 0 (issue 12's float32 rule for "mertens")
        x = (torch.randint(0, 256, (1, 3, 3, 12, 14), generator=torch.Generator().manual_seed(4)) / 255).float()
        x[:, :, :, 4:8] = x[:, :, :1, 4:8]  # flat gray bands: the float32 luma leaves tiny residuals
        preset = PRESETS["mertens"]
        codes, reals = conventions(preset)
        threshold = 2.0 ** -19
        fast = torch.ops.efusion_native.weights(x, [1.0, 0.0, 0.0], [0.5] * 3, [0.2] * 3, False,
                                                reals[:3] + [threshold, 0.0], codes)
        response = laplacian(luma(x, preset), preset)
        raw = torch.where(response.abs() < threshold, 0.0, response).abs() + WEIGHT_FLOOR
        assert torch.equal(fast, raw / raw.sum(dim=1, keepdim=True))
        as_float64 = torch.ops.efusion_native.weights(x.double(), [1.0, 0.0, 0.0], [0.5] * 3, [0.2] * 3, False,
                                                      reals[:3] + [threshold, 0.0], codes)
        assert torch.equal(as_float64, fusion_weights(x.double(), None, 1.0, 0.0, 0.0, 0.5, 0.2, preset))  # float32 only

    def test_rejects_bad_arguments(self):
        codes, reals = conventions(PRESETS["mertens"])
        with pytest.raises(RuntimeError, match="float32 or float64"):
            torch.ops.efusion_native.weights(torch.zeros(1, 2, 3, 4, 4, dtype=torch.int32), [1.0] * 3, [0.5] * 3,
                                             [0.2] * 3, False, reals, codes)
        with pytest.raises(RuntimeError, match=r"\[B, N, C, H, W\]"):
            torch.ops.efusion_native.blend(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), [0.0], [1.0], reals, codes)


@needs_native
class TestSampleCheck:
    """exposure_fusion's refusal of NaN, inf and unscaled samples (efusion._checks.check_samples), made
    by the kernels' weights pass on the native path instead of a pass of its own."""

    @pytest.mark.parametrize("two_pass", [False, True])
    @pytest.mark.parametrize("value, message", [
        (float("nan"), "frame 2 has 1 non-finite value"), (float("inf"), "frame 2 has 1 non-finite value"),
        (-float("inf"), "frame 2 has 1 non-finite value"), (2.5, "values up to 2.5, above 2"),
    ])
    def test_the_same_error(self, value, message, two_pass):
        x = torch.rand(1, 4, 3, 21, 30, generator=torch.Generator().manual_seed(30))
        x[0, 2, 1, 7, 9] = value
        with backends.use("native", weight_bytes=0 if two_pass else 1 << 30), pytest.raises(ValueError, match=message) as refused:
            exposure_fusion(x)
        assert refused.value.__context__ is None and refused.value.__cause__ is None  # one error, not a chain
        with backends.use("reference"), pytest.raises(ValueError, match=message):
            exposure_fusion(x)

    def test_accepts_what_check_samples_accepts_without_its_pass(self, monkeypatch):
        from efusion import _checks

        x = torch.rand(3, 3, 21, 30, generator=torch.Generator().manual_seed(31))
        x[0, 0, 0, 0], x[1, 1, 1, 1] = -5.0, 2.0  # negative and up to MAX_SAMPLE: accepted
        expected = exposure_fusion(x)
        calls = []
        monkeypatch.setattr(_checks, "check_samples", lambda *args, **kwargs: calls.append(args))
        with backends.use("native"):
            assert torch.equal(exposure_fusion(x), expected)
        assert calls == []  # the weights pass checked them
        with backends.use("native"):
            exposure_fusion(x, mask=torch.ones(3, 1, 21, 30))  # masked: check_samples' own pass (masked pixels skipped)
        assert len(calls) == 1


class TestSelection:
    def test_automatic_selection(self):
        x = torch.rand(1, 3, 3, 8, 8)
        w = torch.rand(1, 3, 1, 8, 8)
        params = (1.0, 1.0, 1.0, 0.5, 0.2)
        assert _select("fuse", x, (None, *params, None)) == "native"
        assert _select("blend", x, (w, 2.5)) == "native"
        assert _select("weights", x, (None, *params)) == "native"
        assert _select("fuse_frames", x[:, 0], (*params, None)) == "native"  # a first frame [B, C, H, W]
        assert _select("fuse_frames", x[:, 0], (*params, torch.tensor(2.5))) == "native"  # tensor depth, no gradient
        assert _select("fuse_frames", x[:, 0], (*params, torch.tensor(2.5, requires_grad=True))) == "reference"  # stacked, then fuse
        assert _select("fuse", x.double().requires_grad_(), (None, *params, None)) == "native"  # gradients
        assert _select("weights", x.double().requires_grad_(), (None, *params)) == "cpu"  # no weights gradient
        assert _select("blend", x.double(), (w.double().requires_grad_(), 2.5)) == "cpu"  # nor blend gradient
        mask = torch.ones(1, 3, 1, 8, 8)
        assert _select("fuse", x, (mask, *params, None)) == "native"  # masks, no gradient
        assert _select("weights", x, (mask, *params)) == "native"
        assert _select("fuse", x.double().requires_grad_(), (mask.double(), *params, None)) == "cpu"  # masked gradients
        assert _select("fuse", x, (mask.requires_grad_(), *params, None)) == "cpu"
        assert _select("fuse", x, (mask.detach(), *params, torch.tensor(2.5))) == "native"  # masked tensor depth
        assert _select("fuse", x, (mask.detach(), *params, torch.tensor(2.5, requires_grad=True))) == "cpu"
        assert _select("fuse", x, (None, *params, torch.tensor(2.5))) == "native"  # tensor depth: fuse only
        assert _select("blend", x, (w, torch.tensor(2.5))) == "cpu"
        assert _select("fuse", x.half(), (None, *params, None)) == "reference"
        # 16 ** 33 may overflow float32: neither kernel backend, the reference's log-domain fallback
        assert _select("fuse", x, (None, 33.0, 1.0, 1.0, 0.5, 0.2, None)) == "reference"
        assert _select("fuse", x.double(), (None, 33.0, 1.0, 1.0, 0.5, 0.2, None)) == "native"  # not float64
        assert _select("fuse", x, (None, -1.0, 1.0, 1.0, 0.5, 0.2, None)) == "cpu"  # 0 ** -1
        assert _select("fuse", x, (None, 1.0, math.nan, 1.0, 0.5, 0.2, None)) == "cpu"
        with torch.no_grad():
            assert _select("fuse", x.requires_grad_(), (None, *params, None)) == "native"

    def test_declines_unknown_conventions(self):
        @dataclasses.dataclass(frozen=True)
        class Extended(Preset):
            dither: bool = False  # a convention the kernels do not know

        x = torch.rand(1, 3, 3, 8, 8)
        extended = Extended(**{f.name: getattr(PRESETS["mertens"], f.name) for f in dataclasses.fields(Preset)})
        assert supported(PRESETS["mertens"]) and supported(PRESETS["opencv"]) and not supported(extended)
        assert backends.select("fuse", x, (None, 1.0, 1.0, 1.0, 0.5, 0.2, None), preset=extended).name == "cpu"
        odd = dataclasses.replace(PRESETS["mertens"], laplacian_form="sobel")
        assert not supported(odd)

    def test_differentiable(self):
        assert BACKEND.differentiable is True


def _native_ran(out: torch.Tensor) -> bool:
    """Whether ``out`` is ``efusion_native::fusion``'s (its registered autograd), not another backend's."""
    return "efusion_native_fusion" in type(out.grad_fn).__name__


def _assert_same_gradients(names, fast, slow, relative: float) -> None:
    """Each gradient present in both or neither, and within ``relative`` of the largest reference gradient."""
    for name, a, b in zip(names, fast, slow):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, atol=relative * max(1.0, b.abs().max().item()), rtol=0, msg=name)


def _fused_gradients(backend: str, stack, tensors: dict, numbers: dict, seed: int = 5):
    """The gradients of a random projection of ``exposure_fusion`` for the stack and ``tensors``
    (``None`` where one gets none), with ``backend`` selected; also whether the native op ran."""
    inputs = [stack, *tensors.values()]
    with backends.use(backend):
        out = exposure_fusion(stack, **tensors, **numbers)
        weight = torch.rand(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad((out * weight).sum(), wanted, allow_unused=True))
    return [next(grads) if t.requires_grad else None for t in inputs], _native_ran(out), out


def _smooth_stack(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """A stack far from the measures' kinks (values inside (0.1, 0.9), a checkerboard of contrast):
    float32 and float64 decide every kink alike, so float32 gradients can be held to float64's."""
    _, _, _, h, w = shape
    checker = ((torch.arange(h).view(h, 1) + torch.arange(w).view(1, w)) % 2 * 2 - 1).double()
    noise = torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (0.5 + 0.15 * checker + 0.25 * (noise - 0.5)).to(dtype)


#: (parameters as tensors that require gradients, parameters as numbers)
GRADIENT_CASES = [
    (dict(contrast=1.0, saturation=1.0, exposure=1.0, mu=0.5, sigma=0.2), {}),
    (dict(contrast=0.8, saturation=1.2, exposure=1.5, mu=0.45, sigma=0.22), {}),
    (dict(contrast=2.0, exposure=1.0, mu=[0.4, 0.5, 0.6], sigma=[0.2, 0.25, 0.3]), dict(saturation=0.0)),
    (dict(contrast=0.0, saturation=1.5, exposure=0.0), dict(mu=0.5, sigma=0.2)),
    (dict(mu=0.45), dict(contrast=0.7, exposure=0.0)),  # mu unused: no gradient, as the reference
]


@needs_native
class TestMasks:
    """Masked calls without gradients run natively, with the reference's bits (its fill, then the
    native raw weights, normalised under the mask), and nothing under mask = 0 reaches the result."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    @pytest.mark.parametrize("channels", [1, 3])
    def test_masked_fuse_and_weights_are_the_reference(self, dtype, preset, channels):
        g = torch.Generator().manual_seed(channels)
        x = torch.rand(2, 4, channels, 21, 30, generator=g, dtype=dtype)
        mask = (torch.rand(2, 4, 1, 21, 30, generator=g) > 0.3).to(dtype)
        mask[1, 2] = 0  # a frame masked everywhere
        mask[0, :, :, :3, :3] = 0  # pixels masked in every frame
        assert backends.select("fuse", x, (mask, 1.0, 1.0, 1.0, 0.5, 0.2, None), preset=PRESETS[preset],
                               mask=mask).name == "native"
        depth = torch.tensor(2.3, dtype=dtype)  # between levels: the plan's coefficients as numbers
        fused, weights = exposure_fusion(x, mask=mask, preset=preset, levels=depth), mertens_weights(x, mask=mask, preset=preset)
        with backends.use("reference"):
            assert torch.equal(fused, exposure_fusion(x, mask=mask, preset=preset, levels=depth))
            assert torch.equal(weights, mertens_weights(x, mask=mask, preset=preset))
        assert torch.equal(weights[0, :, :, :3, :3], torch.zeros_like(weights[0, :, :, :3, :3]))

    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    @pytest.mark.parametrize("size", [(1, 1), (1, 7), (2, 3), (5, 4), (37, 53)])
    def test_fill_masked_is_the_reference(self, preset, size, dtype):
        g = torch.Generator().manual_seed(size[0] * 100 + size[1])
        x = torch.rand(4, 3, *size, generator=g, dtype=dtype)
        mask = (torch.rand(4, 1, *size, generator=g) > 0.5).to(dtype)
        mask[0] = 1  # a frame without a hole: copied
        mask[1] = 0  # a frame without a valid pixel: 0
        x[mask.expand_as(x) == 0] = float("nan")
        codes, reals = conventions(PRESETS[preset])
        filled = torch.ops.efusion_native.fill_masked(x, mask, reals, codes)
        assert torch.equal(filled, fill_masked(x, mask, preset))
        assert filled.isfinite().all()

    def test_streamed_masked_frames_with_gradients_take_the_reference_fill(self):
        # frames that require grad are stacked and fused with autograd: the fill must be the
        # reference's differentiable one, and the gradient under the mask exactly 0
        g = torch.Generator().manual_seed(7)
        frames = [torch.rand(3, 12, 14, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
        masks = [torch.rand(1, 12, 14, generator=g) > 0.3 for _ in range(3)]
        fuse_frames(frames, masks=masks).sum().backward()
        grads = [f.grad.clone() for f in frames]
        stacked = torch.stack([f.detach() for f in frames]).requires_grad_()
        with backends.use("reference"):
            exposure_fusion(stacked, mask=torch.stack(masks).double()).sum().backward()
        for k, grad in enumerate(grads):
            torch.testing.assert_close(grad, stacked.grad[k], rtol=1e-10, atol=1e-12)
            assert torch.equal(grad * ~masks[k], torch.zeros_like(grad))

    def test_content_under_the_mask_does_not_matter(self):
        g = torch.Generator().manual_seed(5)
        x = torch.rand(1, 3, 3, 40, 40, generator=g)
        mask = torch.ones(1, 3, 1, 40, 40)
        mask[0, 0, :, 5:25, 5:25] = 0
        other = x.clone()
        other[0, 0, :, 5:25, 5:25] = torch.tensor([0.0, 1.0, float("nan")]).view(3, 1, 1)
        assert torch.equal(exposure_fusion(x, mask=mask), exposure_fusion(other, mask=mask))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_streamed_masked_frames_are_the_stacked_result(self, dtype):
        g = torch.Generator().manual_seed(6)
        frames = [torch.rand(3, 16, 18, generator=g, dtype=dtype) for _ in range(5)]
        masks = [torch.rand(1, 16, 18, generator=g) > 0.4 for _ in range(5)]
        masks[2][:] = False  # a padding frame, NaN under its mask
        frames[2][:, :4] = float("nan")
        streamed = fuse_frames(frames, masks=masks)
        with backends.use("reference"):
            expected = exposure_fusion(torch.stack(frames), mask=torch.stack(masks).to(dtype))
            single = exposure_fusion(frames[0][None], mask=masks[0][None].to(dtype))
        assert torch.equal(streamed, expected)
        assert torch.equal(fuse_frames(frames[:1], masks=masks[:1]), single)


@needs_native
class TestGradients:
    """The registered autograd of ``efusion_native::fusion`` (``fusion_backward``) against the
    reference code's gradients, for the stack and all five parameters (the conformance suite's
    gradient tests mostly use tensor depths, which this backend declines)."""

    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    @pytest.mark.parametrize("shape", [(2, 3, 3, 9, 11), (1, 4, 3, 20, 24), (1, 3, 1, 13, 7), (2, 2, 3, 6, 5)])
    @pytest.mark.parametrize("levels", [None, 1, 2.6, -2])
    @pytest.mark.parametrize("case", range(len(GRADIENT_CASES)))
    def test_float64_equals_reference(self, preset, shape, levels, case):
        tensor_params, numbers = GRADIENT_CASES[case]
        if shape[2] == 1:
            tensor_params = {k: (0.5 if isinstance(v, list) else v) for k, v in tensor_params.items()}
        x = gradcheck_stack(*shape).requires_grad_()
        tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in tensor_params.items()}
        numbers = dict(numbers, levels=levels, preset=preset)
        fast, ran, value = _fused_gradients("native", x, tensors, numbers)
        slow, _, expected = _fused_gradients("reference", x, tensors, numbers)
        assert ran
        torch.testing.assert_close(value, expected, atol=BOUND[torch.float64], rtol=0)
        _assert_same_gradients(["stack", *tensors], fast, slow, BOUND[torch.float64])

    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    @pytest.mark.parametrize("levels", [None, 2.5])
    def test_float32_within_bound(self, preset, levels):
        # float32 against the reference's float64 gradients at the same inputs: the stack's within
        # 1e-6 of the largest gradient; the parameters' (sums over every pixel of float32 terms)
        # within 1e-5 (the reference's own float32 parameter gradients miss by up to 3e-6 here)
        x64 = _smooth_stack(2, 3, 3, 17, 19).float().double()
        values = dict(contrast=0.8, saturation=1.2, exposure=1.5, mu=[0.4, 0.5, 0.6], sigma=0.25)
        results = {}
        for backend, dtype in (("native", torch.float32), ("reference", torch.float64)):
            tensors = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in values.items()}
            results[backend] = _fused_gradients(backend, x64.to(dtype).requires_grad_(), tensors,
                                                dict(levels=levels, preset=preset))
        fast, ran, value = results["native"]
        truth, _, expected = results["reference"]
        assert ran
        torch.testing.assert_close(value.double(), expected, atol=BOUND[torch.float32], rtol=0)
        for name, a, b in zip(["stack", *values], fast, truth):
            bound = (BOUND[torch.float32] if name == "stack" else 1e-5) * max(1.0, b.abs().max().item())
            torch.testing.assert_close(a.double(), b, atol=bound, rtol=0, msg=name)

    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    @pytest.mark.parametrize("levels", [1.0, 1.5, 3.0, -1.0, -2.5])
    def test_tensor_depth(self, preset, levels):
        # a learned depth: the plan's coefficients get gradients (sum g_l B_l, sum g_l R_l), whole
        # depths included (a coefficient of 0 that still wants its gradient)
        x = gradcheck_stack(2, 3, 3, 20, 14, seed=3).requires_grad_()
        values = dict(contrast=0.8, saturation=1.2, exposure=1.1, mu=0.45, sigma=0.25, levels=levels)
        tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}
        numbers = dict(preset=preset)
        fast, ran, value = _fused_gradients("native", x, tensors, numbers)
        slow, _, expected = _fused_gradients("reference", x, tensors, numbers)
        assert ran
        torch.testing.assert_close(value, expected, atol=BOUND[torch.float64], rtol=0)
        _assert_same_gradients(["stack", *tensors], fast, slow, 1e-12)

    @pytest.mark.parametrize("wanted", ["stack", "parameters"])
    def test_partial_needs(self, wanted):
        x = gradcheck_stack(2, 3, 3, 12, 10, seed=3).requires_grad_(wanted == "stack")
        tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=wanted == "parameters")
                   for k, v in dict(contrast=0.8, saturation=1.2, exposure=1.1, mu=0.45, sigma=0.25).items()}
        fast, ran, _ = _fused_gradients("native", x, tensors, dict(levels=3))
        slow, _, _ = _fused_gradients("reference", x, tensors, dict(levels=3))
        assert ran
        _assert_same_gradients(["stack", *tensors], fast, slow, 1e-12)

    def test_gradcheck(self):
        x = _smooth_stack(1, 2, 3, 6, 7).requires_grad_()
        names = ("contrast", "saturation", "exposure", "mu", "sigma")
        values = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.8, 1.3, 1.1, [0.4, 0.5, 0.6], 0.3)]

        def fn(stack, *params):
            with backends.use("native"):
                out = exposure_fusion(stack, levels=2, **dict(zip(names, params)))
            assert _native_ran(out)
            return out

        assert torch.autograd.gradcheck(fn, (x, *values))

    def test_recorded_backward_is_the_reference(self):
        # create_graph=True: the reference code's gradient as a graph, so second derivatives work
        x = _smooth_stack(1, 2, 3, 5, 6).requires_grad_()
        sigma = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

        def fn(stack, sigma):
            with backends.use("native"):
                out = exposure_fusion(stack, sigma=sigma, levels=2)
            assert _native_ran(out)
            return out

        assert torch.autograd.gradgradcheck(fn, (x, sigma))


def _bracket_folders():
    from _align_cases import bracket_folders

    return bracket_folders()


@needs_native
@pytest.mark.slow
@requires_shared()
@pytest.mark.parametrize("folder", _bracket_folders(), ids=lambda f: f.name)
def test_gradients_on_every_bracket(folder):
    # real brackets (flat skies, clipped highlights: measures at their kinks, weights at the floor),
    # every frame, 96 px wide, float64: the kernels' backward (which takes the product of the
    # measures from the forward's weights, Q = (h - sum h w)(w - 1e-12 / T)) equals the reference
    from _align_cases import load_small

    x = load_small(folder, 96, max_frames=10 ** 6).unsqueeze(0).requires_grad_()
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in GRADIENT_CASES[1][0].items()}
    fast, ran, value = _fused_gradients("native", x, tensors, {"levels": 2.6})
    slow, _, expected = _fused_gradients("reference", x, tensors, {"levels": 2.6})
    assert ran
    torch.testing.assert_close(value, expected, atol=BOUND[torch.float64], rtol=0)
    _assert_same_gradients(["stack", *tensors], fast, slow, BOUND[torch.float64])


class _Fused(torch.utils.data.Dataset):
    """Fuses a fixed stack in the worker: its result and the worker's torch thread count."""

    def __init__(self, stack):
        self.stack = stack

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        with torch.no_grad():
            return exposure_fusion(self.stack), torch.get_num_threads()


@needs_native
def test_dataloader_workers_run_one_thread():
    # DataLoader workers set one torch thread: the kernels' parallel_for follows it (no
    # oversubscription), and the forked worker (OpenMP used before the fork) neither hangs nor differs
    stack = torch.rand(3, 3, 40, 50, generator=torch.Generator().manual_seed(5))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the parent's kernels run an OpenMP team before the fork
        expected = exposure_fusion(stack)
        loader = torch.utils.data.DataLoader(_Fused(stack), batch_size=None, num_workers=1,
                                             multiprocessing_context="fork", timeout=120)
        for fused, worker_threads in loader:
            assert worker_threads == 1
            assert torch.equal(fused, expected)
    finally:
        torch.set_num_threads(threads)


@needs_native
class TestBusyMachine:
    """Each operator runs on at most the cores other processes leave free when it starts (a pass
    would otherwise wait at its barrier for a thread the OS descheduled): the rule, a live busy
    process, and the caller's thread count left as it was."""

    @pytest.mark.parametrize(("online", "running", "ours", "wanted", "expected"), [
        (2, 1, 1, 2, 2),   # idle: only this thread runs
        (2, 2, 2, 2, 2),   # this process's spinning OpenMP worker is not another process
        (2, 2, 1, 2, 1),   # one busy process on two cores: one thread
        (2, 5, 1, 2, 1),   # never fewer than one
        (8, 3, 1, 4, 4),   # two busy processes on eight cores: the four wanted
        (8, 7, 1, 4, 2),   # six busy: two left
        (2, 1, 0, 2, 2),   # this thread itself counts even when its state was read as sleeping
    ])
    def test_rule(self, online, running, ours, wanted, expected):
        assert torch.ops.efusion_native.threads_for(online, running, ours, wanted) == expected

    @pytest.mark.skipif((os.cpu_count() or 1) < 2 or not Path("/proc/loadavg").exists(), reason="needs Linux, 2+ CPUs")
    def test_busy_process_takes_a_core(self):
        online = os.cpu_count() or 1
        threads = torch.get_num_threads()
        x = torch.rand(1, 3, 3, 48, 64, generator=torch.Generator().manual_seed(2))
        expected = exposure_fusion(x)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.3)  # running, and past the 10 ms for which a reading of /proc is reused
            assert torch.ops.efusion_native.call_threads() <= min(threads, online - 1)
            assert torch.equal(exposure_fusion(x), expected)  # one thread or two: the same bits
            assert torch.get_num_threads() == threads  # the cap is the call's, not the caller's
        finally:
            busy.kill()
            busy.wait()
        assert torch.ops.efusion_native.call_threads() <= threads


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, "-W", "always::RuntimeWarning", "-c", code], check=False, capture_output=True,
                          text=True, env=environment, timeout=300)


_FALLBACK = """
import warnings, torch, efusion
from efusion.backends.native import build
x = torch.rand(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = efusion.exposure_fusion(x)
    second = efusion.exposure_fusion(x)
with efusion.backends.use("cpu"):
    expected = efusion.exposure_fusion(x)
print(torch.equal(first, expected), torch.equal(second, expected))
print(efusion.backends.select("fuse", x[None] if x.dim() == 4 else x, (None, 1, 1, 1, 0.5, 0.2, None),
                              preset=efusion.get_preset("mertens")).name)
for w in caught:
    print("WARNING", w.category.__name__, str(w.message))
"""


@pytest.mark.slow
class TestFallback:
    def test_missing_compiler_warns_once_and_runs_cpu(self, tmp_path):
        # an empty cache forces a build; the compiler does not exist
        done = _python(_FALLBACK, CXX=str(tmp_path / "no-such-compiler"), EFUSION_CACHE=str(tmp_path / "cache"))
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert lines[0] == "True True"  # the results are the cpu backend's
        assert lines[1] == "cpu"
        warned = [line for line in lines if line.startswith("WARNING")]
        assert len(warned) == 1, lines
        assert "NativeBuildWarning" in warned[0] and "no C++ compiler found" in warned[0] and "EFUSION_NATIVE=0" in warned[0]

    def test_compiler_refusing_the_cpu_flags_gets_a_baseline_build(self, tmp_path):
        # a compiler that rejects -march=native (as some cross or old compilers do): the kernels are
        # still built, without it, and run; no warning
        compiler = tmp_path / "picky-c++"
        compiler.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = "-march=native" ] && echo "unknown arch" >&2 && exit 1; done\n'
                            'exec c++ "$@"\n')
        compiler.chmod(0o755)
        done = _python(_FALLBACK.replace('use("cpu")', 'use("reference")'), CXX=str(compiler),
                       EFUSION_CACHE=str(tmp_path / "cache"))
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert lines[:2] == ["True True", "native"]  # 3 frames: the reference's bits
        assert not [line for line in lines if line.startswith("WARNING")], lines
        assert len(list((tmp_path / "cache").glob("*.so"))) == 1

    def test_disabled_by_environment(self, tmp_path):
        done = _python(_FALLBACK, EFUSION_NATIVE="0", EFUSION_CACHE=str(tmp_path / "cache"))
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert lines[:2] == ["True True", "cpu"]
        assert not [line for line in lines if line.startswith("WARNING")]
        assert not (tmp_path / "cache").exists()  # nothing was built
