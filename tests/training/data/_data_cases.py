"""Small data the training.data tests write and search (shared by the tests of this folder)."""
from __future__ import annotations

import numpy as np
import torch

from efusion import io as efusion_io
from efusion import synthetic


def find_patch(patch: torch.Tensor, image: torch.Tensor) -> tuple[int, int]:
    """Top-left corner of ``patch`` [C, h, w] inside ``image`` [C, H, W] (exact match)."""
    h, w = patch.shape[-2:]
    for top in range(image.shape[-2] - h + 1):
        for left in range(image.shape[-1] - w + 1):
            if torch.equal(image[:, top : top + h, left : left + w], patch):
                return top, left
    raise AssertionError("patch not found")


def write_hdr(path, radiance: torch.Tensor) -> None:
    import cv2

    bgr = radiance.permute(1, 2, 0).numpy()[:, :, ::-1].astype(np.float32)
    assert cv2.imwrite(str(path), np.ascontiguousarray(bgr))


def write_exr(path, radiance: torch.Tensor) -> None:
    import OpenEXR

    rgb = radiance.permute(1, 2, 0).numpy().astype(np.float16)
    header = {"compression": OpenEXR.PIZ_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"RGB": np.ascontiguousarray(rgb)}) as exr:
        exr.write(str(path))


def small_scene(seed: int, size=(20, 28)) -> torch.Tensor:
    return synthetic.hdr_scene(*size, seed=seed, dynamic_range_ev=8.0)


def write_bracket(folder, size=(16, 20), frames=3, reference=True, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    stack = synthetic.bracket(*size, n_frames=frames, seed=seed)
    for n, frame in enumerate(stack):
        efusion_io.write_image(folder / f"{n:02d}.png", frame)
    if reference:
        efusion_io.write_image(folder / "reference.png", stack.mean(0))
    return stack
