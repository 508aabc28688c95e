"""efusion.io.files: bracket folders."""
from __future__ import annotations

import pytest

from efusion.io import (
    ImageIOError,
    list_frames,
)


class TestListFrames:
    def test_sorted_images_only(self, tmp_path):
        for name in ["b.PNG", "a.jpg", "c.tiff", "notes.txt", ".a.png.x1.part", "d.gif"]:
            (tmp_path / name).write_bytes(b"")
        (tmp_path / "sub.png").mkdir()
        assert [p.name for p in list_frames(tmp_path)] == ["a.jpg", "b.PNG", "c.tiff"]

    def test_errors(self, tmp_path):
        with pytest.raises(ImageIOError, match="no image files"):
            list_frames(tmp_path)
        with pytest.raises(ImageIOError, match="no such folder"):
            list_frames(tmp_path / "missing")
        (tmp_path / "f.png").write_bytes(b"")
        with pytest.raises(ImageIOError, match="not a folder"):
            list_frames(tmp_path / "f.png")


