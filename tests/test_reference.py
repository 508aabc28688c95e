"""Acceptance: Mertens' original MATLAB output and OpenCV's MergeMertens on real brackets.

References (``../shared/reference/mertens/*.npy``) are Tom Mertens' ``exposure_fusion.m`` run
under GNU Octave on the bursts in ``../shared/data/bursts``; see ``../shared/README.md``.
Skipped when ``../shared`` is absent.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from efusion import exposure_fusion

from conftest import BURSTS, REFERENCE, burst_dir, burst_frames, load_burst_uint8, requires_shared

#: exponents (contrast, saturation, exposure) of the references whose name says so
EXPONENTS = {"seed_house_e": (0.0, 0.0, 1.0), "seed_house_mix": (2.0, 1.5, 1.25)}


def reference_names() -> list[str]:
    folder = REFERENCE / "mertens"
    return sorted(p.stem for p in folder.glob("*.npy")) if folder.exists() else ["<no ../shared>"]


def burst_of(name: str) -> str:
    return name[: -len(suffix)] if (suffix := next((s for s in ("_e", "_mix") if name.endswith(s)), "")) else name


def all_bursts() -> list[str]:
    if not BURSTS.exists():
        return ["<no ../shared>"]
    names = []
    for folder in sorted(BURSTS.rglob("*")):
        if folder.is_dir() and len(burst_frames(folder)) >= 2:
            names.append(str(folder.relative_to(BURSTS)))
    return names


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def as_stack(frames: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> [N, 3, H, W] in [0, 1] (MATLAB's im2double: x / 255)."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).to(dtype) / 255


@requires_shared(REFERENCE / "mertens")
@pytest.mark.parametrize("name", reference_names())
class TestMertensReference:
    def test_float64_matches_to_1e5(self, name):
        reference = np.load(REFERENCE / "mertens" / f"{name}.npy")
        c, s, e = EXPONENTS.get(name, (1.0, 1.0, 1.0))
        frames = load_burst_uint8(burst_dir(burst_of(name)))
        out = exposure_fusion(as_stack(frames, torch.float64), contrast=c, saturation=s, exposure=e)
        diff = np.abs(out.permute(1, 2, 0).numpy() - reference).max()
        assert diff <= 1e-5, f"{name}: max |efusion - Mertens| = {diff:.3g}"

    def test_float32_psnr_at_least_60db(self, name):
        reference = np.load(REFERENCE / "mertens" / f"{name}.npy")
        c, s, e = EXPONENTS.get(name, (1.0, 1.0, 1.0))
        frames = load_burst_uint8(burst_dir(burst_of(name)))
        out = exposure_fusion(as_stack(frames, torch.float32), contrast=c, saturation=s, exposure=e)
        value = psnr(out.permute(1, 2, 0).numpy(), reference)
        assert value >= 60, f"{name}: float32 PSNR {value:.1f} dB"


#: bursts of every kind (JPEG and PNG, 3 to 30 frames, portrait and landscape) for the exponent sweep
SWEEP_BURSTS = ["seed_house", "frobisher", "mef_ma/Church", "mef_ma/Studio", "mef_ma/Lamp", "deepfuse/Seq_10"]


def opencv_cases() -> list[tuple[str, tuple[float, float, float]]]:
    cases = [(burst, (1.0, 1.0, 1.0)) for burst in all_bursts()]
    for exponents in [(2.0, 1.5, 0.5), (0.3, 0.0, 2.0), (0.0, 0.7, 1.0)]:
        cases += [(burst, exponents) for burst in SWEEP_BURSTS if (BURSTS / burst).exists()]
    return cases


@requires_shared(BURSTS)
class TestOpenCVMergeMertens:
    """OpenCV fed RGB frames: preset "opencv-rgb" (tests/test_opencv_bgr.py: as its users call it)."""

    @pytest.mark.parametrize("burst, exponents", opencv_cases())
    def test_psnr_at_least_60db(self, burst, exponents):
        cv2 = pytest.importorskip("cv2")
        cv2.setNumThreads(1)  # its thread pool and torch's fight over this machine's two cores
        frames = load_burst_uint8(BURSTS / burst)
        expected = cv2.createMergeMertens(*exponents).process(list(frames))  # RGB order in and out
        # OpenCV converts 8-bit frames with a float32 multiplication by 1/255 (convertTo's scale)
        stack = torch.from_numpy(frames).permute(0, 3, 1, 2).float() * np.float32(1.0 / 255.0)
        c, s, e = exponents
        out = exposure_fusion(stack, contrast=c, saturation=s, exposure=e, preset="opencv-rgb")
        value = psnr(out.permute(1, 2, 0).numpy(), expected)
        assert value >= 60, f"{burst} {exponents}: PSNR vs OpenCV {value:.1f} dB"


@pytest.mark.slow
@requires_shared(BURSTS)
@pytest.mark.parametrize("burst", all_bursts())
def test_gradients_finite_on_real_bursts(burst):
    """No NaN/Inf in any gradient: the input and every parameter, on every real burst."""
    stack = as_stack(load_burst_uint8(BURSTS / burst), torch.float32).requires_grad_()
    params = {k: torch.tensor(v, requires_grad=True) for k, v in
              {"contrast": 1.0, "saturation": 1.0, "exposure": 1.0, "mu": 0.5, "sigma": 0.2, "levels": -1.5}.items()}
    out = exposure_fusion(stack, **params)
    probe = torch.rand(out.shape, generator=torch.Generator().manual_seed(0))
    (out * probe).sum().backward()
    for name, tensor in [("stack", stack), *params.items()]:
        assert torch.isfinite(tensor.grad).all(), f"{burst}: non-finite gradient for {name}"
