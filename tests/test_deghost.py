"""efusion.deghost: a moving object is kept once, at the reference frame's place."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import efusion

from _align_cases import bracket_folders, load_small, psnr, smooth_texture
from conftest import requires_shared

FOLDERS = bracket_folders()
#: brackets where deghosting falls more than 3 dB short of the exact object mask, or gains less
#: than 1 dB over no mask (measured at this commit; with / without / exact mask, dB):
#: MadisonCapitol 22.2 / 21.6 / 22.7: the exact mask itself gains only 1.1 dB, so the test needs a
#: nearly exact detection, and the brightest frame's object is 89 % clipped over a nearly clipped
#: background (a clipped value only bounds the scene, so part of it agrees with the reference).
#: Strict: a fix makes it pass.
#: Issue 14 (s20): the nine others left the set when the mapping became a conditional median over
#: every pixel the frame exposes well (a moving object had outvoted the few pixels left where the
#: reference is clipped) and the comparison moved to the exposure that resolves the scene better
#: (before -> after, dB; exact mask): Farmhouse 20.0 -> 22.8 (23.9), House 20.7 -> 34.5 (34.5),
#: Mask 21.3 -> 28.2 (28.7), Set 23.9 -> 24.6 (27.1), Studio 13.5 -> 26.4 (27.3), memorial 14.3 ->
#: 18.4 (19.7), seed_house 24.2 -> 34.8 (34.9), seed_mask 21.4 -> 28.4 (28.9), seed_taipei 20.7 ->
#: 22.4 (24.0).
DEGHOST_KNOWN_MISSES = {"MadisonCapitol"}


def _bracket_params():
    return [
        pytest.param(f, id=f.name, marks=[pytest.mark.xfail(strict=True, reason="known miss")] if f.name in DEGHOST_KNOWN_MISSES else [])
        for f in FOLDERS
    ]
REFERENCE = 1
SIDE = 40


def paste(frames, patch, places):
    out = frames.clone()
    for i, (y, x) in enumerate(places):
        out[i, :, y : y + SIDE, x : x + SIDE] = patch[i]
    return out


def moving_object_case(source):
    """A static bracket with an object (a piece of the same frames, so it is exposed as the scene
    is) pasted at a different place in each frame; and the same bracket with the object at the
    reference frame's place in every frame."""
    n, _, h, w = source.shape
    patch = source[:, :, 4 : 4 + SIDE, 4 : 4 + SIDE].flip(-1).flip(-2)
    places = [(h // 2 - SIDE // 2, 30 + i * 70) for i in range(n)]
    moving = paste(source, patch, places)
    static = paste(source, patch, [places[REFERENCE]] * n)
    others = torch.zeros(1, h, w, dtype=torch.bool)
    oracle = torch.ones(n, 1, h, w, dtype=source.dtype)
    ry, rx = places[REFERENCE]
    for i, (y, x) in enumerate(places):
        if i != REFERENCE:
            others[:, y : y + SIDE, x : x + SIDE] = True
            oracle[i, :, y : y + SIDE, x : x + SIDE] = 0
            oracle[i, :, ry : ry + SIDE, rx : rx + SIDE] = 0
    return moving, static, others, oracle


def check_deghost(source, margin=3.0):
    moving, static, others, oracle = moving_object_case(source)
    weights = efusion.deghost(moving, reference=REFERENCE)
    target = efusion.exposure_fusion(static)
    with_deghost = psnr(efusion.exposure_fusion(moving, mask=weights), target, others)
    without = psnr(efusion.exposure_fusion(moving), target, others)
    # the best any mask can do: the object's rectangles removed exactly (fewer exposures remain
    # there, so even this is not the static fusion)
    best = psnr(efusion.exposure_fusion(moving, mask=oracle), target, others)
    return with_deghost, without, best


def test_generated_moving_object():
    source = smooth_texture(3, 160, 256)
    with_deghost, without, best = check_deghost(source)
    assert with_deghost >= best - 3.0 and with_deghost >= without + 2.0, (with_deghost, without, best)


def test_generated_object_where_the_reference_clips():
    # a bright sky the reference clips: the object (a piece of that sky) is exposed well in the
    # darkest frame, at values whose other pixels the reference shows clipped; a mapping fitted only
    # where both frames expose well is then the object's own and lets it through (17.7 dB, worse
    # than no deghosting, before issue 14's conditional median over every pixel the frame exposes)
    texture = smooth_texture(3, 160, 256)
    radiance = texture[1:2] ** 2.2
    radiance[..., : 160 // 3, :] *= 3.0
    source = torch.cat([(radiance * 2.0 ** ev).clamp(0, 1) ** (1 / 2.2) for ev in (-2.0, 0.0, 2.0)])
    source = (source * 255).round() / 255  # 8-bit frames
    assert (source[REFERENCE] >= 0.98).double().mean() > 0.1  # the reference clips part of the sky
    with_deghost, without, best = check_deghost(source)
    assert with_deghost >= best - 3.0 and with_deghost >= without + 2.0, (with_deghost, without, best)


@requires_shared()
@pytest.mark.slow
@pytest.mark.parametrize("folder", _bracket_params())
def test_real_moving_object(folder):
    source = load_small(folder, 256)
    with_deghost, without, best = check_deghost(source)
    # ghosts are removed as well as the exact object mask would (within 3 dB), and clearly better than nothing
    assert with_deghost >= best - 3.0, (with_deghost, without, best)
    assert with_deghost >= without + 1.0, (with_deghost, without, best)


@requires_shared()
@pytest.mark.parametrize("name", ["seed_house", "Room"])
def test_static_bracket_keeps_nearly_everything(name):
    folder = next(f for f in FOLDERS if f.name == name)
    weights = efusion.deghost(load_small(folder, 256), reference=REFERENCE)
    # false detections on a static bracket (exposure differences a global mapping does not explain)
    assert weights.mean() > 0.85


class TestContract:
    def test_range_shape_and_reference(self):
        stack = smooth_texture(3, 48, 64).float()
        weights = efusion.deghost(stack, reference=0)
        assert weights.shape == (3, 1, 48, 64) and weights.dtype == stack.dtype
        assert (weights >= 0).all() and (weights <= 1).all() and (weights[0] == 1).all()

    def test_identical_exposure_matched_frames_agree(self):
        stack = smooth_texture(3, 48, 64)
        assert (efusion.deghost(stack) > 0.99).all()

    def test_batch_equals_one_by_one(self):
        a, b = smooth_texture(3, 40, 48, seed=1), smooth_texture(3, 40, 48, seed=2)
        b[0, :, 10:20, 10:20] = 1 - b[0, :, 10:20, 10:20]
        batched = efusion.deghost(torch.stack([a, b]))
        torch.testing.assert_close(batched[0], efusion.deghost(a))
        torch.testing.assert_close(batched[1], efusion.deghost(b))

    def test_mask(self):
        stack = smooth_texture(2, 40, 48)
        stack[1, :, 5:15, 5:15] = 1 - stack[1, :, 5:15, 5:15]
        mask = torch.ones(2, 1, 40, 48, dtype=torch.float64)
        assert efusion.deghost(stack, reference=0)[1, 0, 10, 10] < 0.5
        mask[1, :, :20, :20] = 0
        assert (efusion.deghost(stack, reference=0, mask=mask)[1, 0, 5:15, 5:15] == 1).all()

    @settings(max_examples=10, deadline=None)
    @given(order=st.permutations(range(4)), reference=st.integers(0, 3), seed=st.integers(0, 3))
    def test_frame_order_does_not_matter(self, order, reference, seed):
        # each frame is judged against the reference alone: reordering the bracket reorders the weights
        stack = smooth_texture(4, 24, 32, seed=seed)
        stack[(reference + 1) % 4, :, 4:12, 6:14] = 1 - stack[(reference + 1) % 4, :, 4:12, 6:14]
        weights = efusion.deghost(stack, reference=reference)
        order_t = torch.tensor(order)
        reordered = efusion.deghost(stack[order_t], reference=order.index(reference))
        torch.testing.assert_close(reordered, weights[order_t])

    @pytest.mark.parametrize("band_elements", [1, 5000])
    def test_bands_give_the_whole_frame_bits(self, monkeypatch, band_elements):
        # the per-pixel work runs over bands of rows with a margin (memory flat in the frame size):
        # bands of _HALO rows (the smallest) or a few dozen give the bits of the frame in one band
        import sys

        module = sys.modules["efusion.deghost"]
        moving, *_ = moving_object_case(smooth_texture(3, 150, 220))
        moving[2] = (moving[2] * 1.8).clamp(0, 1)  # a clipped frame: both scales and the intervals at work
        # small moved blocks everywhere: detections whose edges fall on every row (a band whose margin
        # were too small would change the weights next to them)
        spots = torch.rand(25, 37, generator=torch.Generator().manual_seed(5)) < 0.15
        spots = spots.repeat_interleave(6, 0).repeat_interleave(6, 1)[:150, :220]
        moving[0] = torch.where(spots, 1 - moving[0], moving[0])
        mask = torch.ones(3, 1, 150, 220, dtype=moving.dtype)
        mask[0, :, 100:, :30] = 0
        whole = efusion.deghost(moving, reference=REFERENCE, mask=mask)
        monkeypatch.setattr(module, "_BAND_ELEMENTS", band_elements)
        banded = efusion.deghost(moving, reference=REFERENCE, mask=mask)
        assert torch.equal(banded, whole)
        assert (whole[0] < 0.5).any() and (whole[0] > 0.99).any()  # it found the object and kept the rest

    @pytest.mark.parametrize("reference", [3, -4])
    def test_bad_reference(self, reference):
        with pytest.raises(ValueError, match="reference must be a frame index"):
            efusion.deghost(torch.rand(3, 3, 16, 16), reference=reference)

    def test_bad_stack(self):
        with pytest.raises(ValueError):
            efusion.deghost(torch.rand(3, 4, 16, 16))
