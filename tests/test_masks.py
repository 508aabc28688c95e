"""A mask removes what it masks, exactly (issue 12, item 2): nothing under ``mask = 0`` reaches the
fused image or the gradient with respect to the unmasked pixels, NaN and inf included."""
from __future__ import annotations

import pytest
import torch
from conftest import scene
from hypothesis import given, settings
from hypothesis import strategies as st

from efusion import backends, exposure_fusion, fuse_frames, mertens_weights
from efusion.reference.masks import fill_masked

JUNK = st.sampled_from(["random", "nan", "inf", "ones", "huge"])


def with_junk(x: torch.Tensor, mask: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """``x`` with every pixel under ``mask == 0`` replaced by ``kind`` values."""
    values = {
        "random": torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype),
        "nan": torch.full_like(x, float("nan")),
        "inf": torch.full_like(x, float("inf")),
        "ones": torch.ones_like(x),
        "huge": torch.full_like(x, 1e30),
    }[kind]
    return torch.where(mask > 0, x, values)


@st.composite
def masked_brackets(draw):
    n = draw(st.integers(2, 4))
    h, w = draw(st.integers(3, 21)), draw(st.integers(3, 21))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = scene(n=n, h=h, w=w, seed=seed)
    mask = (torch.rand(n, 1, h, w, generator=g) > draw(st.sampled_from([0.1, 0.5, 0.9]))).double()
    if draw(st.booleans()):
        mask[0] = 0  # a padding frame, masked everywhere
    return x, mask, draw(st.sampled_from(["mertens", "opencv"])), draw(JUNK), seed


class TestMaskedValuesDoNotReachTheResult:
    @pytest.mark.parametrize("backend", ["cpu", "reference"])
    @settings(max_examples=20, deadline=None)
    @given(case=masked_brackets())
    def test_output_and_weights(self, backend, case):
        x, mask, preset, junk, seed = case
        other = with_junk(x, mask, junk, seed + 1)
        with backends.use(backend):
            out = exposure_fusion(x, mask=mask, preset=preset, contrast=1.5, exposure=1.0)
            assert torch.isfinite(out).all()
            assert torch.equal(exposure_fusion(other, mask=mask, preset=preset, contrast=1.5, exposure=1.0), out)
            assert torch.equal(mertens_weights(other, mask=mask, preset=preset), mertens_weights(x, mask=mask, preset=preset))

    @pytest.mark.parametrize("backend", ["cpu", "reference"])
    @settings(max_examples=10, deadline=None)
    @given(case=masked_brackets())
    def test_gradient_with_respect_to_unmasked_pixels(self, backend, case):
        x, mask, preset, junk, seed = case
        probe = torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=x.dtype)

        def gradient(stack):
            stack = stack.clone().requires_grad_()
            with backends.use(backend):
                (exposure_fusion(stack, mask=mask, preset=preset) * probe).sum().backward()
            return stack.grad

        clean, dirty = gradient(x), gradient(with_junk(x, mask, junk, seed + 1))
        assert torch.isfinite(dirty).all()
        assert torch.equal(clean, dirty)
        assert torch.all(dirty.masked_select((mask == 0).expand_as(x)) == 0)

    def test_fuse_frames_streams_the_same_invariant(self):
        x = scene(n=3, h=17, w=19, seed=4)
        mask = torch.ones(3, 1, 17, 19, dtype=torch.float64)
        mask[1, :, 3:12, 2:9] = 0
        expected = fuse_frames(list(x), masks=list(mask))
        assert torch.equal(fuse_frames(list(with_junk(x, mask, "nan", 0)), masks=list(mask)), expected)

    def test_issue_example_corner_of_frame_zero(self):
        # the issue's case: content under a 20 x 20 corner of frame 0 moved the output by up to 0.48
        x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        mask = torch.ones(3, 1, 64, 64, dtype=torch.float64)
        mask[0, :, :20, :20] = 0
        zeros, ones = x.clone(), x.clone()
        zeros[0, :, :20, :20], ones[0, :, :20, :20] = 0.0, 1.0
        assert torch.equal(exposure_fusion(zeros, mask=mask), exposure_fusion(ones, mask=mask))

    def test_nan_padding_frame(self):
        x = scene(n=3, h=16, w=20, seed=2)
        padded = torch.cat([torch.full_like(x[:1], float("nan")), x])
        mask = torch.ones(4, 1, 16, 20, dtype=torch.float64)
        mask[0] = 0
        with backends.use("reference"):
            torch.testing.assert_close(exposure_fusion(padded, mask=mask), exposure_fusion(x), atol=1e-14, rtol=0)


class TestMaskOfOnes:
    @pytest.mark.parametrize("backend", ["cpu", "reference"])
    @pytest.mark.parametrize("preset", ["mertens", "opencv"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_bit_identical_to_no_mask(self, backend, preset, dtype):
        x = scene(n=4, h=23, w=18, seed=5, dtype=dtype)
        ones = torch.ones(4, 1, 23, 18, dtype=dtype)
        with backends.use(backend):
            assert torch.equal(exposure_fusion(x, mask=ones, preset=preset), exposure_fusion(x, preset=preset))
            assert torch.equal(mertens_weights(x, mask=ones, preset=preset), mertens_weights(x, preset=preset))


class TestFillMasked:
    def test_unmasked_pixels_keep_their_bits(self):
        x = scene(n=2, h=13, w=11, seed=1)
        mask = torch.rand(2, 1, 13, 11, generator=torch.Generator().manual_seed(1)) > 0.5
        filled = fill_masked(x, mask)
        assert torch.equal(filled[mask.expand_as(x)], x[mask.expand_as(x)])

    def test_fills_a_constant_with_the_constant(self):
        x = torch.full((1, 3, 9, 14), 0.3, dtype=torch.float64)
        mask = torch.zeros(1, 1, 9, 14, dtype=torch.float64)
        mask[..., 2, 3] = 1  # a single unmasked pixel
        torch.testing.assert_close(fill_masked(with_junk(x, mask, "inf", 0), mask), x, atol=1e-15, rtol=0)

    def test_stays_between_the_unmasked_values(self):
        x = torch.rand(2, 3, 15, 15, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        mask = torch.zeros(2, 1, 15, 15, dtype=torch.float64)
        mask[..., ::4, ::3] = 1
        filled = fill_masked(with_junk(x, mask, "nan", 0), mask)
        kept = x[..., ::4, ::3]
        assert filled.min() >= kept.min() - 1e-15 and filled.max() <= kept.max() + 1e-15

    def test_a_frame_without_unmasked_pixels_becomes_zero(self):
        x = torch.full((2, 1, 4, 5), float("nan"), dtype=torch.float64)
        assert torch.equal(fill_masked(x, torch.zeros(2, 1, 4, 5)), torch.zeros_like(x))
