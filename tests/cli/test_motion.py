"""``efusion fuse --align / --deghost / --reference / --verbose``: a shaken bracket on the command line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import efusion
from efusion.synthetic import bracket

from _cli_helpers import assert_one_error_line, run
from _image_files import write_frames

PAD = 12
#: (rows, columns) each frame is shifted by: the shake of a hand-held bracket
SHIFTS = [(0, 0), (5, -7), (-6, 4)]


@pytest.fixture(scope="module")
def shaken(tmp_path_factory):
    """The same 3-frame bracket twice as 8-bit PNG files: steady, and each frame shifted by SHIFTS."""
    h, w = 96, 128
    big = bracket(h + 2 * PAD, w + 2 * PAD, 3, ev_step=2.0, seed=3)  # [3, 3, H, W], k / 255
    frames = (big * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    steady = np.stack([f[PAD:PAD + h, PAD:PAD + w] for f in frames])
    moved = np.stack([f[PAD + dy:PAD + dy + h, PAD + dx:PAD + dx + w] for f, (dy, dx) in zip(frames, SHIFTS)])
    root = tmp_path_factory.mktemp("shaken")
    return write_frames(root / "steady", steady), write_frames(root / "moved", moved)


def psnr_inside(a: Path, b: Path, margin: int = PAD) -> float:
    x, y = (np.asarray(Image.open(p), dtype=np.float64) / 255 for p in (a, b))
    mse = np.mean((x - y)[margin:-margin, margin:-margin] ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def test_align_undoes_the_shake(tmp_path, capsys, shaken):
    steady, moved = shaken
    assert run(["fuse", *steady, "-o", tmp_path / "steady.png", "-q"], capsys)[0] == 0
    assert run(["fuse", *moved, "-o", tmp_path / "ghosted.png", "-q"], capsys)[0] == 0
    assert run(["fuse", *moved, "-o", tmp_path / "aligned.png", "-q", "--align", "translation", "--reference", "0"],
               capsys)[0] == 0
    # the command does what the library does: align, then fuse with the alignment's mask
    frames = torch.stack([torch.from_numpy(np.asarray(Image.open(p))).permute(2, 0, 1) for p in moved]).float() / 255
    alignment = efusion.align(frames, model="translation", reference=0)
    expected = efusion.exposure_fusion(alignment.frames, mask=alignment.mask).clamp(0, 1)
    written = torch.from_numpy(np.asarray(Image.open(tmp_path / "aligned.png"))).permute(2, 0, 1).float() / 255
    assert (written - expected).abs().max() <= 0.5 / 255 + 1e-6
    # and it undoes the shake: close to the steady bracket's fusion (not equal: the frames' borders,
    # which the shift cut off, are masked out), far from the shaken one fused as it is
    aligned = psnr_inside(tmp_path / "aligned.png", tmp_path / "steady.png")
    ghosted = psnr_inside(tmp_path / "ghosted.png", tmp_path / "steady.png")
    assert aligned >= 30 and ghosted < aligned - 10, (aligned, ghosted)


def test_verbose_prints_each_frames_homography(tmp_path, capsys, shaken):
    _, moved = shaken
    code, out, err = run(["fuse", *moved, "-o", tmp_path / "a.png", "-q", "--align", "translation", "--reference", "0",
                          "-v"], capsys)
    assert code == 0, err
    lines = [line for line in out.splitlines() if "homography onto the reference" in line]
    assert len(lines) == 3
    for line, path, (dy, dx) in zip(lines, moved, SHIFTS):
        assert str(path) in line
        matrix = np.array([[float(v) for v in row.split()] for row in line.split("[")[1].rstrip("]").split(";")])
        # reference pixel (x, y) -> frame pixel (x - dx, y - dy): the frame's content moved by (dx, dy)... sign
        # conventions aside, the translation's magnitude is the shift
        assert np.allclose(np.abs(matrix[:2, 2]), [abs(dx), abs(dy)], atol=0.5), (matrix, dx, dy)
        assert np.allclose(matrix[:2, :2], np.eye(2), atol=1e-6) and np.allclose(matrix[2], [0, 0, 1])


def test_deghost_leaves_a_static_bracket_alone(tmp_path, capsys, shaken):
    steady, _ = shaken
    assert run(["fuse", *steady, "-o", tmp_path / "plain.png", "-q"], capsys)[0] == 0
    code, out, err = run(["fuse", *steady, "-o", tmp_path / "deghosted.png", "-q", "--deghost", "-v"], capsys)
    assert code == 0, err
    assert psnr_inside(tmp_path / "deghosted.png", tmp_path / "plain.png", margin=1) >= 45
    assert out.count("deghosting keeps") == 3


@pytest.mark.parametrize("index", ["3", "-4"])
def test_reference_outside_the_bracket_is_one_line(tmp_path, capsys, shaken, index):
    _, moved = shaken
    code, _, err = run(["fuse", *moved, "-o", tmp_path / "a.png", "--align", "translation", "--reference", index], capsys)
    assert code == 2
    assert_one_error_line(err, f"--reference {index}", "3 frames")
    assert not (tmp_path / "a.png").exists()


def test_bad_align_model_is_refused(tmp_path, capsys, shaken):
    _, moved = shaken
    code, _, err = run(["fuse", *moved, "-o", tmp_path / "a.png", "--align", "affine"], capsys)
    assert code == 2 and "--align" in err and "homography" in err and "Traceback" not in err


@pytest.mark.parametrize("size", [(1, 8), (5, 1)])
def test_frames_too_small_to_align_are_bad_input(tmp_path, capsys, size):
    # align refuses frames under 2 pixels in a direction (no 2-D motion to estimate): the command
    # says so in one line naming the size, exit status 2 like other bad input, and writes nothing
    h, w = size
    frames = np.stack([np.full((h, w, 3), v, dtype=np.uint8) for v in (40, 120, 220)])
    paths = write_frames(tmp_path / "tiny", frames)
    code, _, err = run(["fuse", *paths, "-o", tmp_path / "a.png", "--align", "homography"], capsys)
    assert code == 2, err
    assert_one_error_line(err, "--align homography", f"{h} x {w}", str(paths[0]))
    assert "unexpected" not in err
    assert not (tmp_path / "a.png").exists()
    # without --align the same frames fuse
    assert run(["fuse", *paths, "-o", tmp_path / "b.png", "-q"], capsys)[0] == 0


def test_a_batch_rerun_with_other_motion_settings_says_so(tmp_path, capsys, shaken):
    _, moved = shaken
    out_dir = tmp_path / "fused"
    assert run(["fuse", moved[0].parent, "--out-dir", out_dir, "-q"], capsys)[0] == 0
    code, _, err = run(["fuse", moved[0].parent, "--out-dir", out_dir, "-q", "--align", "translation"], capsys)
    assert code == 0 and "made with other settings" in err and "motion" in err, err
    # the same settings again: nothing to say
    run(["fuse", moved[0].parent, "--out-dir", tmp_path / "again", "-q", "--align", "translation"], capsys)
    code, _, err = run(["fuse", moved[0].parent, "--out-dir", tmp_path / "again", "-q", "--align", "translation"], capsys)
    assert code == 0 and "other settings" not in err, err


def test_demo_align_shows_the_shaken_bracket_before_and_after(tmp_path, capsys):
    h, w = 96, 144
    code, out, err = run(["demo", "--align", "translation", "--out-dir", tmp_path / "d", "--height", h, "--width", w,
                          "--seed", 2], capsys)
    assert code == 0, err
    d = tmp_path / "d"
    for name in ("fused.png", "unaligned.png", "before-after.png", "contact-sheet.png"):
        assert (d / name).is_file() and name in out
    assert "--align translation" in out
    # the steady bracket the demo shook: the same render, every frame cut at the centre (as the middle one is)
    pad_y, pad_x = round(0.04 * h), round(0.04 * w)
    large = bracket(h + 2 * pad_y, w + 2 * pad_x, 3, ev_step=2.0, seed=2)
    steady = efusion.exposure_fusion(large[:, :, pad_y:pad_y + h, pad_x:pad_x + w]).clamp(0, 1)
    Image.fromarray((steady * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(tmp_path / "steady.png")
    after = psnr_inside(d / "fused.png", tmp_path / "steady.png", margin=max(pad_y, pad_x))
    before = psnr_inside(d / "unaligned.png", tmp_path / "steady.png", margin=max(pad_y, pad_x))
    assert after >= 30 and before < after - 10, (before, after)
    side = Image.open(d / "before-after.png")
    assert side.size == (2 * w + 8, h)
