"""Tests for efusion.metrics.mef_ssim: MEF-SSIM against the authors' MATLAB scores, a per-patch oracle and properties."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from efusion.metrics import RGB_TO_GRAY_WEIGHTS, MEFSSIMLoss, mef_ssim

from conftest import REFERENCE, TOLERANCES, burst_dir, burst_frames, load_burst_uint8, requires_shared

TABLE = REFERENCE / "mef_ssim.tsv"
#: the table stores 6 decimals (rounding error <= 5e-7); 1e-4 leaves room for JPEG decoders
#: that differ from the reference's by a gray level here and there. Achieved: <= 5e-7 on all rows.
TABLE_ATOL = 1e-4
FAST_BURSTS = ["frobisher", "mef_ma_Room", "mef_ma_Set"]


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    """Run this module single-threaded on CPU, then restore the setting.

    The metric issues many memory-bound elementwise ops; on a shared 2-core machine with other
    jobs running, two OpenMP threads made the table test 30x slower than one (spin-waiting for
    a descheduled thread). Results do not depend on the thread count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _random_burst(batch=None, frames=3, channels=1, height=24, width=24, seed=0, dtype=torch.float64, device="cpu"):
    """Bracket-like frames: one scene at several exposures, clipped to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    scene = torch.rand(*lead, 1, channels, height, width, generator=gen, dtype=torch.float64)
    gains = torch.tensor([0.4, 1.0, 2.5, 5.0, 0.2][:frames] + [1.5] * max(0, frames - 5), dtype=torch.float64)
    stack = (scene * gains.view(-1, 1, 1, 1) + 0.05 * torch.rand(*lead, frames, channels, height, width, generator=gen,
                                                                  dtype=torch.float64)).clamp(0, 1)
    fused = (stack.mean(dim=-4) + 0.05 * torch.randn(*lead, channels, height, width, generator=gen,
                                                       dtype=torch.float64)).clamp(0, 1)
    return fused.to(device, dtype), stack.to(device, dtype)


# ----------------------------------------------------------------------------------------------
# Oracle: the index patch by patch, straight from the definition (Ma, Zeng, Wang 2015, with the
# reference code's constants), for small images only.
# ----------------------------------------------------------------------------------------------
_EPS = 2.0**-52


def _oracle_single(fused, stack, k=0.03, window=11, sigma=1.5):
    center = (window - 1) / 2
    yy, xx = np.mgrid[:window, :window] - center
    gauss = np.exp(-(xx * xx + yy * yy) / (2 * sigma * sigma))
    gauss = (gauss / gauss.sum()).ravel()
    frames = stack.shape[0]
    out_h, out_w = fused.shape[0] - window + 1, fused.shape[1] - window + 1
    c = (k * 255) ** 2
    scores = np.empty((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            patches = stack[:, i : i + window, j : j + window].reshape(frames, -1)
            centred = patches - patches.mean(axis=1, keepdims=True)
            lengths = np.sqrt((centred**2).sum(axis=1))
            strength = lengths + 1e-3
            ratio = (np.sqrt((centred.sum(axis=0) ** 2).sum()) + _EPS) / (lengths.sum() + _EPS)
            ratio = min(ratio, 1 - _EPS)
            power = min(math.tan(math.pi / 2 * ratio), 10.0)
            weights = (strength / window) ** power + _EPS
            weights = weights / weights.sum()
            structure = (weights / strength) @ centred
            norm = np.sqrt((structure**2).sum())
            desired = structure / norm * strength.max() if norm > 0 else structure
            target = fused[i : i + window, j : j + window].ravel()
            mean_d, mean_t = (gauss * desired).sum(), (gauss * target).sum()
            var_d = (gauss * (desired - mean_d) ** 2).sum()
            var_t = (gauss * (target - mean_t) ** 2).sum()
            cov = (gauss * (desired - mean_d) * (target - mean_t)).sum()
            scores[i, j] = (2 * cov + c) / (var_d + var_t + c)
    return scores.mean()


def _oracle_halve(image):
    padded = np.pad(image, ((0, 1), (0, 1)), mode="symmetric")
    averaged = (padded[:-1, :-1] + padded[1:, :-1] + padded[:-1, 1:] + padded[1:, 1:]) / 4
    return averaged[::2, ::2]


def _oracle(fused, stack, scales=3, weights=(0.0448, 0.2856, 0.3001)):
    weights = np.asarray(weights[:scales]) / np.sum(weights[:scales])
    per_scale = []
    for level in range(scales):
        if level:
            fused = _oracle_halve(fused)
            stack = np.stack([_oracle_halve(frame) for frame in stack])
        per_scale.append(_oracle_single(fused, stack))
    return float(np.prod(np.asarray(per_scale) ** weights)), per_scale


# ----------------------------------------------------------------------------------------------
# Reference table (authors' MATLAB code under Octave; see ../shared/reference/MEF_SSIM_README.md)
# ----------------------------------------------------------------------------------------------
def _table_rows():
    with open(TABLE, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _luma(rgb):
    """MATLAB rgb2gray weights on double values, ``[..., 3]`` -> ``[...]``."""
    return rgb @ np.asarray(RGB_TO_GRAY_WEIGHTS)


def _reference_scores(burst, rows):
    """(ms, ss, ref_ms, ref_ss, label) per row of one burst, built as MEF_SSIM_README.md says."""
    folder = burst_dir(burst)
    frames = load_burst_uint8(folder)
    # rgb2gray on uint8 rounds half away from zero; sums here are never exact halves
    gray = np.floor(_luma(frames.astype(np.float64)) + 0.5)
    stack = torch.from_numpy(gray)[None, :, None]  # [1, N, 1, H, W], integers 0..255
    names = [path.name for path in burst_frames(folder)]
    fused_images = []
    for row in rows:
        kind = row["fused"]
        if kind == "mertens":
            mertens = np.load(REFERENCE / "mertens" / f"{burst}.npy").astype(np.float64)
            fused = _luma(np.clip(mertens, 0.0, 1.0) * 255.0)
        elif kind == "mean":
            fused = _luma(frames.astype(np.float64).mean(axis=0))
        elif kind.startswith("frame:"):
            fused = gray[names.index(kind[len("frame:"):])]
        else:
            raise AssertionError(f"unknown fused kind {kind!r} in {TABLE}")
        fused_images.append(torch.from_numpy(np.ascontiguousarray(fused)))
    # all fused images of the burst in one batch against the shared stack (computed once)
    score, per_scale = mef_ssim(torch.stack(fused_images).unsqueeze(1), stack, data_range=255.0, return_per_scale=True)
    return [
        (score[i].item(), per_scale[i, 0].item(), float(row["ms_score"]), float(row["ss_score"]),
         f"{burst}/{row['fused']}")
        for i, row in enumerate(rows)
    ]


def _check_against_table(bursts=None):
    rows = _table_rows()
    by_burst: dict[str, list[dict]] = {}
    for row in rows:
        by_burst.setdefault(row["burst"], []).append(row)
    selected = by_burst if bursts is None else {name: by_burst[name] for name in bursts}
    results = [result for name, group in selected.items() for result in _reference_scores(name, group)]
    ms_error = max(abs(ms - ref_ms) for ms, _, ref_ms, _, _ in results)
    ss_error = max(abs(ss - ref_ss) for _, ss, _, ref_ss, _ in results)
    bad = [r for r in results if abs(r[0] - r[2]) > TABLE_ATOL or abs(r[1] - r[3]) > TABLE_ATOL]
    assert not bad, "rows off the reference (ms, ss, ref ms, ref ss, row):\n" + "\n".join(map(str, bad))
    return len(results), ms_error, ss_error


@requires_shared(TABLE)
@pytest.mark.parametrize("burst", FAST_BURSTS)
def test_reference_table_subset(burst):
    count, ms_error, ss_error = _check_against_table([burst])
    assert count == 3
    assert ms_error <= TABLE_ATOL and ss_error <= TABLE_ATOL


@requires_shared(TABLE)
@pytest.mark.slow
def test_reference_table_all_rows():
    count, ms_error, ss_error = _check_against_table()
    assert count == len(_table_rows()) == 60
    print(f"MEF-SSIM vs reference table: {count} rows, max |ms| error {ms_error:.2e}, max |ss| error {ss_error:.2e}")


# ----------------------------------------------------------------------------------------------
class TestMEFSSIM:
    def test_smoke(self, device, dtype):
        fused, stack = _random_burst(batch=2, frames=3, channels=3, height=48, width=50, device=device, dtype=dtype)
        score = mef_ssim(fused, stack)
        assert score.shape == (2,)
        assert score.dtype == dtype and score.device.type == device.type
        assert torch.isfinite(score).all()
        assert ((score > 0) & (score < 1)).all()

    @pytest.mark.parametrize(
        "batch, frames, channels, height, width, scales",
        [
            (None, 2, 1, 11, 11, 1),
            (None, 3, 3, 44, 47, 3),
            (1, 4, 1, 22, 30, 2),
            (3, 2, 3, 45, 44, 3),
            (0, 2, 1, 44, 44, 3),
        ],
    )
    def test_cardinality(self, batch, frames, channels, height, width, scales):
        fused, stack = _random_burst(batch=batch or 1, frames=frames, channels=channels, height=height, width=width)
        if batch is None:
            fused, stack = fused[0], stack[0]
        elif batch == 0:
            fused, stack = fused[:0], stack[:0]
        expected = () if batch is None else (batch,)
        score, per_scale = mef_ssim(fused, stack, scales=scales, return_per_scale=True)
        assert score.shape == expected
        assert per_scale.shape == expected + (scales,)
        assert mef_ssim(fused, stack, scales=scales, gray=False).shape == expected

    @pytest.mark.parametrize(
        "make, kwargs, error, match",
        [
            (lambda f, s: (f.numpy(), s), {}, TypeError, "fused must be a torch.Tensor"),
            (lambda f, s: (f, s.tolist()), {}, TypeError, "stack must be a torch.Tensor"),
            (lambda f, s: ((f * 255).to(torch.uint8), s), {}, TypeError,
             "fused must be a floating-point tensor.*uint8"),
            (lambda f, s: (f, s.to(torch.int64)), {}, TypeError, "stack must be a floating-point tensor.*int64"),
            (lambda f, s: (f.float(), s), {}, TypeError, "share a dtype.*float32.*float64"),
            (lambda f, s: (f[0, 0], s[0, 0]), {}, ValueError, r"stack must be \[B, N, C, H, W\] or \[N, C, H, W\]"),
            (lambda f, s: (f, s[0]), {}, ValueError, r"fused must be \[C, H, W\] for a stack of shape"),
            (lambda f, s: (f[0], s), {}, ValueError, r"fused must be \[B, C, H, W\]"),
            (lambda f, s: (f, s[:, :1]), {}, ValueError, "at least 2 frames.*N = 1"),
            (lambda f, s: (f[..., :-1, :], s), {}, ValueError,
             r"does not match.*expected fused of shape \(2, 1, 44, 46\)"),
            (lambda f, s: (f[:1], s), {}, ValueError,
             "does not match stack shape.*or any batch size for a stack of batch 1"),
            (lambda f, s: (f[0, :, :-1], s[0]), {}, ValueError,
             r"does not match.*expected fused of shape \(1, 44, 46\)$"),
            (lambda f, s: (f.expand(-1, 2, -1, -1), s.expand(-1, -1, 2, -1, -1)), {}, ValueError,
             "gray=True needs C = 1"),
            (lambda f, s: (f[..., :43, :], s[..., :43, :]), {}, ValueError, r"43 x 46 are too small.*at least 44"),
            (lambda f, s: (f[..., :21], s[..., :21]), {"scales": 2}, ValueError, "at least 22"),
            (lambda f, s: (f, s), {"scales": 0}, ValueError, "scales must be an int >= 1, got 0"),
            (lambda f, s: (f, s), {"scales": 6}, ValueError, "needs explicit scale_weights"),
            (lambda f, s: (f, s), {"scale_weights": (1.0, 2.0)}, ValueError, r"one entry per scale \(3\), got 2"),
            (lambda f, s: (f, s), {"scale_weights": (1.0, -1.0, 1.0)}, ValueError, "finite, >= 0"),
            (lambda f, s: (f, s), {"window_size": 10}, ValueError, "window_size must be an odd int"),
            (lambda f, s: (f, s), {"window_sigma": 0.0}, ValueError, "window_sigma must be"),
            (lambda f, s: (f, s), {"k": 0}, ValueError, "k must be a finite number > 0"),
            (lambda f, s: (f, s), {"data_range": -1.0}, ValueError, "data_range must be"),
        ],
    )
    def test_exception(self, make, kwargs, error, match):
        fused, stack = _random_burst(batch=2, frames=3, channels=1, height=44, width=46)
        fused, stack = make(fused, stack)
        with pytest.raises(error, match=match):
            mef_ssim(fused, stack, **kwargs)

    def test_gradcheck_single_scale(self):
        fused, stack = _random_burst(frames=2, height=24, width=24)
        fused.requires_grad_()
        assert torch.autograd.gradcheck(lambda f: mef_ssim(f, stack, scales=1), (fused,))

    def test_gradcheck_multi_scale_minimum_size(self):
        # fast mode (random directions): the full Jacobian would need ~1000 multi-scale forwards
        fused, stack = _random_burst(frames=2, height=22, width=23)
        fused.requires_grad_()
        assert torch.autograd.gradcheck(lambda f: mef_ssim(f, stack, scales=2), (fused,), fast_mode=True)
        fused, stack = _random_burst(frames=2, channels=3, height=44, width=44, seed=1)
        fused.requires_grad_()
        assert torch.autograd.gradcheck(lambda f: mef_ssim(f, stack), (fused,), fast_mode=True)

    def test_gradcheck_stack(self):
        fused, stack = _random_burst(frames=3, height=14, width=15)
        stack.requires_grad_()
        assert torch.autograd.gradcheck(lambda s: mef_ssim(fused, s, scales=1), (stack,), fast_mode=True)

    @pytest.mark.parametrize("case", ["constant", "zeros", "identical", "flat_block"])
    @pytest.mark.parametrize("scales", [1, 2])
    def test_finite_gradients(self, case, scales):
        fused, stack = _random_burst(frames=3, height=24, width=24)
        if case == "constant":
            stack, fused = torch.full_like(stack, 0.5), torch.full_like(fused, 0.5)
        elif case == "zeros":
            stack, fused = torch.zeros_like(stack), torch.zeros_like(fused)
        elif case == "identical":
            stack = stack[:1].expand_as(stack).clone()
            fused = stack[0].clone()
        else:
            stack[..., :12, :12] = 0.25
            fused[..., :12, :12] = 0.25
        fused.requires_grad_()
        stack.requires_grad_()
        score = mef_ssim(fused, stack, scales=scales)
        grad_fused, grad_stack = torch.autograd.grad(score, (fused, stack))
        assert torch.isfinite(score)
        assert torch.isfinite(grad_fused).all() and torch.isfinite(grad_stack).all()

    def test_module(self):
        fused, stack = _random_burst(batch=3, frames=3, height=44, width=44)
        score = mef_ssim(fused, stack)
        torch.testing.assert_close(MEFSSIMLoss()(fused, stack), (1 - score).mean())
        torch.testing.assert_close(MEFSSIMLoss(reduction="sum")(fused, stack), (1 - score).sum())
        torch.testing.assert_close(MEFSSIMLoss(reduction="none")(fused, stack), 1 - score)
        single = mef_ssim(fused, stack, scales=1, k=0.05)
        torch.testing.assert_close(MEFSSIMLoss(scales=1, k=0.05, reduction="none")(fused, stack), 1 - single)
        fused.requires_grad_()
        MEFSSIMLoss()(fused, stack).backward()
        assert fused.grad is not None and torch.isfinite(fused.grad).all()

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"reduction": "max"}, "reduction must be one of"),
            ({"scales": 2, "scale_weights": (1.0,)}, "one entry per scale"),
            ({"window_size": 0}, "window_size must be an odd int"),
            ({"k": -0.1}, "k must be"),
            ({"data_range": 0}, "data_range must be"),
        ],
    )
    def test_module_exception(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            MEFSSIMLoss(**kwargs)

    # ------------------------------------------------------------------ agreement and properties
    @pytest.mark.parametrize("scales, height, width", [(1, 23, 20), (3, 45, 47)])
    def test_matches_per_patch_oracle(self, scales, height, width):
        gen = np.random.default_rng(scales)
        scene = gen.uniform(0, 1, (height, width))
        stack = np.stack([np.clip(np.round(255 * (scene * gain + 0.1 * gen.uniform(size=scene.shape))), 0, 255)
                          for gain in (0.4, 1.0, 2.5)])
        stack[:, :14, :14] = 77.0  # flat in every frame
        stack[2, 12:, 10:] = 255.0  # saturated in one frame
        fused = np.clip(stack.mean(axis=0) + gen.normal(0, 5, scene.shape), 0, 255)
        fused[:12, :12] = 30.0
        expected, expected_per_scale = _oracle(fused, stack, scales=scales)
        score, per_scale = mef_ssim(torch.from_numpy(fused)[None], torch.from_numpy(stack)[:, None],
                                    scales=scales, data_range=255, return_per_scale=True)
        assert score.item() == pytest.approx(expected, abs=1e-10)
        np.testing.assert_allclose(per_scale.numpy(), expected_per_scale, atol=1e-10)

    def test_identical_frames_score_one(self):
        _, stack = _random_burst(frames=1, channels=3, height=48, width=48)
        stack = stack.expand(4, -1, -1, -1)
        assert mef_ssim(stack[2], stack).item() == pytest.approx(1.0, abs=1e-6)
        flat = torch.full_like(stack, 0.3)
        assert mef_ssim(flat[0], flat).item() == pytest.approx(1.0, abs=1e-6)

    @settings(max_examples=20, deadline=None)
    @given(
        seed=st.integers(0, 2**31 - 1),
        frames=st.integers(2, 4),
        pattern=st.sampled_from(["uniform", "binary", "constant", "inverted"]),
        scales=st.sampled_from([1, 2]),
    )
    def test_score_in_range(self, seed, frames, pattern, scales):
        gen = torch.Generator().manual_seed(seed)
        size = 11 * 2 ** (scales - 1) + 3
        stack = torch.rand(frames, 1, size, size, generator=gen, dtype=torch.float64)
        fused = torch.rand(1, size, size, generator=gen, dtype=torch.float64)
        if pattern == "binary":
            stack, fused = (stack > 0.5).double(), (fused > 0.5).double()
        elif pattern == "constant":
            fused = torch.full_like(fused, 0.7)
        elif pattern == "inverted":
            fused = 1 - stack[0]
        score, per_scale = mef_ssim(fused, stack, scales=scales, return_per_scale=True)
        assert torch.isfinite(score)
        assert -1 - 1e-12 <= score.item() <= 1 + 1e-12
        assert ((per_scale >= -1 - 1e-12) & (per_scale <= 1 + 1e-12)).all()

    def test_inverted_structure_scores_negative(self):
        _, stack = _random_burst(frames=3, height=30, width=30)
        single = mef_ssim(1 - stack[1], stack, scales=1)
        assert -1 <= single < 0
        # a negative scale enters the multi-scale product as 0 (MATLAB's power would turn complex)
        score, per_scale = mef_ssim(1 - stack[1], stack, scales=2, return_per_scale=True)
        assert per_scale[0] == single and (per_scale < 0).any()
        assert score == 0

    def test_degraded_copies_score_lower(self):
        fused, stack = _random_burst(frames=3, channels=3, height=64, width=64, seed=3)
        self._assert_degradation_lowers(fused, stack)

    @requires_shared(REFERENCE / "mertens" / "seed_house.npy")
    def test_degraded_copies_score_lower_real(self):
        frames = torch.from_numpy(load_burst_uint8(burst_dir("seed_house"))).permute(0, 3, 1, 2) / 255.0
        mertens = torch.from_numpy(np.load(REFERENCE / "mertens" / "seed_house.npy")).permute(2, 0, 1)
        crop = (..., slice(200, 328), slice(300, 428))
        self._assert_degradation_lowers(mertens.double().clamp(0, 1)[crop], frames.double()[crop])

    @staticmethod
    def _assert_degradation_lowers(fused, stack):
        gen = torch.Generator().manual_seed(0)
        blurred = F.avg_pool2d(fused[None], 5, stride=1, padding=2, count_include_pad=False)[0]
        noisy = (fused + 0.05 * torch.randn(fused.shape, generator=gen, dtype=fused.dtype)).clamp(0, 1)
        for scales in (1, 3):
            good = mef_ssim(fused, stack, scales=scales)
            assert mef_ssim(blurred, stack, scales=scales) < good - 0.01
            assert mef_ssim(noisy, stack, scales=scales) < good - 0.01

    def test_batch_equals_one_by_one(self):
        fused, stack = _random_burst(batch=3, frames=3, channels=3, height=45, width=44)
        batched, batched_per_scale = mef_ssim(fused, stack, return_per_scale=True)
        for i in range(3):
            single, single_per_scale = mef_ssim(fused[i], stack[i], return_per_scale=True)
            torch.testing.assert_close(batched[i], single, atol=1e-12, rtol=0)
            torch.testing.assert_close(batched_per_scale[i], single_per_scale, atol=1e-12, rtol=0)

    def test_stack_of_batch_one_broadcasts(self):
        fused, stack = _random_burst(batch=3, frames=3, channels=3, height=44, width=45)
        shared = stack[:1]
        expected = mef_ssim(fused, shared.expand_as(stack))
        torch.testing.assert_close(mef_ssim(fused, shared), expected, atol=1e-12, rtol=0)
        per_channel = mef_ssim(fused, shared.expand_as(stack), gray=False)
        torch.testing.assert_close(mef_ssim(fused, shared, gray=False), per_channel, atol=1e-12, rtol=0)
        assert mef_ssim(fused[:1], shared).shape == (1,)

    def test_frame_order_invariant(self):
        fused, stack = _random_burst(frames=4, height=44, width=44)
        torch.testing.assert_close(mef_ssim(fused, stack.flip(0)), mef_ssim(fused, stack), atol=1e-12, rtol=0)

    def test_gray_conversion_and_data_range(self):
        fused, stack = _random_burst(frames=3, channels=3, height=44, width=46)
        luma = torch.tensor(RGB_TO_GRAY_WEIGHTS, dtype=torch.float64).view(3, 1, 1)
        gray_fused = (fused * luma).sum(dim=-3, keepdim=True)
        gray_stack = (stack * luma).sum(dim=-3, keepdim=True)
        rgb_score = mef_ssim(fused, stack)
        torch.testing.assert_close(mef_ssim(gray_fused, gray_stack), rgb_score, atol=1e-12, rtol=0)
        torch.testing.assert_close(mef_ssim(fused * 255, stack * 255, data_range=255), rgb_score, atol=1e-12, rtol=0)

    def test_per_channel_mode(self):
        fused, stack = _random_burst(frames=3, channels=3, height=44, width=44)
        per_channel = [mef_ssim(fused[c : c + 1], stack[:, c : c + 1]) for c in range(3)]
        expected = torch.stack(per_channel).mean()
        torch.testing.assert_close(mef_ssim(fused, stack, gray=False), expected, atol=1e-12, rtol=0)

    def test_single_scale_is_first_scale(self):
        fused, stack = _random_burst(frames=3, height=46, width=45)
        _, per_scale = mef_ssim(fused, stack, return_per_scale=True)
        torch.testing.assert_close(mef_ssim(fused, stack, scales=1), per_scale[0], atol=1e-12, rtol=0)
        weights = torch.tensor([0.0448, 0.2856, 0.3001], dtype=torch.float64)
        expected = torch.prod(per_scale ** (weights / weights.sum()))
        torch.testing.assert_close(mef_ssim(fused, stack), expected, atol=1e-12, rtol=0)

    def test_float32_matches_float64(self, device):
        fused, stack = _random_burst(batch=2, frames=4, channels=3, height=64, width=60, device=device)
        reference = mef_ssim(fused, stack)
        result = mef_ssim(fused.float(), stack.float())
        assert result.dtype == torch.float32
        torch.testing.assert_close(result.double(), reference, atol=10 * TOLERANCES[torch.float32], rtol=0)

    @pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
    def test_half_precision_computed_in_float32(self, half):
        fused, stack = _random_burst(frames=3, channels=3, height=44, width=44)
        fused, stack = fused.to(half), stack.to(half)
        result = mef_ssim(fused, stack)
        assert result.dtype == half
        expected = mef_ssim(fused.float(), stack.float())
        torch.testing.assert_close(result.float(), expected, atol=TOLERANCES[half], rtol=0)
