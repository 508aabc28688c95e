"""efusion.io.write: writing images (atomically), format and depth checks."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from efusion.io import (
    ImageIOError,
    OutputExistsError,
    check_output,
    default_bit_depth,
    read_bracket,
    read_image,
    write_image,
)

from _image_files import leftovers, scene

# ----------------------------------------------------------------------------------------------
# Writing


class TestWriteImage:
    @pytest.mark.parametrize("name, depth", [("a.png", 8), ("a.png", 16), ("a.tif", 8), ("a.tif", 16)])
    def test_integer_round_trip(self, tmp_path, name, depth):
        top = 2**depth - 1
        image = torch.from_numpy(scene()[1]).permute(2, 0, 1).float()
        write_image(tmp_path / name, image, bit_depth=depth)
        back = read_bracket([tmp_path / name])
        assert back.bit_depth == depth
        assert torch.equal(back.frames[0], (image * top).round() / top)
        assert leftovers(tmp_path) == []

    def test_float32_tiff_unclamped(self, tmp_path):
        image = torch.tensor([[-0.4, 0.25], [1.0, 1.8]]).expand(3, 2, 2).contiguous()
        write_image(tmp_path / "a.tif", image, bit_depth=32)
        back, _ = read_image(tmp_path / "a.tif")
        assert torch.equal(back, image)

    def test_integer_depths_clip_and_nan(self, tmp_path):
        image = torch.tensor([[-0.4, float("nan")], [0.5, 1.8]]).unsqueeze(0)
        write_image(tmp_path / "a.png", image)
        assert np.asarray(Image.open(tmp_path / "a.png")).tolist() == [[0, 0], [128, 255]]

    def test_jpeg_quality(self, tmp_path):
        image = torch.from_numpy(scene(64, 64)[1]).permute(2, 0, 1).float()
        write_image(tmp_path / "hi.jpg", image, quality=98)
        write_image(tmp_path / "lo.jpg", image, quality=20)
        assert (tmp_path / "lo.jpg").stat().st_size < (tmp_path / "hi.jpg").stat().st_size
        back, _ = read_image(tmp_path / "hi.jpg")
        assert (back - image).abs().mean() < 0.02

    def test_gray(self, tmp_path):
        write_image(tmp_path / "g.png", torch.full((1, 4, 5), 0.5), bit_depth=16)
        back, _ = read_image(tmp_path / "g.png")
        assert back.shape == (1, 4, 5)

    def test_never_overwrites_unless_asked(self, tmp_path):
        path = tmp_path / "a.png"
        path.write_bytes(b"precious")
        with pytest.raises(OutputExistsError, match="already exists"):
            write_image(path, torch.zeros(3, 4, 4))
        assert path.read_bytes() == b"precious" and leftovers(tmp_path) == []
        write_image(path, torch.zeros(3, 4, 4), overwrite=True)
        assert read_image(path)[0].eq(0).all()

    def test_concurrent_writers_write_once(self, tmp_path):
        from concurrent.futures import ThreadPoolExecutor

        def attempt(value: float) -> str:
            try:
                write_image(tmp_path / "a.png", torch.full((3, 8, 8), value))
                return "written"
            except OutputExistsError:
                return "refused"

        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(attempt, [0.1, 0.3, 0.5, 0.7, 0.9, 0.2, 0.4, 0.6]))
        assert outcomes.count("written") == 1 and outcomes.count("refused") == 7
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]

    def test_failed_encode_leaves_nothing(self, tmp_path, monkeypatch):
        import tifffile

        def broken(fh, *args, **kwargs):
            fh.write(b"half an image")
            raise KeyboardInterrupt  # interrupted mid-write

        monkeypatch.setattr(tifffile, "imwrite", broken)
        with pytest.raises(KeyboardInterrupt):
            write_image(tmp_path / "a.tif", torch.zeros(3, 4, 4))
        assert list(tmp_path.iterdir()) == []

    def test_permissions_follow_umask(self, tmp_path):
        write_image(tmp_path / "a.png", torch.zeros(3, 4, 4))
        umask = os.umask(0)
        os.umask(umask)
        assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o666 & ~umask

    def test_errors(self, tmp_path):
        image = torch.zeros(3, 4, 4)
        with pytest.raises(ImageIOError, match="JPEG holds 8-bit"):
            write_image(tmp_path / "a.jpg", image, bit_depth=16)
        with pytest.raises(ImageIOError, match="PNG holds 8-bit or 16-bit"):
            write_image(tmp_path / "a.png", image, bit_depth=32)
        with pytest.raises(ImageIOError, match="unsupported output format '.bmp'"):
            write_image(tmp_path / "a.bmp", image)
        with pytest.raises(ImageIOError, match="does not exist"):
            write_image(tmp_path / "missing" / "a.png", image)
        with pytest.raises(ValueError, match="C = 1 or 3"):
            write_image(tmp_path / "a.png", torch.zeros(2, 4, 4))
        with pytest.raises(TypeError, match="floating"):
            write_image(tmp_path / "a.png", torch.zeros(3, 4, 4, dtype=torch.uint8))
        assert list(tmp_path.iterdir()) == []

    def test_default_bit_depth(self):
        assert default_bit_depth("a.jpg", 16) == 8
        assert default_bit_depth("a.png", 8) == 8 and default_bit_depth("a.png", 16) == 16
        assert default_bit_depth("a.png", 32) == 16
        assert default_bit_depth("a.tif", 8) == 8 and default_bit_depth("a.TIFF", 32) == 32
        assert check_output("a.tif", 32) == 32


