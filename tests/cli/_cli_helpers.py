"""Helpers for the command-line tests: run ``main(argv)`` in-process, check its errors, read results."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch

from efusion.cli import main


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def as_stack(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float ``[N, C, H, W]`` the way a user would in memory."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255


def as_codes(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> uint8 ``[N, C, H, W]``: the frames as the fusion ops take integer images
    (measured on their exact values, as the CLI's 8- and 16-bit frames)."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def read_tiff(path: Path) -> torch.Tensor:
    array = tifffile.imread(path)
    return torch.from_numpy(array if array.ndim == 3 else array[..., None]).permute(2, 0, 1)


def assert_one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("efusion: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)
