"""Every registered backend against the reference code (``efusion.backends.use("reference")``).

Values, gradients of the stack and of every parameter, second derivatives (``create_graph``),
band seams (the backend option ``band_elements=1``: bands of two rows), the streaming entry point
``fuse_frames`` and ``torch.library.opcheck`` of the backend's custom operators, on sizes that
exercise borders, band seams and tiny pyramids. Gradient tests skip a backend whose attribute
``differentiable`` is ``False`` (a forward-only backend), and second-order tests a call the
backend declines (``"native"`` differentiates ``fuse`` with a number depth only). Adding a backend with
:func:`efusion.backends.register` adds it here. The rest of the suite runs through the default
selection (the ``"cpu"`` kernels for float32/float64 eager calls). Nothing is timed.
"""
from __future__ import annotations

import functools

import pytest
import torch

from efusion import backends, blend, exposure_fusion, fuse_frames, mertens_weights
from efusion.presets import get_preset

from conftest import TOLERANCES, gradcheck_stack

BACKENDS = [name for name in backends.available() if name != "reference"]

SIZES = [(1, 1), (2, 3), (1, 7), (5, 4), (9, 11), (20, 24), (37, 53)]
PARAMS = [
    {},
    dict(contrast=0.7, saturation=1.3, exposure=2.0, mu=0.45, sigma=0.25),
    dict(contrast=0.0, saturation=0.0),
    dict(levels=2.5),
    dict(levels=-2),
    dict(mu=[0.4, 0.5, 0.6], sigma=[0.1, 0.2, 0.3]),
]


@pytest.fixture(params=BACKENDS, autouse=True)
def backend(request):
    """The backend under test, selected for the whole test (``efusion.backends.use``)."""
    with backends.use(request.param):
        yield request.param


@pytest.fixture
def differentiable(backend):
    """Skip a gradient test for a forward-only backend (``differentiable = False``: it declines every
    call that records gradients, so the reference would be compared with itself)."""
    if not getattr(backends.get(backend), "differentiable", True):
        pytest.skip(f"backend {backend!r} is forward-only (differentiable = False)")


@pytest.fixture
def reference():
    """Call ``reference(fn)`` to evaluate ``fn`` with the reference backend."""

    def run(fn):
        with backends.use("reference"):
            return fn()

    return run


@pytest.fixture
def small_bands(backend):
    """Bands of two rows (backend option ``band_elements=1``): every seam between bands is exercised on small images."""
    with backends.use(backend, band_elements=1):
        yield


def as_tensors(params: dict, dtype: torch.dtype, requires_grad: bool = False) -> dict:
    return {k: torch.tensor(v, dtype=dtype, requires_grad=requires_grad) for k, v in params.items()}


class TestForwardMatchesReference:
    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    @pytest.mark.parametrize("size", SIZES)
    @pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(p) or "defaults")
    def test_exposure_fusion(self, reference, preset, size, params, dtype):
        x = torch.rand(2, 3, 3, *size, generator=torch.Generator().manual_seed(0), dtype=dtype)
        x[:, 0, :, :2, :2] = 0.5  # flat and gray: measures exactly 0
        kwargs = {k: torch.tensor(v, dtype=dtype) if isinstance(v, list) else v for k, v in params.items()}
        fast = exposure_fusion(x, preset=preset, **kwargs)
        slow = reference(lambda: exposure_fusion(x, preset=preset, **kwargs))
        torch.testing.assert_close(fast, slow, atol=TOLERANCES[dtype], rtol=0)

    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    def test_gray_tensor_params_and_mask(self, reference, preset, dtype):
        g = torch.Generator().manual_seed(1)
        for channels in (1, 3):
            x = torch.rand(2, 4, channels, 13, 17, generator=g, dtype=dtype)
            mask = (torch.rand(2, 4, 1, 13, 17, generator=g) > 0.3).to(dtype)
            kwargs = as_tensors(dict(contrast=0.0, exposure=1.5, levels=2.3), dtype)
            fast = exposure_fusion(x, preset=preset, mask=mask, **kwargs)
            slow = reference(functools.partial(exposure_fusion, x, preset=preset, mask=mask, **kwargs))
            torch.testing.assert_close(fast, slow, atol=TOLERANCES[dtype], rtol=0)

    def test_weights_bit_for_bit_with_unit_exponents(self, reference, dtype):
        # the band kernel repeats the reference operations in order: same bits (pow differs by rounding)
        x = (torch.randint(0, 256, (2, 3, 3, 23, 17), generator=torch.Generator().manual_seed(2)) / 255).to(dtype)
        x[:, :, :, 5:9] = x[:, :, :1, 5:9]  # gray rows: saturation exactly 0
        for preset in ("mertens", "opencv"):
            fast = mertens_weights(x, preset=preset)
            assert torch.equal(fast, reference(functools.partial(mertens_weights, x, preset=preset)))

    def test_blend(self, reference, dtype):
        g = torch.Generator().manual_seed(3)
        x = torch.rand(2, 3, 3, 19, 23, generator=g, dtype=dtype)
        w = torch.rand(2, 3, 1, 19, 23, generator=g, dtype=dtype)
        for levels in (None, 1, 2.5, -2, torch.tensor(2.2, dtype=dtype)):
            torch.testing.assert_close(blend(x, w, levels=levels), reference(functools.partial(blend, x, w, levels=levels)),
                                       atol=TOLERANCES[dtype], rtol=0)

    @pytest.mark.parametrize("size", [(9, 11), (20, 24), (37, 53)])
    def test_band_seams(self, backend, size):
        x = torch.rand(2, 3, 3, *size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        with backends.use(backend, band_elements=1):
            banded = exposure_fusion(x, contrast=0.8, levels=2.5)
        with backends.use(backend, band_elements=1 << 30):
            whole = exposure_fusion(x, contrast=0.8, levels=2.5)
        torch.testing.assert_close(banded, whole, atol=1e-14, rtol=0)
        with backends.use("reference"):
            torch.testing.assert_close(banded, exposure_fusion(x, contrast=0.8, levels=2.5), atol=1e-12, rtol=0)


class TestIntegerFrames:
    """uint8 / uint16 stacks: fused in float32, their contrast and saturation measured on the exact
    samples (``Preset.integer_samples``) by every backend that accepts them."""

    @pytest.mark.parametrize("integer", [torch.uint8, torch.uint16])
    @pytest.mark.parametrize("size", SIZES)
    @pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(p) or "defaults")
    def test_exposure_fusion(self, reference, integer, size, params):
        top = 255 if integer == torch.uint8 else 65535
        g = torch.Generator().manual_seed(10)
        x = torch.randint(0, top + 1, (2, 3, 3, *size), generator=g).to(integer)
        x[:, :, :, :3] = x[:, :1, :, :3]  # the same samples in every frame: contrasts cancel exactly
        kwargs = {k: torch.tensor(v) if isinstance(v, list) else v for k, v in params.items()}
        fast = exposure_fusion(x, **kwargs)
        assert fast.dtype == torch.float32
        torch.testing.assert_close(fast, reference(lambda: exposure_fusion(x, **kwargs)),
                                   atol=TOLERANCES[torch.float32], rtol=0)

    @pytest.mark.parametrize("channels", [1, 3])
    def test_weights(self, reference, channels):
        g = torch.Generator().manual_seed(11)
        x = torch.randint(0, 65536, (2, 4, channels, 19, 23), generator=g).to(torch.uint16)
        x[:, :, :, 5:9] = x[:, :, :1, 5:9]  # gray where C = 3: saturation exactly 0
        for params in PARAMS[:3]:
            kwargs = {k: v for k, v in params.items() if k != "levels"}
            fast = mertens_weights(x, **kwargs)
            torch.testing.assert_close(fast, reference(functools.partial(mertens_weights, x, **kwargs)), atol=1e-6, rtol=0)

    def test_parameter_gradients(self, reference):
        x = torch.randint(0, 256, (1, 3, 3, 11, 13), generator=torch.Generator().manual_seed(12)).to(torch.uint8)

        def gradients():
            exponents = as_tensors(dict(contrast=0.8, saturation=1.2, exposure=1.0), torch.float32, requires_grad=True)
            exposure_fusion(x, **exponents).square().sum().backward()
            return [e.grad for e in exponents.values()]

        for fast, slow in zip(gradients(), reference(gradients)):
            torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-5)


def _skip_unless_differentiated(backend: str, op: str, stack: torch.Tensor, inputs: tuple) -> None:
    """Skip a test whose call, recording gradients, the backend declines (a backend may
    differentiate only some calls: ``"native"`` its ``fuse`` calls with a number depth); the
    reference would then be compared with itself."""
    if not backends.get(backend).accepts(op, stack, inputs, preset=get_preset("mertens")):
        pytest.skip(f"backend {backend!r} declines {op} calls like this one that record gradients")


def _ran_backend(out: torch.Tensor) -> bool:
    """Whether ``out`` comes from one autograd function (a backend's), not from the reference's
    graph of plain operations."""
    return isinstance(out.grad_fn, torch.autograd.function.BackwardCFunction)


def _gradients(fn, inputs):
    for t in inputs:
        t.grad = None
    out = fn()
    (out * torch.rand(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)).sum().backward()
    return [None if t.grad is None else t.grad.clone() for t in inputs]


def smooth_stack(*shape: int, seed: int = 0) -> torch.Tensor:
    """A float64 ``[B, N, 3, H, W]`` stack far from every kink (a checkerboard in every frame and
    channel: |Laplacian| >= 0.6, saturation >= 0.07, values inside (0, 1)), where second
    derivatives are smooth enough for finite differences (unlike :func:`gradcheck_stack`'s hard
    cases, where the gradient itself jumps)."""
    _, n, c, h, w = shape
    checker = ((torch.arange(h).view(h, 1) + torch.arange(w).view(1, w)) % 2 * 2 - 1).double()
    gains = torch.tensor([0.25, 0.15, 0.05], dtype=torch.float64)[:c].view(c, 1, 1)
    brightness = torch.linspace(0.3, 0.7, n, dtype=torch.float64).view(n, 1, 1, 1)
    noise = torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return brightness + gains * checker + 0.03 * noise


@pytest.mark.usefixtures("differentiable")
class TestSecondOrder:
    """create_graph=True: the kernels' autograd functions give the reference code's gradient as a
    graph, so second derivatives (gradient penalties, gradgradcheck) work through them."""

    @pytest.mark.slow
    @pytest.mark.parametrize("depth", [1.6, 2], ids=["tensor-depth", "number-depth"])
    def test_gradgradcheck_fusion(self, backend, depth):
        x = smooth_stack(1, 2, 3, 5, 6).requires_grad_()
        params = as_tensors(dict(contrast=0.8, saturation=1.2, exposure=1.1, mu=0.45, sigma=0.25), torch.float64,
                            requires_grad=True)
        levels = torch.tensor(depth, dtype=torch.float64, requires_grad=True) if isinstance(depth, float) else depth
        _skip_unless_differentiated(backend, "fuse", x, (None, *params.values(), levels))

        def fuse(x, *values):
            out = exposure_fusion(x, levels=levels, **dict(zip(params, values)))
            assert _ran_backend(out)  # the backend's own function, not the reference's graph
            return out

        assert torch.autograd.gradgradcheck(fuse, (x, *params.values()))

    @pytest.mark.slow
    def test_gradgradcheck_blend_and_weights(self, backend):
        g = torch.Generator().manual_seed(8)
        x = torch.rand(1, 2, 3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.rand(1, 2, 1, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
        levels = torch.tensor(1.6, dtype=torch.float64, requires_grad=True)
        _skip_unless_differentiated(backend, "blend", x, (w, levels))
        assert _ran_backend(blend(x, w, levels=levels))
        assert torch.autograd.gradgradcheck(lambda x, w, levels: blend(x, w, levels=levels), (x, w, levels))
        stack = smooth_stack(1, 2, 3, 5, 6, seed=1).requires_grad_()
        sigma = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        assert _ran_backend(mertens_weights(stack, sigma=sigma))
        assert torch.autograd.gradgradcheck(lambda s, sigma: mertens_weights(s, sigma=sigma), (stack, sigma))

    def test_first_order_of_a_recorded_backward_is_the_kernels(self):
        x = gradcheck_stack(2, 3, 3, 9, 11).requires_grad_()
        mu = torch.tensor(0.45, dtype=torch.float64, requires_grad=True)
        out = exposure_fusion(x, mu=mu)
        weight = torch.rand(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
        plain = torch.autograd.grad((out * weight).sum(), (x, mu), retain_graph=True)
        recorded = torch.autograd.grad((out * weight).sum(), (x, mu), create_graph=True)
        assert all(g.requires_grad for g in recorded)
        for a, b in zip(recorded, plain):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


@pytest.mark.usefixtures("differentiable")
class TestGradientsMatchReference:
    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    @pytest.mark.parametrize("shape", [(2, 3, 3, 9, 11), (1, 4, 3, 20, 24), (1, 3, 1, 13, 7)])
    @pytest.mark.parametrize("params", [
        dict(contrast=1.0, saturation=1.0, exposure=1.0, mu=0.5, sigma=0.2, levels=-1.0),
        dict(contrast=0.8, saturation=1.2, exposure=1.5, mu=0.45, sigma=0.22, levels=2.6),
        dict(contrast=2.0, saturation=0.0, exposure=1.0, mu=[0.4, 0.5, 0.6], sigma=[0.2, 0.25, 0.3], levels=2.0),
        dict(contrast=0.0, saturation=1.5, exposure=0.0, mu=0.5, sigma=0.2, levels=-1.0),
    ], ids=["unit", "generic", "per-channel", "zero-exponents"])
    def test_every_input(self, reference, preset, shape, params):
        x = gradcheck_stack(*shape).requires_grad_()
        if shape[2] == 1:
            params = {k: (0.5 if isinstance(v, list) else v) for k, v in params.items()}
        tensors = as_tensors(params, torch.float64, requires_grad=True)
        inputs = [x, *tensors.values()]
        fast = _gradients(lambda: exposure_fusion(x, preset=preset, **tensors), inputs)
        slow = reference(lambda: _gradients(lambda: exposure_fusion(x, preset=preset, **tensors), inputs))
        for name, a, b in zip(["stack", *tensors], fast, slow):
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-10 * max(1.0, b.abs().max().item()), rtol=1e-8, msg=name)

    def test_mask_and_weights_function(self, reference):
        g = torch.Generator().manual_seed(6)
        x = gradcheck_stack(2, 3, 3, 11, 13).requires_grad_()
        sigma = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        mask = (torch.rand(2, 3, 1, 11, 13, generator=g) > 0.3).double()
        for fn in (lambda: exposure_fusion(x, mask=mask, sigma=sigma),
                   lambda: mertens_weights(x, mask=mask, contrast=0.5, sigma=sigma)):
            fast = _gradients(fn, [x, sigma])
            slow = reference(functools.partial(_gradients, fn, [x, sigma]))
            for a, b in zip(fast, slow):
                torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)

    def test_blend_weights_and_depth(self, reference):
        g = torch.Generator().manual_seed(7)
        x = torch.rand(2, 3, 3, 17, 19, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.rand(2, 3, 1, 17, 19, generator=g, dtype=torch.float64, requires_grad=True)
        levels = torch.tensor(2.4, dtype=torch.float64, requires_grad=True)
        fast = _gradients(lambda: blend(x, w, levels=levels), [x, w, levels])
        slow = reference(lambda: _gradients(lambda: blend(x, w, levels=levels), [x, w, levels]))
        for a, b in zip(fast, slow):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)

    def test_band_seams(self, small_bands, reference):
        x = gradcheck_stack(1, 3, 3, 20, 24).requires_grad_()
        tensors = as_tensors(dict(contrast=0.8, saturation=1.2, mu=0.45, levels=2.6), torch.float64, True)
        inputs = [x, *tensors.values()]
        fast = _gradients(lambda: exposure_fusion(x, **tensors), inputs)
        slow = reference(lambda: _gradients(lambda: exposure_fusion(x, **tensors), inputs))
        for a, b in zip(fast, slow):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)

    @pytest.mark.parametrize("levels", [1.0, 1.5, 3.0, -1.0])
    @pytest.mark.parametrize("wanted", ["stack", "parameters", "both"])
    def test_depths_and_partial_needs(self, small_bands, reference, levels, wanted):
        # the finest level's weights gradient is made band by band from each frame's h_1; one
        # level only (no h_1), a finest level that is part band and part residual, and gradients
        # for the stack alone or the parameters alone take the other branches of that path
        x = gradcheck_stack(2, 3, 3, 20, 14, seed=3).requires_grad_(wanted != "parameters")
        tensors = as_tensors(dict(contrast=0.8, saturation=1.2, exposure=1.1, mu=0.45, sigma=0.25),
                             torch.float64, requires_grad=wanted != "stack")
        inputs = [x, *tensors.values()]
        fast = _gradients(lambda: exposure_fusion(x, levels=levels, **tensors), inputs)
        slow = reference(lambda: _gradients(lambda: exposure_fusion(x, levels=levels, **tensors), inputs))
        for name, a, b in zip(["stack", *tensors], fast, slow):
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9, msg=name)

    def test_gradcheck_every_input(self):
        x = gradcheck_stack(1, 3, 3, 9, 11).requires_grad_()
        values = as_tensors(dict(contrast=2.0, saturation=2.0, exposure=1.3, mu=0.45, sigma=0.25, levels=2.4),
                            torch.float64, requires_grad=True)

        def fn(stack, *params):
            return exposure_fusion(stack, **dict(zip(values, params)))

        assert torch.autograd.gradcheck(fn, (x, *values.values()), fast_mode=True)

    def test_second_derivative_equals_torch_func(self):
        # a recorded backward through the kernels is the reference code's; torch.func transforms
        # run the reference code throughout
        x = smooth_stack(1, 3, 3, 6, 7)[0].requires_grad_()
        (grad,) = torch.autograd.grad(exposure_fusion(x).sum(), x, create_graph=True)
        grad.sum().backward()
        hessian_row = torch.func.grad(lambda s: torch.func.grad(lambda t: exposure_fusion(t).sum())(s).sum())(x.detach())
        torch.testing.assert_close(x.grad, hessian_row, atol=1e-10, rtol=1e-8)


class TestFuseFrames:
    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_uint8_equals_exposure_fusion(self, preset, dtype):
        frames = torch.randint(0, 256, (4, 3, 37, 53), dtype=torch.uint8, generator=torch.Generator().manual_seed(8))
        if preset == "opencv" and dtype == torch.float32:  # OpenCV's convertTo: times float32(1/255)
            stack = frames.to(dtype) * float(torch.tensor(1 / 255, dtype=torch.float32))
        else:  # MATLAB's im2double: divided by 255
            stack = frames.to(dtype) / 255
        for kwargs in ({}, dict(levels=2.5, contrast=0.5), dict(levels=torch.tensor(2.2, dtype=dtype))):
            # in float32 exposure_fusion takes the uint8 stack itself (the "mertens" preset then measures
            # the exact samples, as fuse_frames; OpenCV's the float32 ones: the converted stack's result)
            expected = exposure_fusion(frames if dtype == torch.float32 else stack, preset=preset, **kwargs)
            assert torch.equal(fuse_frames(list(frames), preset=preset, dtype=dtype, **kwargs), expected)
            if preset == "opencv":
                assert torch.equal(exposure_fusion(stack, preset=preset, **kwargs), expected)

    def test_sources_and_formats(self):
        g = torch.Generator().manual_seed(9)
        frames = torch.randint(0, 65536, (3, 3, 20, 24), generator=g).to(torch.uint16)
        expected = exposure_fusion(frames)
        assert torch.equal(fuse_frames(frames), expected)  # a tensor [N, ...]
        assert torch.equal(fuse_frames(lambda: iter(frames)), expected)  # a function returning an iterable
        assert torch.equal(fuse_frames(tuple(frames)), expected)
        floats = torch.rand(3, 3, 20, 24, generator=g, dtype=torch.float64)
        out = fuse_frames(list(floats))
        assert out.dtype == torch.float64 and torch.equal(out, exposure_fusion(floats))
        batched = torch.rand(3, 2, 1, 20, 24, generator=g)  # N frames of [B, C, H, W]
        torch.testing.assert_close(fuse_frames(list(batched)), exposure_fusion(batched.transpose(0, 1)), atol=0, rtol=0)

    def test_masks(self):
        g = torch.Generator().manual_seed(10)
        frames = torch.rand(4, 3, 16, 18, generator=g)
        masks = [torch.rand(1, 16, 18, generator=g) > 0.4 for _ in range(4)]
        expected = exposure_fusion(frames, mask=torch.stack(masks).float())
        assert torch.equal(fuse_frames(list(frames), masks=masks), expected)

    def test_single_frame(self):
        frame = torch.randint(0, 256, (3, 8, 9), dtype=torch.uint8)
        assert torch.equal(fuse_frames([frame]), frame.float() / 255)

    def test_gradients_fall_back_to_the_stack(self):
        frames = [torch.rand(3, 9, 11, dtype=torch.float64, requires_grad=True) for _ in range(3)]
        fuse_frames(frames).sum().backward()
        assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in frames)

    def test_frames_are_read_twice_not_thrice(self):
        calls = []

        def source():
            calls.append(1)
            return (torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))

        fuse_frames(source)
        assert len(calls) == 2

    @pytest.mark.parametrize(
        "frames, kwargs, error, match",
        [
            ([], {}, ValueError, "no frames"),
            (iter([torch.rand(3, 4, 4)]), {}, TypeError, "cannot be read twice"),
            ([torch.rand(3, 4, 4), "frame"], {}, TypeError, r"frames\[1\] must be a torch.Tensor"),
            ([torch.randint(0, 9, (3, 4, 4), dtype=torch.int32)], {}, TypeError, "uint8 or uint16"),
            ([torch.rand(4, 4)], {}, ValueError, r"\[C, H, W\] or \[B, C, H, W\]"),
            ([torch.rand(2, 4, 4)], {}, ValueError, "C = 1 \\(gray\\) or 3"),
            ([torch.rand(3, 4, 4), torch.rand(3, 4, 5)], {}, ValueError, "frames differ in size"),
            ([torch.rand(3, 4, 4)] * 2, dict(masks=[torch.ones(1, 4, 4)]), ValueError, "masks has 1 entries for more frames"),
            ([torch.rand(3, 4, 4)] * 2, dict(masks=[torch.ones(2, 4, 4)] * 2), ValueError, "does not broadcast"),
            ([torch.rand(3, 4, 4)] * 2, dict(dtype=torch.float16), ValueError, "float32 or torch.float64"),
            ([torch.rand(3, 4, 4)] * 2, dict(sigma=0.0), ValueError, "sigma must be > 0"),
            ([torch.rand(3, 4, 4)] * 2, dict(levels=0), ValueError, "levels must be >= 1"),
        ],
    )
    def test_exception(self, frames, kwargs, error, match):
        with pytest.raises(error, match=match):
            fuse_frames(frames, **kwargs)


class TestCompiledOperators:
    def test_opcheck(self, backend):
        samples = getattr(backends.get(backend), "operator_samples", list)()
        for op, args in samples:
            torch.library.opcheck(op, args)

    @pytest.mark.slow
    @pytest.mark.parametrize("traced", [False, True], ids=["backend", "reference"])
    def test_compiled_equals_eager(self, backend, traced):
        torch._dynamo.reset()
        with backends.use("reference" if traced else backend):
            self._compiled_equals_eager()

    @staticmethod
    def _compiled_equals_eager():
        x = torch.rand(2, 3, 3, 20, 24, generator=torch.Generator().manual_seed(11))
        w = torch.rand(2, 3, 1, 20, 24, generator=torch.Generator().manual_seed(12))
        fuse = torch.compile(exposure_fusion, fullgraph=True)
        mix = torch.compile(blend, fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(fuse(x, contrast=0.8, levels=2.5), exposure_fusion(x, contrast=0.8, levels=2.5),
                                       atol=1e-5, rtol=0)
            torch.testing.assert_close(mix(x, w, levels=3), blend(x, w, levels=3), atol=1e-5, rtol=0)
