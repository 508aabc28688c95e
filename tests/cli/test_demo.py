"""``efusion demo``."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _cli_helpers import assert_one_error_line, run
from _image_files import leftovers


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
