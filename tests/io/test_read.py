"""efusion.io.read: reading frames and brackets (scaling, orientation, alpha, lazy decoding, errors)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from efusion.io import (
    ImageIOError,
    list_frames,
    open_bracket,
    read_bracket,
    read_image,
)

from _image_files import save_png16, scene

# ----------------------------------------------------------------------------------------------
# Reading


class TestReadImage:
    def test_png8_rgb(self, tmp_path):
        pixels = (scene()[1] * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "a.png")
        image, alpha = read_image(tmp_path / "a.png")
        assert image.shape == (3, 24, 32) and image.dtype == torch.float32 and alpha is None
        assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)

    def test_jpeg_matches_pillow(self, tmp_path):
        Image.fromarray((scene()[1] * 255).astype(np.uint8)).save(tmp_path / "a.jpg", quality=90)
        image, _ = read_image(tmp_path / "a.jpg", dtype=torch.float64)
        expected = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB"))
        assert image.dtype == torch.float64
        assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1).double() / 255)

    def test_png16_keeps_precision(self, tmp_path):
        pixels = np.random.default_rng(1).integers(0, 65536, (24, 32, 3), dtype=np.uint16)
        save_png16(tmp_path / "a.png", pixels)
        bracket = read_bracket([tmp_path / "a.png"], dtype=torch.float64)
        assert bracket.bit_depth == 16
        expected = torch.from_numpy(pixels.astype(np.int64)).permute(2, 0, 1).double() / 65535
        assert torch.equal(bracket.frames[0], expected)
        assert len(torch.unique(bracket.frames)) > 2000  # far more levels than 8 bits hold

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_png16_in_half_precision_is_the_rounded_float64_value(self, tmp_path, dtype):
        # float16 cannot hold code values above 65504 (they become inf before the division)
        pixels = np.array([[[0, 1, 32768], [65503, 65534, 65535]]], dtype=np.uint16).repeat(3, 0)
        save_png16(tmp_path / "a.png", pixels)
        frame, _ = read_image(tmp_path / "a.png", dtype=dtype)
        expected = (torch.from_numpy(pixels.astype(np.int64)).permute(2, 0, 1).double() / 65535).to(dtype)
        assert frame.dtype == dtype and torch.isfinite(frame).all()
        assert torch.equal(frame, expected)
        (frame,) = open_bracket([tmp_path / "a.png"]).frames(dtype=dtype)
        assert torch.equal(frame, expected)

    def test_png16_gray_and_rgba(self, tmp_path):
        gray = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80
        save_png16(tmp_path / "g.png", gray)
        image, alpha = read_image(tmp_path / "g.png", dtype=torch.float64)
        assert image.shape == (1, 24, 32) and alpha is None
        assert torch.equal(image[0], torch.from_numpy(gray.astype(np.int64)).double() / 65535)
        rgba = np.random.default_rng(2).integers(0, 65536, (24, 32, 4), dtype=np.uint16)
        save_png16(tmp_path / "c.png", rgba)
        image, alpha = read_image(tmp_path / "c.png", dtype=torch.float64)
        assert torch.equal(alpha[0], torch.from_numpy(rgba[..., 3].astype(np.int64)).double() / 65535)
        assert torch.equal(image, torch.from_numpy(rgba[..., :3].astype(np.int64)).permute(2, 0, 1).double() / 65535)

    def test_gray_png(self, tmp_path):
        pixels = (scene()[1, ..., 0] * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "g.png")
        image, alpha = read_image(tmp_path / "g.png")
        assert image.shape == (1, 24, 32) and alpha is None
        assert torch.equal(image[0], torch.from_numpy(pixels).float() / 255)

    def test_rgba_alpha_becomes_mask(self, tmp_path):
        rgba = np.zeros((24, 32, 4), np.uint8)
        rgba[..., :3] = 200
        rgba[:, :16, 3] = 255
        Image.fromarray(rgba).save(tmp_path / "a.png")
        Image.fromarray(rgba[..., :3]).save(tmp_path / "b.png")
        bracket = read_bracket([tmp_path / "a.png", tmp_path / "b.png"])
        assert bracket.frames.shape == (2, 3, 24, 32)
        assert bracket.mask.shape == (2, 1, 24, 32)
        assert bracket.mask[0, 0, :, :16].eq(1).all() and bracket.mask[0, 0, :, 16:].eq(0).all()
        assert bracket.mask[1].eq(1).all()  # no alpha channel: fully opaque
        assert torch.allclose(bracket.frames, torch.full_like(bracket.frames, 200 / 255))  # straight colour

    def test_gray_alpha_png(self, tmp_path):
        la = np.stack([np.full((24, 32), 90, np.uint8), np.full((24, 32), 51, np.uint8)], -1)
        Image.fromarray(la, "LA").save(tmp_path / "a.png")
        image, alpha = read_image(tmp_path / "a.png")
        assert image.shape == (1, 24, 32) and torch.allclose(image, torch.tensor(90 / 255))
        assert torch.allclose(alpha, torch.tensor(51 / 255))

    def test_palette_png(self, tmp_path):
        Image.fromarray((scene()[1] * 255).astype(np.uint8)).convert("P").save(tmp_path / "p.png")
        image, alpha = read_image(tmp_path / "p.png")
        expected = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
        assert alpha is None and torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)

    @pytest.mark.parametrize("orientation", range(1, 9))
    def test_exif_orientation_like_pillow(self, tmp_path, orientation):
        pixels = (scene(16, 24)[1] * 255).astype(np.uint8)
        pixels[:4, :6] = (255, 0, 0)  # mark a corner
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(pixels).save(tmp_path / "a.jpg", exif=exif, quality=95)
        image, _ = read_image(tmp_path / "a.jpg")
        upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "a.jpg")).convert("RGB"))
        assert image.shape[1:] == upright.shape[:2]
        assert torch.equal(image, torch.from_numpy(upright.copy()).permute(2, 0, 1).float() / 255)

    def test_tiff_orientation(self, tmp_path):
        import tifffile

        pixels = np.arange(4 * 6, dtype=np.uint16).reshape(4, 6) * 1000
        tifffile.imwrite(tmp_path / "a.tif", pixels, extratags=[(274, "H", 1, 6, True)])
        image, _ = read_image(tmp_path / "a.tif", dtype=torch.float64)
        assert torch.equal(image[0], torch.from_numpy(np.rot90(pixels, -1).astype(np.int64)).double() / 65535)

    @pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
    def test_tiff_depths(self, tmp_path, dtype):
        import tifffile

        rng = np.random.default_rng(3)
        if dtype == np.float32:
            pixels = rng.uniform(-0.2, 1.5, (24, 32, 3)).astype(np.float32)  # kept as stored
            expected = torch.from_numpy(pixels).permute(2, 0, 1)
        else:
            top = np.iinfo(dtype).max
            pixels = rng.integers(0, top + 1, (24, 32, 3)).astype(dtype)
            expected = torch.from_numpy(pixels.astype(np.int64)).permute(2, 0, 1).float() / top
        tifffile.imwrite(tmp_path / "a.tif", pixels, photometric="rgb")
        bracket = read_bracket([tmp_path / "a.tif"])
        assert bracket.bit_depth == {np.uint8: 8, np.uint16: 16, np.float32: 32}[dtype]
        assert torch.equal(bracket.frames[0], expected)

    def test_tiff_planar_and_alpha(self, tmp_path):
        import tifffile

        rgba = np.random.default_rng(4).random((24, 32, 4)).astype(np.float32)
        tifffile.imwrite(tmp_path / "a.tif", np.moveaxis(rgba, -1, 0), photometric="rgb", planarconfig="separate",
                         extrasamples=["unassalpha"])
        image, alpha = read_image(tmp_path / "a.tif")
        assert torch.equal(image, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))
        assert torch.equal(alpha[0], torch.from_numpy(rgba[..., 3]))

    def test_mixed_gray_and_colour_frames(self, tmp_path):
        frames = (scene() * 255).astype(np.uint8)
        Image.fromarray(frames[0, ..., 1]).save(tmp_path / "0.png")
        Image.fromarray(frames[1]).save(tmp_path / "1.png")
        bracket = read_bracket([tmp_path / "0.png", tmp_path / "1.png"])
        assert bracket.frames.shape == (2, 3, 24, 32)
        assert torch.equal(bracket.frames[0], (torch.from_numpy(frames[0, ..., 1]).float() / 255).expand(3, -1, -1))

    def test_all_gray_stays_one_channel(self, tmp_path):
        for i, frame in enumerate((scene() * 255).astype(np.uint8)):
            Image.fromarray(frame[..., 0]).save(tmp_path / f"{i}.png")
        assert read_bracket(list_frames(tmp_path)).frames.shape == (3, 1, 24, 32)

    def test_16_bit_codes(self, tmp_path):
        # dtype=torch.uint16: the samples themselves, 8-bit ones times 257 (k / 255 = 257 k / 65535),
        # gray frames of a colour bracket repeated, as the float reading does
        rng = np.random.default_rng(5)
        eight = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        sixteen = rng.integers(0, 65536, (24, 32, 3), dtype=np.uint16)
        Image.fromarray(eight).save(tmp_path / "0.png")
        save_png16(tmp_path / "1.png", sixteen)
        Image.fromarray(eight[..., 0]).save(tmp_path / "2.png")
        paths = [tmp_path / "0.png", tmp_path / "1.png", tmp_path / "2.png"]
        codes = read_bracket(paths, dtype=torch.uint16).frames
        assert codes.dtype == torch.uint16 and codes.shape == (3, 3, 24, 32)
        as_int = codes.to(torch.int64)
        assert torch.equal(as_int[0], torch.from_numpy(eight.astype(np.int64) * 257).permute(2, 0, 1))
        assert torch.equal(as_int[1], torch.from_numpy(sixteen.astype(np.int64)).permute(2, 0, 1))
        assert torch.equal(as_int[2], torch.from_numpy(eight[..., 0].astype(np.int64) * 257).expand(3, -1, -1))
        # the same values as the float reading, exactly
        assert torch.equal(as_int.double() / 65535, read_bracket(paths, dtype=torch.float64).frames)
        lazy = open_bracket(paths).frames(dtype=torch.uint16)
        assert all(torch.equal(lazy[i], codes[i]) for i in range(3))

    def test_16_bit_codes_refuse_float_samples_and_alpha(self, tmp_path):
        import tifffile

        tifffile.imwrite(tmp_path / "f.tif", np.zeros((4, 4, 3), np.float32), photometric="rgb")
        with pytest.raises(TypeError, match="float samples: read it as a float dtype"):
            read_bracket([tmp_path / "f.tif"], dtype=torch.uint16)
        Image.new("RGBA", (4, 4)).save(tmp_path / "a.png")
        with pytest.raises(TypeError, match="an alpha channel: read it as a float dtype"):
            open_bracket([tmp_path / "a.png"]).frames(dtype=torch.uint16)


class TestOpenBracket:
    @pytest.fixture
    def paths(self, tmp_path):
        frames = (scene() * 255).round().astype(np.uint8)
        rgba = np.concatenate([frames, np.full(frames.shape[:3] + (1,), 255, np.uint8)], -1)
        rgba[0, :, :10, 3] = 0
        Image.fromarray(rgba[0]).save(tmp_path / "0.png")  # alpha
        Image.fromarray(frames[1, ..., 0]).save(tmp_path / "1.png")  # gray, no alpha
        Image.fromarray(frames[2]).save(tmp_path / "2.png")
        return list_frames(tmp_path)

    def test_frames_and_masks_equal_read_bracket(self, paths):
        stack = read_bracket(paths, dtype=torch.float64)
        bracket = open_bracket(paths)
        assert len(bracket) == 3 and bracket.shape == (3, 24, 32) and bracket.has_alpha and bracket.bit_depth == 8
        assert bracket.paths == stack.paths
        frames, masks = bracket.frames(dtype=torch.float64), bracket.masks(dtype=torch.float64)
        assert len(frames) == len(masks) == 3
        for i in range(3):
            assert torch.equal(frames[i], stack.frames[i]) and frames[i].dtype == torch.float64
            assert torch.equal(masks[i], stack.mask[i])  # ones for the frames without alpha
        assert torch.equal(masks[-3], stack.mask[0])  # the mask of frame 0 without frame 0 just before
        assert torch.equal(torch.stack(list(frames)), stack.frames)
        assert torch.equal(bracket.read(dtype=torch.float64).frames, stack.frames)
        with pytest.raises(IndexError):
            frames[3]

    def test_decodes_only_when_asked(self, paths, monkeypatch):
        from efusion.io import read as reading

        decoded = []
        real = reading._decode
        monkeypatch.setattr(reading, "_decode", lambda info: decoded.append(info.path.name) or real(info))
        bracket = open_bracket(paths)
        frames, masks = bracket.frames(), bracket.masks()
        assert decoded == []
        frames[2], masks[2]  # the alpha decoded with frame 2 serves its mask
        assert decoded == ["2.png"]
        masks[0]
        assert decoded == ["2.png", "0.png"]

    def test_no_alpha_no_masks(self, tmp_path):
        Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
        bracket = open_bracket([tmp_path / "a.png"])
        assert bracket.masks() is None and not bracket.has_alpha
        assert bracket.read_frame(0)[1] is None

    def test_header_errors_before_decoding(self, tmp_path):
        Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
        Image.new("RGB", (30, 24)).save(tmp_path / "b.png")
        with pytest.raises(ImageIOError, match="30x24"):
            open_bracket([tmp_path / "a.png", tmp_path / "b.png"])
        with pytest.raises(ImageIOError, match="no such file"):
            open_bracket([tmp_path / "a.png", tmp_path / "c.png"])
        with pytest.raises(TypeError, match="floating"):
            open_bracket([tmp_path / "a.png"]).frames(dtype=torch.uint8)


class TestReadErrors:
    def test_missing(self, tmp_path):
        with pytest.raises(ImageIOError, match=r"missing\.png: no such file"):
            read_bracket([tmp_path / "missing.png"])

    @pytest.mark.parametrize("name", ["a.gif", "a.bmp", "a"])
    def test_unsupported_format(self, tmp_path, name):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG")
        with pytest.raises(ImageIOError, match="unsupported format"):
            read_bracket([tmp_path / name])

    def test_not_an_image(self, tmp_path):
        (tmp_path / "a.png").write_text("hello")
        with pytest.raises(ImageIOError, match=r"a\.png: not a PNG image"):
            read_bracket([tmp_path / "a.png"])

    @pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
    def test_truncated(self, tmp_path, suffix):
        path = tmp_path / f"a{suffix}"
        Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageIOError, match=rf"a\{suffix}: "):
            read_bracket([path])

    def test_truncated_png16_is_quiet(self, tmp_path, capfd):
        save_png16(tmp_path / "a.png", np.random.default_rng(0).integers(0, 65536, (64, 64, 3), dtype=np.uint16))
        data = (tmp_path / "a.png").read_bytes()
        (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageIOError, match=r"a\.png: "):
            read_bracket([tmp_path / "a.png"])
        assert capfd.readouterr().err == ""  # no codec chatter on stderr

    def test_sizes_differ_names_both(self, tmp_path):
        Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
        Image.new("RGB", (30, 24)).save(tmp_path / "b.png")
        with pytest.raises(ImageIOError) as error:
            read_bracket([tmp_path / "a.png", tmp_path / "b.png"])
        message = str(error.value)
        assert "b.png" in message and "30x24" in message and "a.png" in message and "32x24" in message

    def test_unsupported_tiff_sample_type(self, tmp_path):
        import tifffile

        tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 4), np.int16))
        with pytest.raises(ImageIOError, match="unsupported TIFF sample type int16"):
            read_bracket([tmp_path / "a.tif"])

    def test_empty_and_integer_dtype(self, tmp_path):
        with pytest.raises(ImageIOError, match="at least one frame"):
            read_bracket([])
        Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
        with pytest.raises(TypeError, match="floating"):
            read_bracket([tmp_path / "a.png"], dtype=torch.uint8)



# ----------------------------------------------------------------------------------------------
# Import cost


def test_import_needs_only_torch():
    code = (
        "import sys, efusion, efusion.io, efusion.cli; "
        "loaded = [m for m in ('PIL', 'tifffile', 'yaml', 'cv2') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

