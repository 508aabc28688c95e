"""Helpers for tests that read and write image files (tests/io, tests/cli)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def scene(height: int = 24, width: int = 32, n: int = 3, seed: int = 0) -> np.ndarray:
    """A small bracket ``[N, H, W, 3]`` in [0, 1]: a smooth radiance ramp with texture, 2 EV apart."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    radiance = 2.0 ** (8 * x / width - 4) * (1 + 0.3 * np.sin(y / 2.0))
    radiance = radiance[..., None] * np.array([1.0, 0.8, 0.6]) * (1 + 0.05 * rng.random((height, width, 3)))
    evs = [2.0 * (i - (n - 1) / 2) for i in range(n)]
    return np.stack([np.clip(radiance * 2.0**ev, 0, 1) ** (1 / 2.2) for ev in evs])


def save_png16(path, array: np.ndarray) -> None:
    import cv2

    if array.ndim == 3:  # RGB(A) to OpenCV's BGR(A)
        array = np.ascontiguousarray(array[..., [2, 1, 0, 3][: array.shape[2]]])
    ok, data = cv2.imencode(".png", array)
    assert ok
    path.write_bytes(data.tobytes())


def leftovers(folder: Path) -> list[str]:
    """Temporary files a write may have left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def write_frames(folder: Path, frames: np.ndarray, suffix: str = ".png", **save) -> list[Path]:
    """Save ``[N, H, W, C]`` uint8 frames with Pillow as ``folder/0<suffix>``, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        paths.append(folder / f"{i}{suffix}")
        Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame).save(paths[-1], **save)
    return paths
