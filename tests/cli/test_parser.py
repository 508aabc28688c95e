"""efusion.cli.parser and the fusion options: values parsed once, checked by the library's own rules,
with messages that name the option and the value."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import efusion
from efusion.cli import build_parser
from efusion.presets import get_preset

from _cli_helpers import as_codes, assert_one_error_line, run
from _image_files import write_frames


def parse(*argv):
    return build_parser().parse_args(["fuse", "a.png", "-o", "out.png", *argv])


@pytest.mark.parametrize("text, pixels", [("768", 768), ("250M", 250_000_000), ("3m", 3_000_000)])
def test_pixel_counts(text, pixels):
    assert parse("--max-pixels", text).max_pixels == pixels


@pytest.mark.parametrize(
    "option, text, message",
    [
        ("--max-pixels", "lots", "expected a whole number of pixels (e.g. 250000000 or 250M), got 'lots'"),
        ("--max-pixels", "0M", "expected a number of pixels >= 1, got 0M"),
        ("--threads", "2M", "expected a whole number, got '2M'"),  # millions are for pixel counts only
        ("--threads", "0", "expected a number >= 1, got 0"),
    ],
)
def test_whole_number_messages(capsys, option, text, message):
    code, _, err = run(["fuse", "a.png", "-o", "out.png", option, text], capsys)
    assert code == 2
    assert err.strip() == f"efusion fuse: error: argument {option}: {message} (see 'efusion fuse --help')"


def test_per_channel_values():
    args = parse("--mu", "0.4,0.5,0.6", "--sigma", "0.2")
    assert args.mu == [0.4, 0.5, 0.6] and args.sigma == 0.2


def test_choices_come_from_the_io_tables():
    from efusion.io import OUTPUT_FORMATS
    from efusion.io.display import RANGES

    for name in OUTPUT_FORMATS:
        assert parse("--format", name).format == name
    for mode in RANGES:
        assert parse("--range", mode).range == mode


def library_accepts(**params) -> bool:
    try:
        efusion.exposure_fusion(torch.rand(2, 3, 8, 8), **params)
    except (ValueError, TypeError):
        return False
    return True


# ----------------------------------------------------------------------------------------------
# issue 16 item 8: ranges as the library's, per-channel lists, a clamped depth is reported


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
    expected = efusion.exposure_fusion(as_codes(frames8), mu=[0.4, 0.5, 0.6], sigma=[0.2, 0.25, 0.3])
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
    expected = efusion.exposure_fusion(as_codes(frames8), levels=maximum if deepest else 1).clamp(0, 1)
    assert (written - expected).abs().max() <= 0.5 / 255 + 1e-6


def test_depth_within_range_is_not_reported(tmp_path, capsys, bracket8):
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "f.png", "--levels", "-1"], capsys)
    assert code == 0 and err == ""
