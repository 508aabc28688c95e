"""The ``efusion`` command line, in-process through ``main(argv)`` and as ``python -m efusion``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import efusion
from efusion.cli import main
from efusion.io import list_frames, read_bracket, read_image, robust_normalize

from conftest import BURSTS, burst_frames, load_burst_uint8, requires_shared
from test_io import leftovers, save_png16, scene


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_frames(folder: Path, frames: np.ndarray, suffix: str = ".png", **save) -> list[Path]:
    """Save ``[N, H, W, C]`` uint8 frames with Pillow as ``folder/0<suffix>``, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        paths.append(folder / f"{i}{suffix}")
        Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame).save(paths[-1], **save)
    return paths


def as_stack(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float ``[N, C, H, W]`` the way a user would in memory."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255


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


@pytest.fixture
def frames8() -> np.ndarray:
    return (scene() * 255).round().astype(np.uint8)


@pytest.fixture
def bracket8(tmp_path, frames8) -> list[Path]:
    return write_frames(tmp_path / "bracket", frames8)


# ----------------------------------------------------------------------------------------------
# Fusing files


class TestFuse:
    def test_files_to_png(self, tmp_path, capsys, bracket8, frames8):
        out = tmp_path / "fused.png"
        code, stdout, err = run(["fuse", *bracket8, "-o", out], capsys)
        assert code == 0 and err == ""
        assert f"wrote {out}" in stdout and "3 frames" in stdout
        expected = efusion.exposure_fusion(as_stack(frames8)).clamp(0, 1)
        written = np.asarray(Image.open(out))
        assert written.dtype == np.uint8 and written.shape == (24, 32, 3)
        assert torch.equal(torch.from_numpy(written).permute(2, 0, 1), (expected * 255).round().to(torch.uint8))
        assert leftovers(tmp_path) == []

    def test_a_frame_given_twice_is_fused_twice_with_a_warning(self, tmp_path, capsys, bracket8, frames8):
        out = tmp_path / "fused.png"
        twice = tmp_path / "bracket" / ".." / "bracket" / bracket8[1].name  # the same file, spelled otherwise
        code, _, err = run(["fuse", *bracket8, twice, "-o", out], capsys)
        assert code == 0
        warning = "efusion: warning: {} is given twice (frames {}); it counts twice in the fusion"
        assert err.strip() == warning.format(twice, "2 and 4")
        expected = efusion.exposure_fusion(as_stack(frames8[[0, 1, 2, 1]])).clamp(0, 1)
        written = torch.from_numpy(np.asarray(Image.open(out))).permute(2, 0, 1)
        assert torch.equal(written, (expected * 255).round().to(torch.uint8))
        big = write_frames(tmp_path / "big", np.repeat(np.repeat(frames8, 2, axis=1), 2, axis=2))  # MEF-SSIM: >= 44 px
        code, _, err = run(["eval", *big, big[0]], capsys)
        assert code == 0 and err.strip() == warning.format(big[0], "1 and 4")

    def test_folder_to_float_tiff_equals_in_memory(self, tmp_path, capsys, bracket8, frames8):
        out = tmp_path / "fused.tif"
        code, _, _ = run(["fuse", bracket8[0].parent, "-o", out, "--bit-depth", "32"], capsys)
        assert code == 0
        result = read_tiff(out)
        assert result.dtype == torch.float32
        assert torch.equal(result, efusion.exposure_fusion(as_stack(frames8)))  # unclamped, bit for bit

    def test_16bit_png_round_trip_keeps_precision(self, tmp_path, capsys):
        # identical frames fuse to themselves (to ~1e-7), so every 16-bit code value must survive
        ramp = (np.linspace(0, 65535, 40 * 64).reshape(40, 64)).round().astype(np.uint16)
        image = np.stack([ramp, ramp[::-1], ramp.T.reshape(40, 64)], -1)
        for i in range(3):
            save_png16(tmp_path / f"f{i}.png", image)
        out = tmp_path / "fused.png"
        code, _, _ = run(["fuse", *[tmp_path / f"f{i}.png" for i in range(3)], "-o", out, "--dtype", "float64"], capsys)
        assert code == 0
        written, _ = read_image(out, dtype=torch.float64)
        codes = (written * 65535).round().to(torch.int64).permute(1, 2, 0).numpy()
        assert np.array_equal(codes, image)  # default depth for 16-bit frames is 16, and it is exact
        assert len(np.unique(codes)) > 2000

    def test_float_tiff_frames(self, tmp_path, capsys):
        frames = scene().astype(np.float32)
        paths = []
        for i, frame in enumerate(frames):
            paths.append(tmp_path / f"{i}.tif")
            tifffile.imwrite(paths[-1], frame, photometric="rgb")
        out = tmp_path / "fused.tif"
        code, _, _ = run(["fuse", *paths, "-o", out], capsys)
        assert code == 0
        result = read_tiff(out)
        assert result.dtype == torch.float32  # float frames give a float TIFF by default
        assert torch.equal(result, efusion.exposure_fusion(torch.from_numpy(frames).permute(0, 3, 1, 2)))

    def test_rgba_alpha_is_the_mask(self, tmp_path, capsys, frames8):
        rgba = np.concatenate([frames8, np.full(frames8.shape[:3] + (1,), 255, np.uint8)], -1)
        rgba[2, :, :16, 3] = 0  # the brightest frame does not count in the left half
        paths = write_frames(tmp_path / "b", rgba)
        out = tmp_path / "fused.tif"
        code, _, _ = run(["fuse", *paths, "-o", out, "--bit-depth", "32"], capsys)
        assert code == 0
        mask = torch.from_numpy(rgba[..., 3:]).permute(0, 3, 1, 2).float() / 255
        expected = efusion.exposure_fusion(as_stack(frames8), mask=mask)
        assert torch.equal(read_tiff(out), expected)
        assert not torch.allclose(expected, efusion.exposure_fusion(as_stack(frames8)))

    def test_gray_frames_give_gray_output(self, tmp_path, capsys, frames8):
        paths = write_frames(tmp_path / "g", frames8[..., :1])
        out = tmp_path / "fused.png"
        assert run(["fuse", *paths, "-o", out], capsys)[0] == 0
        with Image.open(out) as image:
            assert image.mode == "L"
        expected = efusion.exposure_fusion(as_stack(frames8[..., :1])).clamp(0, 1)
        assert np.array_equal(np.asarray(Image.open(out)), (expected[0] * 255).round().to(torch.uint8).numpy())

    def test_exif_rotated_jpeg_comes_out_upright(self, tmp_path, capsys, frames8):
        exif = Image.Exif()
        exif[0x0112] = 6  # stored landscape, shot portrait: turn 90 degrees clockwise
        paths = write_frames(tmp_path / "j", frames8, ".jpg", exif=exif, quality=95)
        out = tmp_path / "fused.png"
        assert run(["fuse", *paths, "-o", out], capsys)[0] == 0
        with Image.open(out) as image:
            assert image.size == (24, 32)  # width x height: portrait

    @pytest.fixture
    def bracket6(self, tmp_path) -> list[Path]:
        """Six frames: three 8-bit RGBA (parts transparent), three 16-bit RGB."""
        frames = scene(n=6)
        folder = tmp_path / "six"
        folder.mkdir()
        for i, frame in enumerate(frames[:3]):
            rgba = np.concatenate([frame, np.ones(frame.shape[:2] + (1,))], -1)
            rgba[4 * i : 4 * i + 8, 5:20, 3] = 0.25 * i
            Image.fromarray((rgba * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
        for i, frame in enumerate(frames[3:], start=3):
            save_png16(folder / f"{i}.png", (frame * 65535).round().astype(np.uint16))
        return sorted(folder.iterdir())

    def test_result_equals_exposure_fusion_of_the_frames(self, tmp_path, capsys, bracket6):
        out = tmp_path / "fused.tif"
        assert run(["fuse", bracket6[0].parent, "-o", out, "--bit-depth", "32"], capsys)[0] == 0
        stack = read_bracket(bracket6)
        assert stack.frames.shape == (6, 3, 24, 32) and stack.mask is not None
        expected = efusion.exposure_fusion(stack.frames, mask=stack.mask)
        torch.testing.assert_close(read_tiff(out), expected, atol=1e-6, rtol=0)
        assert not torch.allclose(expected, efusion.exposure_fusion(stack.frames), atol=1e-3)  # the masks count

    def test_frames_are_streamed_not_stacked(self, tmp_path, capsys, bracket6, monkeypatch):
        import weakref

        import efusion.io as io

        real = io._decode_into
        decoded, alive_before = [], []

        def spy(info, frame, alpha):
            alive_before.append(sum(ref() is not None for ref in decoded))
            # a stack [N, C, H, W] would show up as a frame that is a view into a larger block
            assert frame.untyped_storage().nbytes() == frame.numel() * frame.element_size(), "decoded into a stack"
            real(info, frame, alpha)
            decoded.append(weakref.ref(frame))

        monkeypatch.setattr(io, "_decode_into", spy)
        out = tmp_path / "fused.tif"
        assert run(["fuse", *bracket6, "-o", out, "--bit-depth", "32"], capsys)[0] == 0
        assert len(decoded) == 2 * len(bracket6)  # read once per pass of fuse_frames, alpha with its frame
        # frames are let go after use: besides the first (kept for its checks) and the previous one,
        # none is alive when the next is decoded, so memory does not grow with the number of frames
        assert max(alive_before) <= 2, alive_before

    def test_half_precision(self, tmp_path, capsys, bracket8):
        out = tmp_path / "fused.tif"
        assert run(["fuse", *bracket8, "-o", out, "--bit-depth", "32", "--dtype", "float16"], capsys)[0] == 0
        stack = read_bracket(bracket8, dtype=torch.float16)
        assert torch.equal(read_tiff(out), efusion.exposure_fusion(stack.frames).float())

    def test_half_precision_16bit_frames(self, tmp_path, capsys):
        # 16-bit white (65535) is above float16's largest finite value: the frames must still be right
        frames = (scene() * 65535).round().astype(np.uint16)
        paths = [tmp_path / f"{i}.png" for i in range(len(frames))]
        for path, frame in zip(paths, frames):
            save_png16(path, frame)
        out = tmp_path / "fused.tif"
        assert run(["fuse", *paths, "-o", out, "--bit-depth", "32", "--dtype", "float16"], capsys)[0] == 0
        expected = efusion.exposure_fusion(torch.from_numpy(frames.astype(np.float64) / 65535).permute(0, 3, 1, 2))
        result = read_tiff(out)
        assert torch.isfinite(result).all()
        assert (result.double() - expected).abs().max() < 0.02  # float16 arithmetic

    def test_jpeg_output_quality(self, tmp_path, capsys, bracket8):
        sizes = []
        for quality in (30, 95):
            out = tmp_path / f"q{quality}.jpg"
            assert run(["fuse", *bracket8, "-o", out, "--quality", quality], capsys)[0] == 0
            sizes.append(out.stat().st_size)
        assert sizes[0] < sizes[1]

    def test_every_fusion_option(self, tmp_path, capsys, bracket8, frames8):
        out = tmp_path / "fused.tif"
        options = ["--contrast", "0.5", "--saturation", "2", "--exposure", "1.5", "--mu", "0.45", "--sigma", "0.3",
                   "--levels", "2.5", "--preset", "opencv"]
        assert run(["fuse", *bracket8, "-o", out, "--bit-depth", "32", *options], capsys)[0] == 0
        expected = efusion.exposure_fusion(
            as_stack(frames8), contrast=0.5, saturation=2.0, exposure=1.5, mu=0.45, sigma=0.3, levels=2.5, preset="opencv"
        )
        assert torch.equal(read_tiff(out), expected)

    def test_negative_levels_count_from_the_deepest(self, tmp_path, capsys, bracket8, frames8):
        out = tmp_path / "fused.tif"
        assert run(["fuse", *bracket8, "-o", out, "--bit-depth", "32", "--levels", "-2"], capsys)[0] == 0
        assert torch.equal(read_tiff(out), efusion.exposure_fusion(as_stack(frames8), levels=-2))

    @pytest.mark.parametrize("name", ["tuned.yaml", "tuned.json"])
    def test_params_file_and_flags_override(self, tmp_path, capsys, bracket8, frames8, name):
        efusion.io.write_params(tmp_path / name, {"contrast": 0.0, "saturation": 0.5, "levels": -2, "preset": "mertens"})
        out = tmp_path / "fused.tif"
        code, _, _ = run(["fuse", *bracket8, "-o", out, "--bit-depth", "32", "--params", tmp_path / name,
                          "--saturation", "1.5", "--levels", "auto"], capsys)
        assert code == 0
        expected = efusion.exposure_fusion(as_stack(frames8), contrast=0.0, saturation=1.5, levels=None)
        assert torch.equal(read_tiff(out), expected)

    def test_per_channel_params_file(self, tmp_path, capsys, bracket8, frames8):
        efusion.io.write_params(tmp_path / "tuned.json", {"mu": [0.4, 0.5, 0.6], "sigma": [0.25, 0.2, 0.3]})
        out = tmp_path / "fused.tif"
        assert run(["fuse", *bracket8, "-o", out, "--bit-depth", "32", "--params", tmp_path / "tuned.json"], capsys)[0] == 0
        expected = efusion.exposure_fusion(as_stack(frames8), mu=[0.4, 0.5, 0.6], sigma=[0.25, 0.2, 0.3])
        assert torch.equal(read_tiff(out), expected)

    def test_robust_range(self, tmp_path, capsys, bracket8, frames8):
        out = tmp_path / "fused.png"
        code, _, _ = run(["fuse", *bracket8, "-o", out, "--range", "robust", "--clip-black", "2", "--clip-white", "3",
                          "--bit-depth", "16"], capsys)
        assert code == 0
        expected = robust_normalize(efusion.exposure_fusion(as_stack(frames8)), black=2, white=3)
        written, _ = read_image(out)
        assert torch.equal(written, (expected * 65535).round() / 65535)
        assert written.min() == 0 and written.max() == 1

    def test_float_tiff_clipped_when_asked(self, tmp_path, capsys, bracket8):
        out = tmp_path / "fused.tif"
        assert run(["fuse", *bracket8, "-o", out, "--bit-depth", "32", "--range", "clip"], capsys)[0] == 0
        result = read_tiff(out)
        assert result.min() >= 0 and result.max() <= 1

    def test_force_overwrites(self, tmp_path, capsys, bracket8):
        out = tmp_path / "fused.png"
        out.write_bytes(b"old")
        assert run(["fuse", *bracket8, "-o", out, "--force"], capsys)[0] == 0
        assert Image.open(out).size == (32, 24)

    def test_creates_missing_output_folder(self, tmp_path, capsys, bracket8):
        out = tmp_path / "new" / "deeper" / "fused.png"
        assert run(["fuse", *bracket8, "-o", out], capsys)[0] == 0 and out.exists()

    @pytest.mark.parametrize("failure", [efusion.io.ImageIOError("disk full"), KeyboardInterrupt()])
    def test_failed_write_leaves_no_folder_it_created(self, tmp_path, capsys, bracket8, monkeypatch, failure):
        import efusion.cli as cli

        def failing_write(path, image, **kwargs):
            raise failure

        monkeypatch.setattr(cli, "write_image", failing_write)
        (tmp_path / "there").mkdir()
        code, _, _ = run(["fuse", *bracket8, "-o", tmp_path / "there" / "new" / "deeper" / "fused.png"], capsys)
        assert code in (1, 130)
        assert list((tmp_path / "there").iterdir()) == []  # as --out-dir, which removes the folder it made

    def test_inputs_untouched(self, tmp_path, capsys, bracket8):
        before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in bracket8}
        run(["fuse", bracket8[0].parent, "-o", tmp_path / "fused.png"], capsys)
        run(["fuse", bracket8[0].parent, "--out-dir", tmp_path / "outs"], capsys)
        assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in bracket8} == before
        assert sorted(p.name for p in bracket8[0].parent.iterdir()) == ["0.png", "1.png", "2.png"]


# ----------------------------------------------------------------------------------------------
# Batches


class TestBatch:
    @pytest.fixture
    def shoot(self, tmp_path, frames8) -> Path:
        root = tmp_path / "shoot"
        write_frames(root / "alpha", frames8)
        write_frames(root / "beta", frames8[:, ::-1].copy(), ".jpg")
        broken = write_frames(root / "gamma", frames8)
        Image.fromarray(frames8[0, :20]).save(broken[1])  # one frame of another size
        write_frames(root / "delta", frames8[:2])
        return root

    def folders(self, shoot: Path) -> list[Path]:
        return [shoot / name for name in ("alpha", "beta", "gamma", "delta")]

    def test_one_bad_bracket_does_not_stop_the_rest(self, tmp_path, capsys, shoot):
        out = tmp_path / "fused"
        code, stdout, err = run(["fuse", *self.folders(shoot), "--out-dir", out], capsys)
        assert code == 1
        assert_one_error_line(err, "gamma", "1.png", "32x20", "32x24")
        assert sorted(p.name for p in out.iterdir()) == ["alpha.png", "beta.png", "delta.png"]
        assert "3 done, 0 skipped (already there), 1 failed" in stdout

    def test_rerun_skips_finished_and_force_redoes(self, tmp_path, capsys, shoot):
        out = tmp_path / "fused"
        run(["fuse", *self.folders(shoot), "--out-dir", out], capsys)
        stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        code, stdout, _ = run(["fuse", *self.folders(shoot), "--out-dir", out], capsys)
        assert code == 1 and "0 done, 3 skipped (already there), 1 failed" in stdout
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
        (shoot / "gamma" / "1.png").unlink()  # fix the bad bracket, then finish the batch
        code, stdout, err = run(["fuse", *self.folders(shoot), "--out-dir", out, "--format", "png"], capsys)
        assert code == 0 and err == "" and "1 done, 3 skipped (already there), 0 failed" in stdout
        code, stdout, _ = run(["fuse", *self.folders(shoot), "--out-dir", out, "--force"], capsys)
        assert code == 0 and "4 done, 0 skipped" in stdout

    def test_interrupted_batch_leaves_no_partial_file_and_resumes(self, tmp_path, capsys, shoot, monkeypatch):
        import efusion.cli as cli

        folders = [shoot / "alpha", shoot / "beta", shoot / "delta"]
        out = tmp_path / "fused"
        real = cli.write_image
        calls = []

        def interrupted(path, image, **kwargs):
            calls.append(path)
            if len(calls) == 2:  # Ctrl-C in the middle of the second write
                def half_written(fh, *args, **kw):
                    fh.write(b"partial")
                    raise KeyboardInterrupt

                monkeypatch.setattr(tifffile, "imwrite", half_written)
            return real(path, image, **kwargs)

        monkeypatch.setattr(cli, "write_image", interrupted)
        code, _, err = run(["fuse", *folders, "--out-dir", out, "--format", "tif"], capsys)
        assert code == 130 and "interrupted" in err and "Traceback" not in err
        assert [p.name for p in out.iterdir()] == ["alpha.tif"]  # no half-written beta.tif, no temp file
        monkeypatch.undo()
        code, stdout, _ = run(["fuse", *folders, "--out-dir", out, "--format", "tif"], capsys)
        assert code == 0 and "2 done, 1 skipped" in stdout
        assert sorted(p.name for p in out.iterdir()) == ["alpha.tif", "beta.tif", "delta.tif"]

    def test_formats_and_depth(self, tmp_path, capsys, shoot):
        out = tmp_path / "fused"
        code, _, _ = run(["fuse", shoot / "alpha", "--out-dir", out, "--format", "tif", "--bit-depth", "16"], capsys)
        assert code == 0
        assert tifffile.imread(out / "alpha.tif").dtype == np.uint16

    def test_quiet(self, tmp_path, capsys, shoot):
        code, stdout, err = run(["fuse", shoot / "alpha", "--out-dir", tmp_path / "o", "-q"], capsys)
        assert code == 0 and stdout == "" and err == ""

    def test_same_name_twice_is_refused(self, tmp_path, capsys, shoot, frames8):
        write_frames(tmp_path / "other" / "alpha", frames8)
        code, _, err = run(["fuse", shoot / "alpha", tmp_path / "other" / "alpha", "--out-dir", tmp_path / "o"], capsys)
        assert code == 1
        assert_one_error_line(err, "would both be written to")
        assert not (tmp_path / "o").exists()

    def test_results_are_named_after_the_folders_as_given(self, tmp_path, capsys, shoot, monkeypatch):
        # a symlinked bracket folder is named by the link (the name the user gave), "." by the working folder
        (tmp_path / "scene-1").symlink_to(shoot / "alpha", target_is_directory=True)
        monkeypatch.chdir(shoot / "beta")
        code, _, _ = run(["fuse", tmp_path / "scene-1", ".", f"..{os.sep}delta{os.sep}", "--out-dir", tmp_path / "o"], capsys)
        assert code == 0
        assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["beta.png", "delta.png", "scene-1.png"]

    def test_output_folder_inside_inputs_is_refused(self, tmp_path, capsys, shoot):
        code, _, err = run(["fuse", shoot / "alpha", "--out-dir", shoot / "alpha"], capsys)
        assert code == 1
        assert_one_error_line(err, "is also an input folder")


# ----------------------------------------------------------------------------------------------
# Bad input: one line on stderr naming the file, a non-zero exit, nothing written


class TestBadInput:
    def check(self, capsys, argv, out: Path, *needles: str, code: int = 1) -> None:
        existed = out.exists()
        before = out.read_bytes() if existed and out.is_file() else None
        status, stdout, err = run(argv, capsys)
        assert status == code, (status, err)
        assert_one_error_line(err, *needles)
        assert stdout == ""
        if existed:
            assert before is None or out.read_bytes() == before
        else:
            assert not out.exists()
        if out.parent.is_dir():
            assert leftovers(out.parent) == []

    def test_missing_file(self, tmp_path, capsys, bracket8):
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", bracket8[0], tmp_path / "nope.jpg", "-o", out], out, "nope.jpg", "no such file")

    def test_truncated_image(self, tmp_path, capsys, bracket8):
        data = bracket8[1].read_bytes()
        bracket8[1].write_bytes(data[: len(data) // 2])
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", *bracket8, "-o", out], out, str(bracket8[1]))

    def test_not_an_image(self, tmp_path, capsys, bracket8):
        bracket8[2].write_text("not pixels")
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", *bracket8, "-o", out], out, str(bracket8[2]), "not a PNG image")

    def test_unsupported_format(self, tmp_path, capsys, bracket8):
        gif = tmp_path / "frame.gif"
        Image.new("RGB", (32, 24)).save(gif)
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", *bracket8, gif, "-o", out], out, "frame.gif", "unsupported format '.gif'")

    def test_unsupported_output_format(self, tmp_path, capsys, bracket8):
        out = tmp_path / "fused.bmp"
        self.check(capsys, ["fuse", *bracket8, "-o", out], out, "fused.bmp", "unsupported output format")

    def test_depth_the_format_cannot_hold(self, tmp_path, capsys, bracket8):
        out = tmp_path / "fused.jpg"
        self.check(capsys, ["fuse", *bracket8, "-o", out, "--bit-depth", "16"], out, "fused.jpg", "JPEG holds 8-bit")
        outs = tmp_path / "outs"  # no file is named yet: the message names the options, not a made-up file
        self.check(capsys, ["fuse", bracket8[0].parent, "--out-dir", outs, "--format", "jpg", "--bit-depth", "16"], outs,
                   "--format jpg", "--bit-depth 16", "8-bit")
        _, _, err = run(["fuse", bracket8[0].parent, "--out-dir", outs, "--format", "jpg", "--bit-depth", "16"], capsys)
        assert "result.jpg" not in err

    def test_frames_of_different_sizes(self, tmp_path, capsys, bracket8, frames8):
        Image.fromarray(frames8[2, :, :30]).save(bracket8[2])
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", *bracket8, "-o", out], out, str(bracket8[2]), "30x24", str(bracket8[0]), "32x24")

    def test_folder_without_images(self, tmp_path, capsys):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no frames here")
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", tmp_path / "empty", "-o", out], out, "empty", "no image files")

    def test_folder_without_images_in_batch(self, tmp_path, capsys):
        (tmp_path / "empty").mkdir()
        out = tmp_path / "outs"
        status, stdout, err = run(["fuse", tmp_path / "empty", "--out-dir", out], capsys)
        assert status == 1 and "0 done, 0 skipped (already there), 1 failed" in stdout
        assert_one_error_line(err, "empty", "no image files")
        assert not out.exists()  # the output folder it created is removed again when nothing was written
        status, _, _ = run(["fuse", tmp_path / "empty", "--out-dir", tmp_path / "new" / "deeper" / "outs"], capsys)
        assert status == 1 and not (tmp_path / "new").exists()  # and so are the folders it created for it

    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    @pytest.mark.parametrize("dtype", ["float32", "float16"])
    def test_float_frame_with_non_finite_samples(self, tmp_path, capsys, bad, dtype):
        # one bad sample would otherwise spread over most of the result through the pyramid
        frames = scene().astype(np.float32)
        frames[1, 3, 4, 0] = bad
        paths = []
        for i, frame in enumerate(frames):
            paths.append(tmp_path / f"{i}.tif")
            tifffile.imwrite(paths[-1], frame, photometric="rgb")
        for suffix in (".png", ".tif"):
            out = tmp_path / f"fused{suffix}"
            self.check(capsys, ["fuse", *paths, "-o", out, "--dtype", dtype], out, str(paths[1]), "NaN or infinite")

    def test_output_exists(self, tmp_path, capsys, bracket8):
        out = tmp_path / "fused.png"
        out.write_bytes(b"precious")
        self.check(capsys, ["fuse", *bracket8, "-o", out], out, "fused.png", "already exists", "--force")

    def test_output_is_an_input(self, tmp_path, capsys, bracket8):
        self.check(capsys, ["fuse", *bracket8, "-o", bracket8[0], "--force"], bracket8[0], "is one of the input frames")

    @pytest.mark.parametrize("force", [[], ["--force"]])
    def test_output_inside_the_input_folder(self, tmp_path, capsys, bracket8, force):
        # a result written there would be fused as one more frame of the bracket on the next run
        folder = bracket8[0].parent
        out = folder / "fused.png"
        self.check(capsys, ["fuse", folder, "-o", out, *force], out, str(out), "input folder", "read as a frame")
        assert list_frames(folder) == bracket8
        # a hidden name is not listed as a frame, and frame files (not the folder) do not make a bracket of it
        assert run(["fuse", folder, "-o", folder / ".fused.png"], capsys)[0] == 0
        assert run(["fuse", *bracket8, "-o", out], capsys)[0] == 0

    def test_output_folder_is_a_file(self, tmp_path, capsys, bracket8):
        blocker = tmp_path / "blocker"
        blocker.write_text("a file where a folder should be")
        out = blocker / "fused.png"
        self.check(capsys, ["fuse", *bracket8, "-o", out], out, "blocker", "not a folder")
        status, _, err = run(["fuse", bracket8[0].parent, "--out-dir", blocker / "outs"], capsys)
        assert status == 1
        assert_one_error_line(err, "blocker", "not a folder")

    @pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
    def test_unwritable_output_folder(self, tmp_path, capsys, bracket8):
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            out = locked / "fused.png"
            self.check(capsys, ["fuse", *bracket8, "-o", out], out, "locked", "not writable")
        finally:
            locked.chmod(0o755)

    def test_params_unknown_key(self, tmp_path, capsys, bracket8):
        (tmp_path / "p.yaml").write_text("contrast: 1\ngama: 2.2\n")
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", *bracket8, "-o", out, "--params", tmp_path / "p.yaml"], out, "p.yaml", "'gama'")

    def test_params_bad_value(self, tmp_path, capsys, bracket8):
        (tmp_path / "p.json").write_text('{"sigma": -0.1}')
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", *bracket8, "-o", out, "--params", tmp_path / "p.json"], out, "p.json", "'sigma' must be > 0")

    def test_params_missing(self, tmp_path, capsys, bracket8):
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", *bracket8, "-o", out, "--params", tmp_path / "p.yaml"], out, "p.yaml", "no such file")

    def test_bad_option_value(self, tmp_path, capsys, bracket8):
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", *bracket8, "-o", out, "--levels", "0.5"], out, "'levels' must be >= 1", code=2)

    def test_clip_percentages_too_large(self, tmp_path, capsys, bracket8):
        out = tmp_path / "fused.png"
        clip = ["--range", "robust", "--clip-black", "60", "--clip-white", "40"]
        self.check(capsys, ["fuse", *bracket8, "-o", out, *clip], out, "--clip-black + --clip-white", "60.0 + 40.0")
        demo = tmp_path / "demo"
        self.check(capsys, ["demo", "--out-dir", demo, *clip], demo, "--clip-black + --clip-white")

    def test_folders_with_single_output(self, tmp_path, capsys, bracket8):
        other = write_frames(tmp_path / "other", (scene() * 255).astype(np.uint8))
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", bracket8[0].parent, other[0].parent, "-o", out], out, "is a folder", "--out-dir", code=2)

    def test_format_disagreeing_with_the_output_name(self, tmp_path, capsys, bracket8):
        # --format names the type of --out-dir results; with -o it must not be silently ignored
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", *bracket8, "-o", out, "--format", "jpg"], out, "--format jpg", "fused.png", code=2)
        for name, fmt in (("fused.jpeg", "jpg"), ("fused.TIFF", "tif"), ("fused.png", "png")):
            assert run(["fuse", *bracket8, "-o", tmp_path / name, "--format", fmt], capsys)[0] == 0

    def test_files_with_out_dir(self, tmp_path, capsys, bracket8):
        out = tmp_path / "outs"
        self.check(capsys, ["fuse", *bracket8, "--out-dir", out], out, "is a file", "-o OUT", code=2)

    def test_fusion_failure_names_the_bracket(self, tmp_path, capsys, bracket8, monkeypatch):
        def out_of_memory(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

        monkeypatch.setattr(efusion, "exposure_fusion", out_of_memory)
        monkeypatch.setattr(efusion, "fuse_frames", out_of_memory)  # what fuse calls in float32/64
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", bracket8[0].parent, "-o", out], out, "bracket", "out of memory")
        status, stdout, err = run(["fuse", bracket8[0].parent, "--out-dir", tmp_path / "outs"], capsys)
        assert status == 1 and "1 failed" in stdout
        assert_one_error_line(err, "bracket", "out of memory")

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
    def test_cuda_unavailable(self, tmp_path, capsys, bracket8):
        out = tmp_path / "fused.png"
        self.check(capsys, ["fuse", *bracket8, "-o", out, "--device", "cuda"], out, "--device cuda", "no CUDA device")

    def test_usage_errors_exit_2(self, tmp_path, capsys, bracket8):
        out = tmp_path / "f.png"
        status, _, err = run(["fuse", *bracket8], capsys)  # neither -o nor --out-dir
        assert status == 2
        assert err.strip() == (
            "efusion fuse: error: one of the arguments -o/--output --out-dir is required (see 'efusion fuse --help')"
        )
        status, _, err = run(["fuse", *bracket8, "-o", out, "--sigma", "wide"], capsys)
        assert status == 2 and len(err.strip().splitlines()) == 1 and "--sigma" in err and "got 'wide'" in err
        status, _, err = run([], capsys)
        assert status == 2 and "required: COMMAND" in err
        assert not out.exists()


# ----------------------------------------------------------------------------------------------
# Demo, help, and the module entry point


class TestDemo:
    def test_writes_result_and_contact_sheet(self, tmp_path, capsys):
        out = tmp_path / "demo"
        code, stdout, err = run(["demo", "--out-dir", out, "--height", "40", "--width", "56", "--frames", "3"], capsys)
        assert code == 0 and err == ""
        assert str(out / "fused.png") in stdout and str(out / "contact-sheet.png") in stdout
        with Image.open(out / "fused.png") as fused:
            assert fused.size == (56, 40)
        with Image.open(out / "contact-sheet.png") as sheet:
            assert sheet.size == (4 * 56 + 5 * 8, 2 * 40 + 3 * 8)  # 3 frames + result; frames over weights
        assert sorted(p.name for p in (out / "frames").iterdir()) == ["frame-0.png", "frame-1.png", "frame-2.png"]
        assert leftovers(out) == []

        # the frames it wrote fuse to the same result from the command line
        code, _, _ = run(["fuse", out / "frames", "-o", tmp_path / "again.png"], capsys)
        assert code == 0
        assert np.abs(np.asarray(Image.open(tmp_path / "again.png"), float) - np.asarray(Image.open(out / "fused.png"), float)).max() <= 2

        before = (out / "fused.png").read_bytes()
        code, _, err = run(["demo", "--out-dir", out, "--height", "40", "--width", "56"], capsys)
        assert code == 1
        assert_one_error_line(err, "already exists", "--force")
        assert (out / "fused.png").read_bytes() == before
        code, _, _ = run(["demo", "--out-dir", out, "--height", "40", "--width", "56", "--force", "--contrast", "0"], capsys)
        assert code == 0 and (out / "fused.png").read_bytes() != before

    @pytest.mark.parametrize("where", ["default", "./efusion-demo/", "forced"])
    def test_rerun_with_fewer_frames_leaves_only_its_frames(self, tmp_path, capsys, monkeypatch, where):
        # the printed hint fuses the frames folder: frames of an earlier, longer run must not stay in it
        monkeypatch.chdir(tmp_path)
        size = ["--height", "40", "--width", "56"]
        out_dir = [] if where == "default" else ["--out-dir", "efusion-demo" if where == "forced" else where]
        force = ["--force"] if where == "forced" else []
        assert run(["demo", *size, "--frames", "4", "--out-dir", "efusion-demo"], capsys)[0] == 0
        (tmp_path / "efusion-demo" / "frames" / "notes.txt").write_text("not a demo frame")
        code, stdout, err = run(["demo", *size, "--frames", "2", "--seed", "3", *out_dir, *force], capsys)
        assert code == 0 and err == ""
        frames = tmp_path / "efusion-demo" / "frames"
        assert sorted(p.name for p in frames.iterdir()) == ["frame-0.png", "frame-1.png", "notes.txt"]
        code, stdout, _ = run(["fuse", frames, "-o", tmp_path / "again.png"], capsys)
        assert code == 0 and "2 frames" in stdout


def test_help_reads_well(capsys):
    code, stdout, _ = run(["--help"], capsys)
    assert code == 0 and "fuse" in stdout and "demo" in stdout and "examples:" in stdout
    code, stdout, _ = run(["fuse", "--help"], capsys)
    assert code == 0
    for option in ("--contrast", "--saturation", "--exposure", "--mu", "--sigma", "--levels", "--preset", "--params",
                   "--device", "--dtype", "--bit-depth", "--quality", "--range", "--force", "--out-dir"):
        assert option in stdout
    assert run(["--version"], capsys)[0] == 0


def python_m(*argv, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("EFUSION_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "efusion", *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True)


def test_python_m_efusion(tmp_path, bracket8):
    done = python_m("fuse", bracket8[0].parent, "-o", "fused.jpg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fused.jpg").exists() and "wrote fused.jpg" in done.stdout
    failed = python_m("fuse", "missing.png", bracket8[0], "-o", "other.png", cwd=tmp_path)
    assert failed.returncode == 1
    assert failed.stderr.strip() == "efusion: error: missing.png: no such file"
    assert not (tmp_path / "other.png").exists()


# ----------------------------------------------------------------------------------------------
# Real brackets


@requires_shared(BURSTS)
@pytest.mark.parametrize("burst", ["frobisher", "mef_ma/Mask"])
def test_real_bracket_file_result_equals_in_memory(tmp_path, capsys, burst):
    folder = BURSTS / burst
    if not folder.exists():
        pytest.skip(f"{folder} not found")
    out = tmp_path / "fused.tif"
    code, _, err = run(["fuse", *burst_frames(folder), "-o", out, "--bit-depth", "32", "--device", "cpu"], capsys)
    assert code == 0, err
    expected = efusion.exposure_fusion(torch.from_numpy(load_burst_uint8(folder)).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(read_tiff(out), expected)
    assert expected.min() < 0 or expected.max() > 1  # the file really is unclamped



class TestMistakenFloatInputs:
    """Issue 12, item 5: float files beyond MAX_SAMPLE = 2 (unscaled 8/16-bit data) or with NaN are refused."""

    def _bracket(self, folder: Path, frames: np.ndarray) -> Path:
        folder.mkdir()
        for i, frame in enumerate(frames):
            tifffile.imwrite(folder / f"{i}.tif", frame, photometric="rgb")
        return folder

    def test_unscaled_float_tiff_is_refused_in_one_line(self, tmp_path, capsys, frames8):
        folder = self._bracket(tmp_path / "b", frames8.astype(np.float32))  # 0..255 stored as float
        code, _, err = run(["fuse", folder, "-o", tmp_path / "out.tif"], capsys)
        assert code != 0 and not (tmp_path / "out.tif").exists()
        assert_one_error_line(err, "above 2", "divide 8-bit images by 255")

    def test_nan_in_a_float_tiff_is_refused_in_one_line(self, tmp_path, capsys, frames8):
        frames = frames8.astype(np.float32) / 255
        frames[1, 3, 4, :] = np.nan
        folder = self._bracket(tmp_path / "b", frames)
        code, _, err = run(["fuse", folder, "-o", tmp_path / "out.tif"], capsys)
        assert code != 0
        assert_one_error_line(err, "1.tif", "NaN or infinite")  # efusion.io refuses the file itself

    def test_mild_overshoot_is_accepted(self, tmp_path, capsys, frames8):
        folder = self._bracket(tmp_path / "b", frames8.astype(np.float32) / 255 * 1.5)
        code, _, _ = run(["fuse", folder, "-o", tmp_path / "out.tif", "--bit-depth", "32"], capsys)
        assert code == 0 and np.isfinite(tifffile.imread(tmp_path / "out.tif")).all()
