"""training.data.folders: SceneFolders (and the shared memorial bracket, skipped in a fresh clone)."""
from __future__ import annotations

import pytest
import torch

from efusion import io as efusion_io
from training.data import DatasetError, FusionDataModule, SceneFolders

from _data_cases import small_scene, write_bracket, write_hdr
from conftest import BURSTS, requires_shared


class TestSceneFolders:
    def test_smoke(self, tmp_path):
        stack = write_bracket(tmp_path / "s1")
        write_bracket(tmp_path / "s2", seed=1)
        ds = SceneFolders(root=str(tmp_path)).setup()
        assert len(ds) == 2
        item = ds[0]
        assert item["name"] == "s1"
        torch.testing.assert_close(item["frames"], stack, atol=0.5 / 255, rtol=0)
        assert item["target"].shape == (3, 16, 20) and "mask" not in item

    def test_crops_per_scene(self, tmp_path):
        write_bracket(tmp_path / "s", size=(24, 32))
        ds = SceneFolders(root=str(tmp_path), crops_per_scene=3, crop=16).setup()
        assert len(ds) == 3 and [ds[i]["name"] for i in range(3)] == ["s_0", "s_1", "s_2"]
        assert ds[2]["frames"].shape == (3, 3, 16, 16)

    def test_reference_dir_layout(self, tmp_path):
        write_bracket(tmp_path / "Dataset" / "1", reference=False)
        (tmp_path / "Dataset" / "Label").mkdir()
        efusion_io.write_image(tmp_path / "Dataset" / "Label" / "1.png", torch.rand(3, 16, 20))
        ds = SceneFolders(root=str(tmp_path / "Dataset"), reference_dir=str(tmp_path / "Dataset" / "Label")).setup()
        assert len(ds) == 1 and ds[0]["target"].shape == (3, 16, 20)

    def test_radiance_map_target_and_frame_selection(self, tmp_path):
        write_bracket(tmp_path / "s", frames=4, reference=False)
        write_hdr(tmp_path / "s" / "scene.hdr", small_scene(0, size=(16, 20)))
        item = SceneFolders(scenes=[str(tmp_path / "s")], frames=[0, -1], tonemap="reinhard").setup()[0]
        assert item["frames"].shape == (2, 3, 16, 20) and item["target"].shape == (3, 16, 20)

    def test_ignore_color_masks_marked_pixels(self, tmp_path):
        folder = tmp_path / "s"
        write_bracket(folder, reference=True)
        frame, _ = efusion_io.read_image(folder / "00.png")
        frame[:, :, :2] = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1)
        efusion_io.write_image(folder / "00.png", frame, overwrite=True)
        item = SceneFolders(scenes=[str(folder)], ignore_color=[0, 0, 255]).setup()[0]
        assert float(item["mask"][0, :, :, :2].max()) == 0.0
        assert float(item["mask"][0, :, :, 2:].min()) == 1.0 and float(item["mask"][1].min()) == 1.0

    def test_predict_without_reference(self, tmp_path):
        write_bracket(tmp_path / "s", reference=False)
        ds = SceneFolders(root=str(tmp_path), require_target=False, cache=False).setup()
        assert "target" not in ds[0]

    # -- faults: every message names the file or folder ---------------------------------------
    def test_empty_root(self, tmp_path):
        (tmp_path / "scene").mkdir()
        with pytest.raises(DatasetError, match=f"{tmp_path}: no scene folders"):
            SceneFolders(root=str(tmp_path)).setup()

    def test_empty_scene_folder(self, tmp_path):
        (tmp_path / "scene").mkdir()
        with pytest.raises(DatasetError, match="scene: no frames"):
            SceneFolders(scenes=[str(tmp_path / "scene")]).setup()

    def test_missing_reference(self, tmp_path):
        write_bracket(tmp_path / "s1")
        write_bracket(tmp_path / "s2", reference=False)
        with pytest.raises(DatasetError, match="s2: no reference image"):
            SceneFolders(root=str(tmp_path)).setup()

    def test_two_scenes_of_one_name(self, tmp_path):
        # predictions (<name>.png) and reference_dir files are named after the scene folder
        write_bracket(tmp_path / "a" / "s1")
        write_bracket(tmp_path / "b" / "s1", seed=1)
        with pytest.raises(DatasetError, match="two scenes named 's1'"):
            SceneFolders(scenes=[str(tmp_path / "a" / "s1"), str(tmp_path / "b" / "s1")]).setup()
        # one folder given twice (under root and by a path spelled otherwise) is one scene
        ds = SceneFolders(root=str(tmp_path / "a"), scenes=[str(tmp_path / "a" / ".." / "a" / "s1")]).setup()
        assert len(ds) == 1 and ds[0]["name"] == "s1"

    def test_two_references(self, tmp_path):
        write_bracket(tmp_path / "s")
        write_hdr(tmp_path / "s" / "scene.hdr", small_scene(0, size=(16, 20)))
        with pytest.raises(DatasetError, match="more than one reference"):
            SceneFolders(root=str(tmp_path)).setup()

    def test_frames_of_different_sizes(self, tmp_path):
        write_bracket(tmp_path / "s")
        efusion_io.write_image(tmp_path / "s" / "02.png", torch.rand(3, 16, 24), overwrite=True)
        with pytest.raises(DatasetError, match=r"02.png: frame is 24x16 but .*00.png is 20x16"):
            SceneFolders(root=str(tmp_path)).setup()

    def test_reference_of_another_size(self, tmp_path):
        write_bracket(tmp_path / "s")
        efusion_io.write_image(tmp_path / "s" / "reference.png", torch.rand(3, 8, 8), overwrite=True)
        with pytest.raises(DatasetError, match="reference.png: reference is 8x8"):
            SceneFolders(root=str(tmp_path)).setup()

    @pytest.mark.parametrize("name", ["01.png", "reference.png"])
    def test_unreadable_file(self, tmp_path, name):
        write_bracket(tmp_path / "s")
        (tmp_path / "s" / name).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        with pytest.raises(DatasetError, match=name.replace(".", r"\.")):
            SceneFolders(root=str(tmp_path)).setup()

    def test_single_frame(self, tmp_path):
        write_bracket(tmp_path / "s", frames=1)
        with pytest.raises(DatasetError, match="only one frame"):
            SceneFolders(root=str(tmp_path)).setup()

    def test_module_setup_fails_before_training(self, tmp_path):
        write_bracket(tmp_path / "s", reference=False)
        dm = FusionDataModule(train=SceneFolders(root=str(tmp_path)))
        with pytest.raises(DatasetError, match="s: no reference image"):
            dm.setup("fit")


@requires_shared(BURSTS / "memorial" / "memorial.hdr")
def test_shared_memorial_frames_with_radiance_map():
    ds = SceneFolders(scenes=[str(BURSTS / "memorial")], frames=[2, 6, 10], ignore_color=[0, 0, 255], crop=64).setup()
    item = ds[0]
    assert item["frames"].shape == (3, 3, 64, 64) and item["target"].shape == (3, 64, 64)
    whole = ds._items[0]
    assert whole["frames"].shape == (3, 3, 768, 512)
    assert float(whole["mask"].mean()) < 1.0  # the blue borders of the registered scans are ignored
