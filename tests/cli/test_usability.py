"""Rough edges of the ``efusion`` command line found by trying it as a new user (issue 16)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import efusion
from efusion.presets import get_preset

from _image_files import scene, write_frames
from _cli_helpers import as_stack, assert_one_error_line, run


def library_accepts(**params) -> bool:
    try:
        efusion.exposure_fusion(torch.rand(2, 3, 8, 8), **params)
    except (ValueError, TypeError):
        return False
    return True


# ----------------------------------------------------------------------------------------------
# 8: ranges as the library's, per-channel lists, a clamped depth is reported


@pytest.mark.parametrize(
    "option, text, value",
    [
        ("--mu", "2", 2.0),
        ("--mu", "-0.5", -0.5),
        ("--sigma", "0", 0.0),
        ("--sigma", "-0.1", -0.1),
        ("--contrast", "-1", -1.0),
        ("--exposure", "0", 0.0),
        ("--levels", "0.5", 0.5),
        ("--levels", "-0.5", -0.5),
        ("--levels", "3", 3),
    ],
)
def test_range_checks_are_the_librarys(tmp_path, capsys, bracket8, option, text, value):
    out = tmp_path / "fused.png"
    code, _, err = run(["fuse", *bracket8, "-o", out, option, text], capsys)
    accepted = library_accepts(**{option[2:]: value})
    assert (code == 0) == accepted, (code, err)
    if not accepted:
        assert code == 2
        assert_one_error_line(err, option[2:])
        assert not out.exists()


def test_help_does_not_promise_a_range_the_library_does_not_keep(capsys):
    code, stdout, _ = run(["fuse", "--help"], capsys)
    assert code == 0
    assert "in [0, 1]" not in " ".join(stdout.split())


def test_per_channel_mu_and_sigma_on_the_command_line(tmp_path, capsys, bracket8, frames8):
    out = tmp_path / "fused.tif"
    code, _, err = run(["fuse", *bracket8, "-o", out, "--mu", "0.4,0.5,0.6", "--sigma", "0.2, 0.25,0.3",
                        "--bit-depth", "32"], capsys)
    assert code == 0, err
    expected = efusion.exposure_fusion(as_stack(frames8), mu=[0.4, 0.5, 0.6], sigma=[0.2, 0.25, 0.3])
    import tifffile

    written = torch.from_numpy(tifffile.imread(out)).permute(2, 0, 1)
    assert torch.allclose(written, expected, atol=1e-5)
    # the same list from a params file gives the same image
    params = tmp_path / "p.json"
    params.write_text('{"mu": [0.4, 0.5, 0.6], "sigma": [0.2, 0.25, 0.3]}')
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "file.tif", "--params", params, "--bit-depth", "32"], capsys)
    assert code == 0, err
    assert np.array_equal(tifffile.imread(tmp_path / "file.tif"), tifffile.imread(out))


@pytest.mark.parametrize("text", ["0.4,,0.6", "0.4,x", ","])
def test_bad_per_channel_list_is_one_line(tmp_path, capsys, bracket8, text):
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "f.png", "--mu", text], capsys)
    assert code == 2 and "--mu" in err and "Traceback" not in err


def test_per_channel_count_must_match_the_frames(tmp_path, capsys, bracket8):
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "f.png", "--mu", "0.4,0.5"], capsys)
    assert code != 0
    assert_one_error_line(err, "mu")


@pytest.mark.parametrize("levels, deepest", [("1000", True), ("-1000", False)])
def test_clamped_depth_is_reported_once(tmp_path, capsys, frames8, levels, deepest):
    folders = [write_frames(tmp_path / name, frames8)[0].parent for name in ("a", "b")]
    code, _, err = run(["fuse", *folders, "--out-dir", tmp_path / "out", "--levels", levels, "-q"], capsys)
    assert code == 0, err
    maximum = get_preset("mertens").max_levels(*frames8.shape[1:3])
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1, err
    assert f"--levels {levels}" in warnings[0]
    assert (f"using {maximum}" if deepest else "using 1") in warnings[0]
    # and the result is that of the clamped depth
    written = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / "a.png"))).permute(2, 0, 1).float() / 255
    expected = efusion.exposure_fusion(as_stack(frames8), levels=maximum if deepest else 1).clamp(0, 1)
    assert (written - expected).abs().max() <= 0.5 / 255 + 1e-6


def test_depth_within_range_is_not_reported(tmp_path, capsys, bracket8):
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "f.png", "--levels", "-1"], capsys)
    assert code == 0 and err == ""


# ----------------------------------------------------------------------------------------------
# 9: -o names a folder; -o into folders that do not exist yet


def test_output_is_an_existing_folder(tmp_path, capsys, bracket8):
    folder = tmp_path / "results"
    folder.mkdir()
    code, _, err = run(["fuse", *bracket8, "-o", folder], capsys)
    assert code == 2
    assert_one_error_line(err, str(folder), "is a folder", "--out-dir")
    assert "suffix" not in err
    assert list(folder.iterdir()) == []


def test_output_in_missing_folders_is_created_as_help_says(tmp_path, capsys, bracket8):
    code, stdout, _ = run(["fuse", "--help"], capsys)
    assert "missing folders are created" in " ".join(stdout.split())
    out = tmp_path / "new" / "sub" / "fused.png"
    code, stdout, err = run(["fuse", *bracket8, "-o", out], capsys)
    assert code == 0, err
    assert out.is_file() and Image.open(out).size == (32, 24)


# ----------------------------------------------------------------------------------------------
# 12: a folder of bracket folders


def test_folder_of_brackets_suggests_the_glob(tmp_path, capsys, frames8):
    shoot = tmp_path / "shoot"
    for name in ("a", "b"):
        write_frames(shoot / name, frames8)
    for argv in (["fuse", shoot, "--out-dir", tmp_path / "o"], ["fuse", shoot, "-o", tmp_path / "f.png"], ["eval", shoot]):
        code, _, err = run(argv, capsys)
        assert code == 1
        assert_one_error_line(err, str(shoot), "folders of images", f"{shoot}/*/")
    assert not (tmp_path / "o").exists() and not (tmp_path / "f.png").exists()


# ----------------------------------------------------------------------------------------------
# 7: the decompression-bomb limit can be raised


def huge_png(path, width: int, height: int) -> None:
    """A valid 1-bit gray PNG of ``width x height`` black pixels: tens of kilobytes on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "huge.png"
    huge_png(path, 14000, 13000)  # 182 MP: above Pillow's refusal at 2 x 89.5 MP
    return path


def test_huge_frame_is_refused_by_default_and_the_message_names_the_option(tmp_path, capsys, bomb, bracket8):
    code, _, err = run(["fuse", bomb, bracket8[0], "-o", tmp_path / "f.png"], capsys)
    assert code == 1
    assert_one_error_line(err, str(bomb), "14000x13000", "--max-pixels")


def test_max_pixels_raises_the_limit(tmp_path, capsys, bomb, bracket8):
    # with the limit raised the header is accepted: the bracket then fails on the frame sizes,
    # which are compared only after every header was read
    code, _, err = run(["fuse", bomb, bracket8[0], "-o", tmp_path / "f.png", "--max-pixels", "200M"], capsys)
    assert code == 1
    assert_one_error_line(err, "frame is 32x24", "14000x13000")
    assert "max-pixels" not in err


def test_max_pixels_lowers_the_limit(tmp_path, capsys, bracket8):
    for command in (["fuse", *bracket8, "-o", tmp_path / "f.png"], ["eval", *bracket8]):
        code, _, err = run([*command, "--max-pixels", "700"], capsys)
        assert code == 1
        assert_one_error_line(err, "32x24", "768 pixels", "--max-pixels")
    assert not (tmp_path / "f.png").exists()
    assert run(["fuse", *bracket8, "-o", tmp_path / "f.png", "--max-pixels", "768"], capsys)[0] == 0


@pytest.mark.parametrize("text", ["0", "-5", "lots", "1.5"])
def test_bad_max_pixels(capsys, bracket8, tmp_path, text):
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "f.png", "--max-pixels", text], capsys)
    assert code == 2 and "--max-pixels" in err


# ----------------------------------------------------------------------------------------------
# 14: --threads, and OpenMP threads that sleep rather than spin when the machine is busy


def test_threads_option_sets_the_computation_threads_and_restores_them(tmp_path, capsys, bracket8, monkeypatch):
    seen = []
    real = efusion.fuse_frames

    def recording(*args, **kwargs):  # the real fusion, noting how many threads it ran with
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(efusion, "fuse_frames", recording)
    before = torch.get_num_threads()
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "one.png", "--threads", "1"], capsys)
    assert code == 0, err
    assert seen == [1] and torch.get_num_threads() == before
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "two.png", "--threads", "2"], capsys)
    assert code == 0 and seen == [1, 2]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), np.asarray(Image.open(tmp_path / "two.png")))
    big = write_frames(tmp_path / "big", (scene(48, 48) * 255).round().astype(np.uint8))  # MEF-SSIM needs 44 px
    code, _, err = run(["eval", *big, "--threads", "1", "--json"], capsys)
    assert code == 0, err
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("text", ["0", "-2", "two"])
def test_bad_threads(tmp_path, capsys, bracket8, text):
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "f.png", "--threads", text], capsys)
    assert code == 2 and "--threads" in err


def launcher(code: str, **env) -> str:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environment.update(env, PYTHONPATH=os.pathsep.join([str(root), environment.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_console_entry_point_sets_a_passive_wait_policy_before_torch_loads():
    # the console script's module imports neither torch nor efusion, so the setting is in place
    # when libgomp reads it (once, as torch loads)
    code = ("import sys, efusion_cli; assert 'torch' not in sys.modules and 'efusion' not in sys.modules; "
            "status = efusion_cli.main(['--version']); import os; print(status, os.environ['OMP_WAIT_POLICY'])")
    assert launcher(code).splitlines()[-1] == "0 PASSIVE"
    assert launcher(code, OMP_WAIT_POLICY="ACTIVE").splitlines()[-1] == "0 ACTIVE"  # the user's choice is kept


def test_console_entry_point_is_the_launcher():
    import configparser
    from pathlib import Path

    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    assert "efusion = efusion_cli:main" in config["options.entry_points"]["console_scripts"]
    assert "efusion_cli" in config["options"]["py_modules"]


# ----------------------------------------------------------------------------------------------
# 5: several --fused, and a folder of results matched to the brackets by name


def eval_reports(argv, capsys) -> tuple[int, list[dict], str]:
    import json

    code, stdout, err = run(["eval", *argv, "--json"], capsys)
    return code, [json.loads(line) for line in stdout.splitlines()], err


@pytest.fixture
def shoot(tmp_path):
    """Two 48x64 brackets shoot/a, shoot/b and results of other fusions: results/a.png, results/b.jpg."""
    from efusion import synthetic

    folders, results = [], tmp_path / "results"
    results.mkdir()
    for seed, name, suffix in ((1, "a", ".png"), (2, "b", ".jpg")):
        stack = synthetic.bracket(48, 64, 3, seed=seed)
        frames = (stack * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        folders.append(write_frames(tmp_path / "shoot" / name, frames)[0].parent)
        fused = efusion.exposure_fusion(stack, contrast=0.5).clamp(0, 1)
        Image.fromarray((fused * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(results / f"{name}{suffix}")
    return folders, results


def test_several_fused_images_one_row_each(capsys, shoot):
    (a, _), results = shoot
    other = a / "2.png"  # a frame of the bracket as a second "fusion"
    code, (report,), err = eval_reports([a, "--fused", results / "a.png", "--fused", other], capsys)
    assert code == 0, err
    fused = [r for r in report["results"] if r["image"] == "fused"]
    assert [r["path"] for r in fused] == [str(results / "a.png"), str(other)]
    for row, path in zip(fused, (results / "a.png", other)):  # each as scored alone
        _, (alone,), _ = eval_reports([a, "--fused", path, "--fused-only"], capsys)
        assert alone["results"][0]["mef_ssim"] == row["mef_ssim"]
    assert fused[0]["mef_ssim"] != fused[1]["mef_ssim"]
    code, stdout, _ = run(["eval", a, "--fused", results / "a.png", "--fused", other], capsys)
    assert code == 0 and str(results / "a.png") in stdout and str(other) in stdout  # the table has both rows


def test_folder_of_results_is_matched_by_bracket_name(capsys, shoot):
    folders, results = shoot
    code, reports, err = eval_reports([*folders, "--fused", results, "--fused-only"], capsys)
    assert code == 0, err
    assert [r["results"][0]["path"] for r in reports] == [str(results / "a.png"), str(results / "b.jpg")]
    for folder, report in zip(folders, reports):
        _, (alone,), _ = eval_reports([folder, "--fused", report["results"][0]["path"], "--fused-only"], capsys)
        assert alone["results"] == report["results"]


def test_folder_of_results_without_a_bracket_is_reported_and_the_rest_scored(capsys, shoot):
    folders, results = shoot
    (results / "b.jpg").unlink()
    code, reports, err = eval_reports([*folders, "--fused", results], capsys)
    assert code == 1
    assert [r["bracket"] for r in reports] == [str(folders[0])]
    assert_one_error_line(err, str(results), "'b'")


def test_one_fused_file_with_several_brackets_is_a_usage_error(capsys, shoot):
    folders, results = shoot
    code, _, err = run(["eval", *folders, "--fused", results / "a.png"], capsys)
    assert code == 2
    assert_one_error_line(err, "--fused", "folder of results")


# ----------------------------------------------------------------------------------------------
# 10: a batch stops at an error that would fail every bracket (no space, read-only, no permission)


@pytest.fixture
def three_brackets(tmp_path, frames8):
    return [write_frames(tmp_path / "shoot" / name, frames8)[0].parent for name in ("a", "b", "c")]


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES"])
def test_batch_stops_at_a_destination_error(tmp_path, capsys, monkeypatch, three_brackets, code):
    import errno
    import os

    from _image_files import leftovers

    # the file system cannot be filled or made read-only from a test here (no mount rights; root
    # ignores permissions), so the error is raised where the kernel reports it: flushing the file
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    out = tmp_path / "out"
    status, stdout, err = run(["fuse", *three_brackets, "--out-dir", out], capsys)
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("efusion: error: ") and os.strerror(getattr(errno, code)) in lines[0]
    assert "stopped" in lines[1] and "2 brackets not attempted" in lines[1]
    assert len(calls) == 1  # the other brackets were not fused
    assert not out.exists() or (list(out.iterdir()) == [] and leftovers(out) == [])


def test_batch_goes_on_after_an_error_of_one_bracket(tmp_path, capsys, three_brackets):
    (three_brackets[1] / "1.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    status, _, err = run(["fuse", *three_brackets, "--out-dir", out, "-q"], capsys)
    assert status == 1
    assert_one_error_line(err, "1.png")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]


# ----------------------------------------------------------------------------------------------
# 13: the reference frame's EXIF (orientation reset) and ICC profile are carried into the result

ICC = b"\x00\x00\x01\x00fake profile bytes " * 8  # carried as opaque bytes


def exif_frames(folder, frames8):
    """JPEG frames rotated by EXIF (orientation 6), each with its own DateTime, all with an ICC profile."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames8):
        exif = Image.Exif()
        exif[0x010F], exif[0x0110], exif[0x0132], exif[0x0112] = "Canon", "EOS 5D", f"2024:01:0{i + 1} 10:00:00", 6
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(np.ascontiguousarray(np.rot90(frame, 1))).save(paths[-1], exif=exif.tobytes(), icc_profile=ICC,
                                                                       quality=98)
    return paths


@pytest.mark.parametrize("name, extra", [("f.jpg", []), ("f.png", []), ("f16.png", ["--bit-depth", "16"]),
                                         ("f.tif", []), ("f32.tif", ["--bit-depth", "32"])])
def test_exif_and_icc_of_the_middle_frame_are_kept(tmp_path, capsys, frames8, name, extra):
    import tifffile

    frames = exif_frames(tmp_path / "b", frames8)
    out = tmp_path / name
    code, _, err = run(["fuse", *frames, "-o", out, *extra], capsys)
    assert code == 0, err
    if out.suffix == ".tif":
        with tifffile.TiffFile(out) as tif:
            tags = tif.pages[0].tags
            assert tags["InterColorProfile"].value == ICC
            assert tags["Make"].value == "Canon" and tags["Model"].value == "EOS 5D"
            assert tags["DateTime"].value == "2024:01:02 10:00:00"
            assert "Orientation" not in tags or tags["Orientation"].value == 1
            assert tif.pages[0].shape[:2] == (24, 32)  # upright pixels
        return
    with Image.open(out) as image:
        exif = image.getexif()
        assert image.info.get("icc_profile") == ICC
        assert (exif[0x010F], exif[0x0110], exif[0x0132]) == ("Canon", "EOS 5D", "2024:01:02 10:00:00")
        assert exif.get(0x0112, 1) == 1  # the pixels are upright: no viewer may turn them again
        assert image.size == (32, 24)


def test_frames_without_metadata_give_plain_outputs(tmp_path, capsys, bracket8):
    out = tmp_path / "f.jpg"
    assert run(["fuse", *bracket8, "-o", out], capsys)[0] == 0
    with Image.open(out) as image:
        assert "icc_profile" not in image.info and len(image.getexif()) == 0


# ----------------------------------------------------------------------------------------------
# 11: each output records the settings it was made with; a re-run with others says so


@pytest.mark.parametrize("fmt", ["png", "jpg", "tif"])
def test_outputs_record_their_settings(tmp_path, capsys, frames8, fmt):
    import json

    from efusion.io import read_metadata, read_params

    folder = write_frames(tmp_path / "a", frames8)[0].parent
    params = tmp_path / "p.yaml"
    params.write_text("contrast: 0.5\nmu: [0.4, 0.5, 0.6]\n")
    out = tmp_path / "out"
    code, _, err = run(["fuse", folder, "--out-dir", out, "--format", fmt, "--params", params, "--levels", "3",
                        "--range", "robust", "-q"], capsys)
    assert code == 0, err
    record = json.loads(read_metadata(out / f"a.{fmt}").record)
    assert record["efusion"] == efusion.__version__
    expected = {"contrast": 0.5, "saturation": 1.0, "exposure": 1.0, "mu": [0.4, 0.5, 0.6], "sigma": 0.2, "levels": 3,
                "preset": "mertens"}
    assert record["settings"]["params"] == expected
    assert record["settings"]["range"] == "robust" and record["settings"]["clip"] == [1.0, 1.0]
    assert read_params(params)["contrast"] == record["settings"]["params"]["contrast"]


def test_rerun_with_other_settings_warns_and_keeps_the_result(tmp_path, capsys, frames8):
    folders = [write_frames(tmp_path / name, frames8)[0].parent for name in ("a", "b")]
    out = tmp_path / "out"
    assert run(["fuse", *folders, "--out-dir", out, "--contrast", "0.5"], capsys)[0] == 0
    before = (out / "a.png").read_bytes()
    code, stdout, err = run(["fuse", *folders, "--out-dir", out], capsys)
    assert code == 0
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and all("warning" in w and "contrast 0.5 -> 1" in w and "--force" in w for w in warnings), err
    assert str(out / "a.png") in warnings[0] and str(out / "b.png") in warnings[1]
    assert "2 made with other settings" in stdout
    assert (out / "a.png").read_bytes() == before
    # the same settings again: skipped quietly
    code, stdout, err = run(["fuse", *folders, "--out-dir", out, "--contrast", "0.5"], capsys)
    assert code == 0 and err == "" and "2 skipped" in stdout and "other settings" not in stdout
    # --force re-fuses with the new settings
    assert run(["fuse", *folders, "--out-dir", out, "--force", "-q"], capsys)[0] == 0
    assert (out / "a.png").read_bytes() != before
    code, _, err = run(["fuse", *folders, "--out-dir", out], capsys)
    assert code == 0 and err == ""


# ----------------------------------------------------------------------------------------------
# 6: a progress bar for one bracket too, on a terminal only


class Terminal:
    """A text stream that says it is a terminal, as tqdm asks before drawing."""

    def __init__(self):
        import io

        self.buffer = io.StringIO()

    def write(self, text):
        return self.buffer.write(text)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_single_bracket_shows_progress_on_a_terminal(tmp_path, monkeypatch, bracket8):
    import sys

    from efusion.cli import main

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["fuse", *map(str, bracket8), "-o", str(tmp_path / "f.png")]) == 0
    shown = terminal.buffer.getvalue()
    assert "/6" in shown and "frame" in shown, shown  # 3 frames, read in each of the 2 passes
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["fuse", *map(str, bracket8), "-o", str(tmp_path / "g.png"), "-q"]) == 0
    assert terminal.buffer.getvalue() == ""


def test_no_progress_when_not_a_terminal(tmp_path, capsys, bracket8):
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "f.png"], capsys)
    assert code == 0 and err == ""
