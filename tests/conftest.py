"""Shared fixtures: the optional ``../shared`` data, devices and dtype tolerances."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# This suite runs on 2-core machines that are often shared: OpenMP threads spinning while another
# process holds the other core made torch 5-30x slower here. One thread per process keeps the
# suite's time predictable; subprocesses (CLI, DDP ranks, the notebook kernel) inherit it through
# the environment. Export OMP_NUM_THREADS to choose otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))

#: ``../shared`` beside the checkout (test data and references, never committed).
SHARED = Path(os.environ.get("EFUSION_SHARED", Path(__file__).resolve().parents[2] / "shared"))
BURSTS = SHARED / "data" / "bursts"
REFERENCE = SHARED / "reference"

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}

#: absolute tolerances per dtype for checks that compare two computations of the same quantity
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 2e-2,
    torch.bfloat16: 5e-2,
}


def requires_shared(path: Path = SHARED):
    """Skip marker for tests that read ``../shared`` (absent in a user's fresh clone)."""
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not found (shared test data absent)")


def burst_dir(name: str) -> Path:
    """Map a reference name (``seed_house``, ``mef_ma_Balloons``, ...) to its folder of frames."""
    if name.startswith("mef_ma_"):
        return BURSTS / "mef_ma" / name[len("mef_ma_"):]
    return BURSTS / name


def burst_frames(folder: Path) -> list[Path]:
    """Image files of a burst folder, sorted by name (the order the references used)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_burst_uint8(folder: Path):
    """Frames of a burst as one uint8 numpy array ``[N, H, W, 3]`` (Pillow decode, RGB)."""
    import numpy as np
    from PIL import Image

    frames = []
    for path in burst_frames(folder):
        with Image.open(path) as im:
            frames.append(np.asarray(im.convert("RGB")))
    return np.stack(frames)


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=devices())
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request) -> torch.dtype:
    return request.param


def gradcheck_stack(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random ``[..., N, C, H, W]`` stack with the hard cases for gradients in every burst:
    a flat achromatic patch (contrast 0 and saturation 0) in frame 0, achromatic texture beside it
    (R = G = B) in frame 0, pixels at exactly 0 in frame 1 and at exactly 1 in the last frame.

    Some frame is textured at every pixel. Where *every* frame sits on Mertens' 1e-12 weight floor,
    the normalised weights are continuous but curve on a scale of ~1e-6 in the input (a measure
    ~eps^2 against 1e-12), so no finite-difference step can check them; the analytical gradient
    there is exact (0) and is checked for finiteness instead.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=dtype)
    n, c = x.shape[-4:-2]
    x[..., 0, :, :3, :4] = 0.5
    if c == 3:
        x[..., 0, :, :3, 4:] = x[..., 0, :1, :3, 4:]
    if n > 1:
        x[..., 1, :, -2:, -3:] = 0.0
        x[..., -1, :, -2:, :2] = 1.0
    return x


def scene(b=None, n=3, c=3, h=20, w=24, seed=0, dtype=torch.float64):
    """A small bracket: one smooth scene at n exposures (clipped), so weights differ meaningfully."""
    g = torch.Generator().manual_seed(seed)
    shape = (c, h, w) if b is None else (b, 1, c, h, w)
    radiance = torch.rand(shape, generator=g, dtype=dtype) * 4
    gains = torch.logspace(-2, 2, n, base=2, dtype=dtype).view(n, 1, 1, 1)
    stack = (radiance.unsqueeze(-4) if b is None else radiance) * gains
    return stack.clamp(0, 1)


@pytest.fixture
def frames8():
    """A small 8-bit bracket as uint8 ``[N, H, W, 3]`` (for the image-file and command-line tests)."""
    import numpy as np

    from _image_files import scene

    return (scene() * 255).round().astype(np.uint8)


@pytest.fixture
def bracket8(tmp_path, frames8) -> list[Path]:
    """:func:`frames8` written as PNG files ``tmp_path/bracket/0.png``, ..."""
    from _image_files import write_frames

    return write_frames(tmp_path / "bracket", frames8)
