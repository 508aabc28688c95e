"""``preset="opencv"`` reproduces OpenCV as its users call it (issue 12, item 4): frames from
``cv2.imread`` (BGR), ``cv2.createMergeMertens(c, s, e).process(frames)``; efusion gets the same
images in RGB. OpenCV's ``merge.cpp`` converts with ``COLOR_RGB2GRAY`` whatever the order, so on
BGR frames blue weighs 0.299 and red 0.114; its default exposure weight is 0.

Frames are shrunk with ``cv2.resize(INTER_AREA)`` before both get them, to keep the sweep cheap.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import BURSTS, burst_frames, requires_shared

from efusion import exposure_fusion, fuse_frames

cv2 = pytest.importorskip("cv2")

#: (contrast, saturation, exposure); None: both sides' defaults
EXPONENT_SETS = [None, (1.0, 1.0, 1.0), (2.0, 1.5, 0.5), (0.3, 0.0, 2.0), (0.0, 0.7, 1.0)]
#: the longest side the frames are shrunk to
SIDE = 160


def bursts() -> list[str]:
    if not BURSTS.exists():
        return ["<no ../shared>"]
    return sorted(str(f.relative_to(BURSTS)) for f in BURSTS.rglob("*") if f.is_dir() and len(burst_frames(f)) >= 2)


def read_bgr(folder) -> list[np.ndarray]:
    """The frames as an OpenCV user has them: cv2.imread (BGR, uint8), shrunk to SIDE."""
    frames = []
    for path in burst_frames(folder):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        scale = SIDE / max(image.shape[:2])
        frames.append(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.mark.slow
@requires_shared(BURSTS)
@pytest.mark.parametrize("burst", bursts())
def test_matches_merge_mertens_on_bgr_frames(burst):
    cv2.setNumThreads(1)
    bgr = read_bgr(BURSTS / burst)
    rgb = torch.stack([torch.from_numpy(np.ascontiguousarray(f[..., ::-1])).permute(2, 0, 1) for f in bgr])
    for exponents in EXPONENT_SETS:
        merge = cv2.createMergeMertens() if exponents is None else cv2.createMergeMertens(*exponents)
        expected = merge.process(bgr)[..., ::-1]  # OpenCV's result, BGR -> RGB
        kwargs = {} if exponents is None else dict(zip(("contrast", "saturation", "exposure"), exponents))
        ours = fuse_frames(rgb, preset="opencv", **kwargs)  # uint8 frames: OpenCV's float32 1/255 scale
        value = psnr(ours.permute(1, 2, 0).numpy(), expected)
        assert value >= 60, f"{burst} {exponents}: PSNR vs OpenCV on BGR frames {value:.1f} dB"


@requires_shared(BURSTS)
def test_opencv_rgb_keeps_the_old_behaviour_and_differs():
    bgr = read_bgr(BURSTS / "mef_ma" / "Lamp")
    rgb = torch.stack([torch.from_numpy(np.ascontiguousarray(f[..., ::-1])).permute(2, 0, 1) for f in bgr])
    stack = rgb.float() * np.float32(1.0 / 255.0)
    # OpenCV fed RGB frames: "opencv-rgb"
    fed_rgb = cv2.createMergeMertens(1.0, 1.0, 1.0).process([np.ascontiguousarray(f[..., ::-1]) for f in bgr])
    assert psnr(exposure_fusion(stack, preset="opencv-rgb").permute(1, 2, 0).numpy(), fed_rgb) >= 60
    # the two conventions are not the same fusion (blue and red swap their luma weights)
    bgr_way = exposure_fusion(stack, preset="opencv", exposure=1.0)
    assert (bgr_way - exposure_fusion(stack, preset="opencv-rgb")).abs().max() > 1e-3


def test_default_exposure_exponent_is_opencvs():
    # cv2.createMergeMertens() has exposure_weight = 0: the "opencv" preset's default
    stack = torch.rand(3, 3, 12, 14, generator=torch.Generator().manual_seed(0))
    assert torch.equal(exposure_fusion(stack, preset="opencv"), exposure_fusion(stack, preset="opencv", exposure=0.0))
    assert not torch.equal(exposure_fusion(stack, preset="opencv"), exposure_fusion(stack, preset="opencv", exposure=1.0))
    assert torch.equal(exposure_fusion(stack), exposure_fusion(stack, contrast=1.0, saturation=1.0, exposure=1.0))
