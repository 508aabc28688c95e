"""``efusion fuse``: one bracket, batches, and bad input (one line on stderr naming the file)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import efusion
from efusion.io import list_frames, read_bracket, read_image, robust_normalize

from _cli_helpers import as_codes, as_stack, assert_one_error_line, read_tiff, run
from _image_files import leftovers, save_png16, scene, write_frames
from conftest import BURSTS, burst_frames, load_burst_uint8, requires_shared

# ----------------------------------------------------------------------------------------------
# Fusing files


class TestFuse:
    def test_files_to_png(self, tmp_path, capsys, bracket8, frames8):
        out = tmp_path / "fused.png"
        code, stdout, err = run(["fuse", *bracket8, "-o", out], capsys)
        assert code == 0 and err == ""
        assert f"wrote {out}" in stdout and "3 frames" in stdout
        expected = efusion.exposure_fusion(as_codes(frames8)).clamp(0, 1)
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
        expected = efusion.exposure_fusion(as_codes(frames8[[0, 1, 2, 1]])).clamp(0, 1)
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
        assert torch.equal(result, efusion.exposure_fusion(as_codes(frames8)))  # unclamped, bit for bit

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
        expected = efusion.exposure_fusion(as_codes(frames8[..., :1])).clamp(0, 1)
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

        from efusion.io import read as reading

        real = reading._decode_into
        decoded, alive_before = [], []

        def spy(info, frame, alpha):
            alive_before.append(sum(ref() is not None for ref in decoded))
            # a stack [N, C, H, W] would show up as a frame that is a view into a larger block
            assert frame.untyped_storage().nbytes() == frame.numel() * frame.element_size(), "decoded into a stack"
            real(info, frame, alpha)
            decoded.append(weakref.ref(frame))

        monkeypatch.setattr(reading, "_decode_into", spy)
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
        assert torch.equal(read_tiff(out), efusion.exposure_fusion(as_codes(frames8), levels=-2))

    @pytest.mark.parametrize("name", ["tuned.yaml", "tuned.json"])
    def test_params_file_and_flags_override(self, tmp_path, capsys, bracket8, frames8, name):
        efusion.io.write_params(tmp_path / name, {"contrast": 0.0, "saturation": 0.5, "levels": -2, "preset": "mertens"})
        out = tmp_path / "fused.tif"
        code, _, _ = run(["fuse", *bracket8, "-o", out, "--bit-depth", "32", "--params", tmp_path / name,
                          "--saturation", "1.5", "--levels", "auto"], capsys)
        assert code == 0
        expected = efusion.exposure_fusion(as_codes(frames8), contrast=0.0, saturation=1.5, levels=None)
        assert torch.equal(read_tiff(out), expected)

    def test_per_channel_params_file(self, tmp_path, capsys, bracket8, frames8):
        efusion.io.write_params(tmp_path / "tuned.json", {"mu": [0.4, 0.5, 0.6], "sigma": [0.25, 0.2, 0.3]})
        out = tmp_path / "fused.tif"
        assert run(["fuse", *bracket8, "-o", out, "--bit-depth", "32", "--params", tmp_path / "tuned.json"], capsys)[0] == 0
        expected = efusion.exposure_fusion(as_codes(frames8), mu=[0.4, 0.5, 0.6], sigma=[0.25, 0.2, 0.3])
        assert torch.equal(read_tiff(out), expected)

    def test_robust_range(self, tmp_path, capsys, bracket8, frames8):
        out = tmp_path / "fused.png"
        code, _, _ = run(["fuse", *bracket8, "-o", out, "--range", "robust", "--clip-black", "2", "--clip-white", "3",
                          "--bit-depth", "16"], capsys)
        assert code == 0
        expected = robust_normalize(efusion.exposure_fusion(as_codes(frames8)), black=2, white=3)
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
        from efusion.cli import fuse as cli

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
        from efusion.cli import fuse as cli

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
    expected = efusion.exposure_fusion(torch.from_numpy(load_burst_uint8(folder)).permute(0, 3, 1, 2))  # the CLI measures the codes exactly
    assert torch.equal(read_tiff(out), expected)
    assert expected.min() < 0 or expected.max() > 1  # the file really is unclamped


# ----------------------------------------------------------------------------------------------
# issue 16 item 9: -o names a folder; -o into folders that do not exist yet


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
# issue 16 item 12: a folder of bracket folders


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
# issue 16 item 7: the decompression-bomb limit can be raised


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
# issue 16 item 10: a batch stops at an error that would fail every bracket (no space, read-only, no permission)


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
    status, _, err = run(["fuse", *three_brackets, "--out-dir", out], capsys)
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
# issue 16 item 13: the reference frame's EXIF (orientation reset) and ICC profile are carried into the result

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
# issue 16 item 11: each output records the settings it was made with; a re-run with others says so


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
# issue 16 item 6: a progress bar for one bracket too, on a terminal only


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
