"""efusion.align: known transforms recovered from warped static brackets, whatever the exposures."""
from __future__ import annotations

import pytest
import torch

import efusion
from efusion.align import MODELS, warp

from _align_cases import (
    bracket_folders,
    corner_rms,
    crop,
    exposure_bracket,
    homography,
    load_small,
    psnr,
    render,
    smooth_texture,
)
from conftest import requires_shared

WIDTH = 256
#: which models can represent each kind of warp
CAN_REPRESENT = {
    "shift": MODELS,
    "rotation": ("euclidean", "similarity", "homography"),
    "perspective": ("homography",),
}
FOLDERS = bracket_folders()
#: brackets where some model misses a known warp by more than 0.5 px at 256 px wide (worst corner
#: RMS measured at this commit: Seq_10 0.57, frobisher 0.51, House 1.34, Lamp 0.53, Set 0.80,
#: memorial 0.94, samsung16 0.93, seed_house 1.37 px, mostly the homography model on the brightest
#: or darkest frame; Seq_20 passes the 0.5 px check (0.497) but its fusion is at 34.8 dB). Most are
#: the brackets themselves, not the synthetic warp: aligning the unwarped middle frames gives the
#: same misses (memorial 0.98 px: film scans registered by hand, see its SOURCE.txt; Set 0.85: clouds
#: move 1 to 3 px in the top quarter (translations fitted to 64 px patches); samsung16 0.75: leaves in
#: the wind; House / seed_house 1.4: the dark frame is 72 % black and its unclipped part is the
#: window with trees; Seq_10 / Seq_20: 0.47 / 0.41 px with the translation model too); frobisher
#: and Lamp do not (0.22 and 0.10 px unwarped): those two are the estimator's.
#: Strict: a fix makes them pass. Left the list: seed_lighthouse when the refinement moved to
#: sampled pixels (0.50 -> 0.46 px); seed_taipei when a homography's extra parameters moved to the
#: finest level (0.60 -> 0.27 px); Ostrow when the upper clip bound moved to 0.95 (0.58 -> 0.43 px).
ALIGN_KNOWN_MISSES = {
    "Seq_10", "Seq_20", "frobisher", "House", "Lamp", "Set", "memorial", "samsung16", "seed_house",
}


def _bracket_params():
    return [
        pytest.param(f, id=f.name, marks=[pytest.mark.xfail(strict=True, reason="known > 0.5 px miss")] if f.name in ALIGN_KNOWN_MISSES else [])
        for f in FOLDERS
    ]


def middle_frames(folder, count=3, width=int(WIDTH * 1.5)):
    """``count`` consecutive frames from the middle of a bracket (a hand-held AEB of +-1 or 2 EV)."""
    source = load_small(folder, width, max_frames=10 ** 6)
    start = max(0, (source.shape[0] - count) // 2)
    return source[start : start + count]


def crop_size(source):
    h = round(source.shape[-2] / 1.5)
    return h, round(source.shape[-1] / 1.5)


def transforms(kind, n, size, reference, amount=1.0):
    """Per-frame homographies of one kind; shifts ~3 % of the width (32 px of a 1000 px frame)."""
    h, w = size
    centre = ((w - 1) / 2, (h - 1) / 2)
    out = []
    for i in range(n):
        k = i - reference
        if k == 0:
            out.append(torch.eye(3, dtype=torch.float64))
            continue
        sign = 1 if k > 0 else -1
        shift = (amount * 0.031 * w * sign, -amount * 0.02 * w * sign * (abs(k) % 2 * 2 - 1))
        if kind == "shift":
            out.append(homography(shift=shift, centre=centre))
        elif kind == "rotation":
            out.append(homography(shift=shift, angle_deg=1.7 * sign, centre=centre))
        else:
            out.append(homography(shift=shift, angle_deg=-1.2 * sign, perspective=(6e-5 * sign, -4e-5), centre=centre))
    return torch.stack(out)


def check_recovery(source, kind, reference, *, jpeg=90, models=None, tolerance=0.5, amount=1.0):
    """Warp a static bracket, align it with every model that can represent the warp; return the errors."""
    size = crop_size(source)
    truth = transforms(kind, source.shape[0], size, reference, amount)
    frames = render(source, truth, size, jpeg=jpeg)
    errors = {}
    for model in models or CAN_REPRESENT[kind]:
        result = efusion.align(frames, model=model, reference=reference)
        errors[model] = [corner_rms(result.homographies[i], truth[i], size) for i in range(source.shape[0])]
        assert max(errors[model]) < tolerance, f"{kind}/{model}: corner RMS {errors[model]} px"
    return frames, truth, result


class TestGenerated:
    """Cases that need no ../shared: smooth random texture, exposures 2 EV apart."""

    @pytest.mark.parametrize("kind", sorted(CAN_REPRESENT))
    def test_recovers_known_warp(self, kind):
        source = smooth_texture(3, 288, 384)
        check_recovery(source, kind, reference=1)

    def test_fusion_after_alignment(self):
        source = smooth_texture(3, 288, 384)
        *_, result = check_recovery(source, "perspective", reference=1, jpeg=None)
        static = crop(source, crop_size(source))
        region = (result.mask.prod(dim=0)[0] > 0.5)
        assert psnr(efusion.exposure_fusion(result.frames, mask=result.mask), efusion.exposure_fusion(static), region) >= 35

    def test_large_motion(self):
        # a tenth of the frame and 3 degrees between frames
        source = smooth_texture(2, 384, 480)
        size = (256, 320)
        truth = torch.stack([torch.eye(3, dtype=torch.float64), homography(shift=(-0.1 * 320, 0.06 * 256), angle_deg=3.0, centre=(159.5, 127.5))])
        frames = render(source, truth, size)
        for model in ("euclidean", "homography"):
            result = efusion.align(frames, model=model, reference=0)
            assert corner_rms(result.homographies[1], truth[1], size) < 0.5

    def test_exposures_4ev_apart(self):
        frame = smooth_texture(1, 288, 384)[0]
        source = exposure_bracket(frame, [-2.0, 2.0])
        assert (source[1] >= 1).float().mean() > 0.05, "the bright frame should be partly clipped"
        check_recovery(source, "perspective", reference=0)


def test_frames_larger_than_the_work_size():
    # more than _WORK_SIDE: the pyramid is built on area-averaged frames and the last pass reads
    # full-resolution pixels; a mask over part of the frames takes the same paths
    source = smooth_texture(3, 270, 1650)
    size = crop_size(source)
    assert max(size) > 1024
    truth = transforms("perspective", 3, size, reference=1)
    frames = render(source, truth, size)
    mask = torch.ones(3, 1, *size, dtype=torch.float64)
    mask[:, :, :, : size[1] // 5] = 0
    for m in (None, mask):
        result = efusion.align(frames, model="homography", reference=1, mask=m)
        errors = [corner_rms(result.homographies[i], truth[i], size) for i in range(3)]
        assert max(errors) < 0.5, f"corner RMS {errors} px (mask: {m is not None})"


def test_warp_matches_opencv_warp_perspective():
    # cv2.warpPerspective with WARP_INVERSE_MAP samples src(H x) bilinearly at pixel centres, as
    # efusion's warp does; a frame of more than 2^20 pixels (the warp works in bands of that many)
    cv2 = pytest.importorskip("cv2")
    h, w = 2200, 480
    frame = smooth_texture(1, h, w)[0].float()
    hom = homography(shift=(7.3, -4.6), angle_deg=1.5, perspective=(2e-5, -1e-5), centre=((w - 1) / 2, (h - 1) / 2))
    warped, mask = warp(frame.unsqueeze(0), hom.unsqueeze(0))
    expected = cv2.warpPerspective(
        frame.permute(1, 2, 0).numpy(), hom.numpy(), (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    # the region: where H x lands inside the frame, with a margin against ties at its edge
    ys, xs = torch.meshgrid(torch.arange(float(h), dtype=torch.float64), torch.arange(float(w), dtype=torch.float64), indexing="ij")
    q = torch.stack((xs, ys, torch.ones_like(xs)), dim=-1) @ hom.T
    px, py = q[..., 0] / q[..., 2], q[..., 1] / q[..., 2]
    def within(eps):
        return (px >= -eps) & (px <= w - 1 + eps) & (py >= -eps) & (py <= h - 1 + eps)

    inside, clear = within(0.0), within(-0.01) == within(0.01)
    assert torch.equal(mask[0, 0].bool()[clear], inside[clear]) and clear.float().mean() > 0.99
    # OpenCV interpolates with 5-bit fixed-point weights: 1/32 of a pixel step
    difference = (warped[0].permute(1, 2, 0) - torch.from_numpy(expected)).abs()[inside]
    assert difference.max() < 0.01 and 0.5 < inside.float().mean() < 1


@requires_shared()
@pytest.mark.slow
@pytest.mark.parametrize("folder", _bracket_params())
def test_real_bracket_known_warps(folder):
    source = middle_frames(folder)
    for kind in ("shift", "perspective"):
        frames, truth, result = check_recovery(source, kind, reference=1)
    # fusion of the aligned bracket against the fusion of the bracket warped by the true
    # transforms: what a perfect alignment gives with the same bilinear resampling
    ideal, ideal_mask = warp(frames, truth)
    region = (result.mask.prod(dim=0)[0] > 0.5) & (ideal_mask.prod(dim=0)[0] > 0.5)
    fused = efusion.exposure_fusion(result.frames, mask=result.mask)
    assert psnr(fused, efusion.exposure_fusion(ideal, mask=ideal_mask), region) >= 35


@requires_shared()
@pytest.mark.parametrize("name", ["seed_house", "mef_ma/Room"])
def test_real_exposures_4ev_apart_and_large_motion(name):
    folder = next(f for f in FOLDERS if f.as_posix().endswith(name))
    middle = middle_frames(folder, count=1)[0]
    source = exposure_bracket(middle, [-2.0, 2.0])
    check_recovery(source, "rotation", reference=0, models=["euclidean", "homography"])
    check_recovery(middle_frames(folder, count=2), "rotation", reference=0, models=["homography"], amount=3.3)


def test_gradcheck_through_warp():
    g = torch.Generator().manual_seed(0)
    stack = torch.rand(2, 1, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    hom = torch.stack([torch.eye(3, dtype=torch.float64), homography(shift=(0.3, -0.4), angle_deg=2.0, centre=(2.5, 2.0))])
    assert torch.autograd.gradcheck(lambda s: warp(s, hom)[0], (stack,))


def test_gradcheck_through_warp_to_the_homography():
    # a homography that needs gradients takes the differentiable grid; the values are the same.
    # No sample on a pixel centre or edge (bilinear interpolation has a kink there): not the identity
    g = torch.Generator().manual_seed(1)
    stack = torch.rand(2, 1, 5, 6, generator=g, dtype=torch.float64)
    hom = torch.stack([
        homography(shift=(0.17, 0.23), angle_deg=-1.0, centre=(2.5, 2.0)),
        homography(shift=(0.3, -0.4), angle_deg=2.0, perspective=(1e-3, 0), centre=(2.5, 2.0)),
    ])
    torch.testing.assert_close(warp(stack, hom.requires_grad_(True))[0], warp(stack, hom.detach())[0], rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda m: warp(stack, m)[0], (hom,))


def test_align_gradient_is_the_warp_gradient():
    # the transforms are estimated without gradients: the frames' gradient is the warp's at them
    source = smooth_texture(2, 72, 96).requires_grad_(True)
    result = efusion.align(source, model="similarity", reference=0)
    probe = torch.rand_like(result.frames)
    (grad,) = torch.autograd.grad((result.frames * probe).sum(), source)
    ref_out, _ = warp(source, result.homographies)
    ref_out = torch.cat([source[:1], ref_out[1:]])
    (expected,) = torch.autograd.grad((ref_out * probe).sum(), source)
    torch.testing.assert_close(grad, expected)


@requires_shared()
def test_finite_gradients_real_bracket():
    folder = next(f for f in FOLDERS if f.name == "seed_house")
    source = middle_frames(folder).float().requires_grad_(True)
    result = efusion.align(source)
    efusion.exposure_fusion(result.frames, mask=result.mask).mean().backward()
    assert torch.isfinite(source.grad).all() and source.grad.abs().sum() > 0


class TestContract:
    def test_shapes_and_identity_reference(self):
        stack = smooth_texture(3, 40, 56).float()
        result = efusion.align(stack, model="homography", reference=-1)
        assert result.frames.shape == stack.shape and result.mask.shape == (3, 1, 40, 56)
        assert result.homographies.shape == (3, 3, 3) and result.model == "homography"
        assert torch.equal(result.homographies[2], torch.eye(3))
        assert torch.equal(result.frames[2], stack[2])

    def test_batch_equals_one_by_one(self):
        a = smooth_texture(3, 48, 64, seed=1)
        b = smooth_texture(3, 48, 64, seed=2)
        shifted = torch.roll(b, shifts=(2, -3), dims=(-2, -1))
        b = torch.stack([b[0], shifted[1], b[2]])
        batched = efusion.align(torch.stack([a, b]), model="euclidean")
        for i, stack in enumerate((a, b)):
            single = efusion.align(stack, model="euclidean")
            torch.testing.assert_close(batched.homographies[i], single.homographies)
            torch.testing.assert_close(batched.frames[i], single.frames)
            torch.testing.assert_close(batched.mask[i], single.mask)

    def test_reference_none_is_median_brightness(self):
        stack = smooth_texture(3, 32, 48)[[2, 0, 1]]  # brightest, darkest, middle
        result = efusion.align(stack, model="translation")
        assert torch.equal(result.homographies[2], torch.eye(3, dtype=torch.float64))

    def test_mask_is_warped(self):
        stack = smooth_texture(2, 48, 64)
        mask = torch.ones(2, 1, 48, 64, dtype=torch.float64)
        mask[:, :, :, :8] = 0
        result = efusion.align(stack, model="translation", reference=0, mask=mask)
        assert (result.mask[:, :, :, :7] == 0).all()

    @pytest.mark.parametrize("model", ["affine", "Homography", ""])
    def test_bad_model(self, model):
        with pytest.raises(ValueError, match="model must be one of"):
            efusion.align(torch.rand(2, 3, 16, 16), model=model)

    @pytest.mark.parametrize("reference", [2, -3, 10])
    def test_bad_reference_index(self, reference):
        with pytest.raises(ValueError, match="reference must be a frame index"):
            efusion.align(torch.rand(2, 3, 16, 16), reference=reference)

    @pytest.mark.parametrize("reference", [1.0, True, "0"])
    def test_bad_reference_type(self, reference):
        with pytest.raises(TypeError, match="reference must be None or an int"):
            efusion.align(torch.rand(2, 3, 16, 16), reference=reference)

    def test_bad_stack(self):
        with pytest.raises(TypeError):
            efusion.align(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))

    def test_single_frame(self):
        stack = torch.rand(1, 3, 16, 16)
        result = efusion.align(stack)
        assert torch.equal(result.frames, stack) and torch.equal(result.homographies[0], torch.eye(3))

    def test_one_pixel_high_frames_are_refused(self):
        with pytest.raises(ValueError, match=r"at least 2 x 2 pixels .*got 1 x 50"):
            efusion.align(torch.rand(3, 3, 1, 50))


@pytest.mark.parametrize("height", [3, 8])
def test_thin_strip_shift_recovered(height):
    # a strip far longer than high (the coarse level cannot be chosen by the longer side alone):
    # frames cut from a smooth 1-D texture at known offsets, different exposures
    texture = torch.nn.functional.avg_pool1d(torch.rand(1, 3, 1400, generator=torch.Generator().manual_seed(0)), 9, 1)
    strip = texture.unsqueeze(2).expand(1, 3, height, texture.shape[-1])[0]
    offsets, gains = (20, 27, 13), (1.0, 0.6, 1.2)
    frames = torch.stack([(strip[..., x : x + 1200] * g).clamp(0, 1) for x, g in zip(offsets, gains)])
    result = efusion.align(frames, model="translation", reference=0)
    expected = torch.tensor([[0.0, 0.0], [offsets[0] - offsets[1], 0.0], [offsets[0] - offsets[2], 0.0]])
    assert torch.allclose(result.homographies[:, :2, 2], expected, atol=0.05)
    assert torch.isfinite(result.frames).all()


def test_threads_restored_after_the_single_threaded_estimation():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        frames = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(3))
        efusion.align(frames, model="translation")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
