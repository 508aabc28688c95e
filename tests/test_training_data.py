"""Training datasets, sampler and data module (training.data)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import efusion
from efusion import io as efusion_io
from efusion import synthetic
from training import data
from training.data import DatasetError, EpochSampler, FusionDataModule, RadianceMaps, SceneFolders, SyntheticScenes

from conftest import BURSTS, SHARED, requires_shared

HDR = SHARED / "data" / "hdr"


def _find(patch: torch.Tensor, image: torch.Tensor) -> tuple[int, int]:
    """Top-left corner of ``patch`` [C, h, w] inside ``image`` [C, H, W] (exact match)."""
    h, w = patch.shape[-2:]
    for top in range(image.shape[-2] - h + 1):
        for left in range(image.shape[-1] - w + 1):
            if torch.equal(image[:, top : top + h, left : left + w], patch):
                return top, left
    raise AssertionError("patch not found")


class TestSyntheticScenes:
    def test_smoke(self):
        ds = SyntheticScenes(length=3, size=[24, 32], ev=[-2, 0, 2]).setup()
        item = ds[0]
        assert len(ds) == 3
        assert item["frames"].shape == (3, 3, 24, 32)
        assert item["target"].shape == (3, 24, 32)
        assert 0 <= float(item["target"].min()) and float(item["target"].max()) <= 1
        assert item["name"] == "scene0"

    def test_deterministic_per_seed_epoch_index(self):
        ds = SyntheticScenes(length=2, size=40, crop=24, flip=True, seed=5)
        a, b = ds[(1, 3)], ds[(1, 3)]
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["target"], b["target"])
        assert torch.equal(ds[1]["frames"], ds[(1, 0)]["frames"])  # a plain index is epoch 0
        crops = {tuple(ds[(1, epoch)]["target"].flatten()[:5].tolist()) for epoch in range(6)}
        assert len(crops) > 1  # other epochs crop elsewhere

    def test_crop_and_flip_are_joint(self):
        full = SyntheticScenes(length=1, size=32, seed=3)[0]
        ds = SyntheticScenes(length=1, size=32, crop=[12, 16], flip=True, seed=3)
        for epoch in range(4):
            item = ds[(0, epoch)]
            target, frames = item["target"], item["frames"]
            flipped = False
            try:
                top, left = _find(target, full["target"])
            except AssertionError:
                flipped = True
                target, frames = target.flip(-1), frames.flip(-1)
                top, left = _find(target, full["target"])
            expected = full["frames"][..., top : top + 12, left : left + 16]
            assert torch.equal(frames, expected), f"epoch {epoch}: frames not cropped (or flipped={flipped}) like the target"

    def test_global_rng_untouched(self):
        ds = SyntheticScenes(length=1, size=24, crop=16, flip=True)
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        ds[(0, 7)]
        assert torch.equal(torch.rand(3), expected)

    def test_target_params(self):
        params = {"contrast": 0.5, "exposure": 2.0, "levels": 3}
        item = SyntheticScenes(length=1, size=32, target_params=params)[0]
        expected = efusion.exposure_fusion(item["frames"], **params)
        torch.testing.assert_close(item["target"], expected)

    def test_target_params_with_crop_and_flip(self):
        # a target made by the fusion must be what the hidden parameters give on the item the
        # model sees: the fusion of a crop is not the crop of the fusion (pyramid borders, the
        # automatic depth), nor is it flip-symmetric (pyramid subsampling phase)
        params = {"contrast": 0.4, "saturation": 1.7, "exposure": 2.5, "mu": 0.55, "levels": -2}
        for crop, flip in ((24, False), (None, True), ([24, 32], True)):
            ds = SyntheticScenes(length=3, size=[40, 48], crop=crop, flip=flip, target_params=params)
            for key in ((0, 0), (1, 1), (2, 5), (1, 2)):
                item = ds[key]
                expected = efusion.exposure_fusion(item["frames"], **params)
                torch.testing.assert_close(item["target"], expected, rtol=0, atol=1e-6,
                                           msg=f"crop={crop}, flip={flip}, key={key}")

    def test_target_params_with_crop_fuses_only_the_crop(self, monkeypatch):
        # the whole bracket's fusion would be thrown away: only the item the model sees is fused
        shapes = []
        fuse = efusion.exposure_fusion
        monkeypatch.setattr(efusion, "exposure_fusion", lambda frames, **kw: shapes.append(frames.shape[-2:]) or fuse(frames, **kw))
        for cache, resample in ((True, False), (False, False), (False, True)):
            shapes.clear()
            ds = SyntheticScenes(length=2, size=32, crop=16, cache=cache, resample=resample, target_params={"contrast": 0.5})
            ds.setup()
            ds[(1, 3)]
            assert shapes == [(16, 16)], f"cache={cache}, resample={resample}"
        shapes.clear()
        assert SyntheticScenes(length=1, size=32, crop=16, target_params={"contrast": 0.5}).render(0)["target"].shape == (3, 32, 32)

    def test_resample_draws_new_scenes(self):
        ds = SyntheticScenes(length=2, size=24, resample=True)
        assert not torch.equal(ds[(0, 0)]["frames"], ds[(0, 1)]["frames"])
        assert torch.equal(ds[(0, 1)]["frames"], ds[(0, 1)]["frames"])

    def test_exception(self):
        with pytest.raises(ValueError, match="length"):
            SyntheticScenes(length=0)
        with pytest.raises(ValueError, match="tonemap"):
            SyntheticScenes(tonemap="drago")
        with pytest.raises(ValueError, match="target_params"):
            SyntheticScenes(target_params={"contrst": 1.0})
        with pytest.raises(DatasetError, match="smaller than the crop"):
            SyntheticScenes(size=16, crop=32).setup()
        with pytest.raises(IndexError):
            SyntheticScenes(length=2, size=16)[2]


class TestSampling:
    def test_epoch_sampler(self):
        sampler = EpochSampler(range(10), num_replicas=1, rank=0, shuffle=True, seed=0)
        sampler.set_epoch(3)
        first = list(sampler)
        assert first == list(sampler)
        assert sorted(i for i, _ in first) == list(range(10))
        assert {e for _, e in first} == {3}
        sampler.set_epoch(4)
        assert [i for i, _ in sampler] != [i for i, _ in first]

    def test_epoch_sampler_ranks_partition(self):
        ranks = [EpochSampler(range(10), num_replicas=2, rank=r, shuffle=True, seed=1) for r in range(2)]
        indices = [i for s in ranks for i, _ in s]
        assert sorted(indices) == list(range(10))

    def test_collate_fills_missing_masks(self):
        items = [
            {"frames": torch.rand(2, 3, 4, 4), "target": torch.rand(3, 4, 4), "name": "a"},
            {"frames": torch.rand(2, 3, 4, 4), "target": torch.rand(3, 4, 4), "name": "b", "mask": torch.zeros(2, 1, 4, 4)},
        ]
        batch = data.collate(items)
        assert batch["mask"].shape == (2, 2, 1, 4, 4)
        assert float(batch["mask"][0].min()) == 1.0 and float(batch["mask"][1].max()) == 0.0
        assert batch["name"] == ["a", "b"]

    def test_collate_pads_shorter_bursts_with_masked_frames(self):
        # brackets of different lengths (SICE scenes hold 3 to 18 frames) batch by padding the
        # shorter ones with frames the mask removes; each fusion stays that of its own frames
        g = torch.Generator().manual_seed(0)
        short, long = torch.rand(3, 3, 8, 8, generator=g), torch.rand(5, 3, 8, 8, generator=g)
        alpha = torch.ones(3, 1, 8, 8)
        alpha[0, :, :2] = 0
        items = [
            {"frames": short, "target": torch.rand(3, 8, 8), "name": "a", "mask": alpha},
            {"frames": long, "target": torch.rand(3, 8, 8), "name": "b"},
        ]
        batch = data.collate(items)
        assert batch["frames"].shape == (2, 5, 3, 8, 8) and batch["mask"].shape == (2, 5, 1, 8, 8)
        assert torch.equal(batch["mask"][0, :3], alpha) and float(batch["mask"][0, 3:].max()) == 0.0
        assert float(batch["mask"][1].min()) == 1.0
        fused = efusion.exposure_fusion(batch["frames"], mask=batch["mask"])
        torch.testing.assert_close(fused[0], efusion.exposure_fusion(short, mask=alpha), rtol=0, atol=1e-6)
        torch.testing.assert_close(fused[1], efusion.exposure_fusion(long), rtol=0, atol=1e-6)

    def test_collate_scenes_with_and_without_reference(self):
        # require_target=False (the mef_ssim loss) over scenes of which only some have a
        # reference: the batch has no target rather than failing to batch
        items = [
            {"frames": torch.rand(2, 3, 4, 4), "target": torch.rand(3, 4, 4), "name": "a"},
            {"frames": torch.rand(2, 3, 4, 4), "name": "b"},
        ]
        batch = data.collate(items)
        assert "target" not in batch and batch["frames"].shape == (2, 2, 3, 4, 4) and batch["name"] == ["a", "b"]
        assert "target" in items[0]  # the dataset's own (possibly cached) item is left alone

    def test_collate_names_scenes_of_different_sizes(self):
        items = [{"frames": torch.rand(2, 3, 4, 4), "name": "a"}, {"frames": torch.rand(2, 3, 5, 4), "name": "b"}]
        with pytest.raises(DatasetError, match=r"\['a', 'b'\]"):
            data.collate(items)


class TestDataModule:
    def test_loaders(self):
        dm = FusionDataModule(
            train=SyntheticScenes(length=4, size=24, crop=16), val=SyntheticScenes(length=2, size=16, seed=99), batch_size=2
        )
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert batch["frames"].shape == (2, 3, 3, 16, 16)
        assert isinstance(dm.train_dataloader().sampler, EpochSampler)
        assert next(iter(dm.val_dataloader()))["target"].shape == (2, 3, 16, 16)
        assert dm.test_dataloader() == []

    def test_worker_processes_see_the_same_items(self):
        def first_batch(workers):
            dm = FusionDataModule(train=SyntheticScenes(length=4, size=24, crop=16, flip=True), batch_size=4,
                                  num_workers=workers)
            dm.setup("fit")
            loader = dm.train_dataloader()
            loader.sampler.set_epoch(2)
            return next(iter(loader))

        in_process, in_worker = first_batch(0), first_batch(1)
        assert in_process["name"] == in_worker["name"]
        assert torch.equal(in_process["frames"], in_worker["frames"])

    def test_scene_folders_with_different_frame_counts_batch(self, tmp_path):
        _write_bracket(tmp_path / "three", size=(24, 28), frames=3)
        _write_bracket(tmp_path / "four", size=(24, 28), frames=4, seed=1)
        dm = FusionDataModule(train=SceneFolders(root=str(tmp_path), crop=16), batch_size=2)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert batch["frames"].shape == (2, 4, 3, 16, 16)
        counts = {name: int((batch["mask"][i].flatten(1).amax(1) > 0).sum()) for i, name in enumerate(batch["name"])}
        assert counts == {"three": 3, "four": 4}

    def test_missing_stage_data(self):
        with pytest.raises(DatasetError, match="data.train"):
            FusionDataModule(val=SyntheticScenes(length=1, size=16)).setup("fit")
        with pytest.raises(DatasetError, match="data.predict"):
            FusionDataModule().setup("predict")


# ----------------------------------------------------------------------------------------------
# Files


def _write_hdr(path, radiance: torch.Tensor) -> None:
    import cv2

    bgr = radiance.permute(1, 2, 0).numpy()[:, :, ::-1].astype(np.float32)
    assert cv2.imwrite(str(path), np.ascontiguousarray(bgr))


def _write_exr(path, radiance: torch.Tensor) -> None:
    import OpenEXR

    rgb = radiance.permute(1, 2, 0).numpy().astype(np.float16)
    header = {"compression": OpenEXR.PIZ_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"RGB": np.ascontiguousarray(rgb)}) as exr:
        exr.write(str(path))


def _scene(seed: int, size=(20, 28)) -> torch.Tensor:
    return synthetic.hdr_scene(*size, seed=seed, dynamic_range_ev=8.0)


class TestReadRadiance:
    def test_hdr_and_exr(self, tmp_path):
        radiance = _scene(0)
        _write_hdr(tmp_path / "a.hdr", radiance)
        _write_exr(tmp_path / "b.exr", radiance)
        hdr = data.read_radiance(tmp_path / "a.hdr")
        exr = data.read_radiance(tmp_path / "b.exr")
        assert hdr.shape == exr.shape == radiance.shape
        # RGBE: 8-bit mantissas sharing the pixel's largest channel's exponent
        assert bool(((hdr - radiance).abs() <= 2**-7 * radiance.amax(0)).all())
        torch.testing.assert_close(exr, radiance, rtol=2e-3, atol=1e-4)  # half floats

    def test_errors_name_the_file(self, tmp_path):
        with pytest.raises(DatasetError, match="missing.hdr"):
            data.read_radiance(tmp_path / "missing.hdr")
        (tmp_path / "junk.exr").write_bytes(b"not an exr file")
        with pytest.raises(DatasetError, match="junk.exr"):
            data.read_radiance(tmp_path / "junk.exr")
        (tmp_path / "junk.hdr").write_bytes(b"not an hdr file")
        with pytest.raises(DatasetError, match="junk.hdr"):
            data.read_radiance(tmp_path / "junk.hdr")
        (tmp_path / "x.png").write_bytes(b"")
        with pytest.raises(DatasetError, match="not a radiance map"):
            data.read_radiance(tmp_path / "x.png")
        _write_hdr(tmp_path / "black.hdr", torch.zeros(3, 4, 4))
        with pytest.raises(DatasetError, match="black.hdr.*black"):
            data.read_radiance(tmp_path / "black.hdr")


class TestRadianceMaps:
    def test_folder_of_maps(self, tmp_path):
        _write_hdr(tmp_path / "a.hdr", _scene(1))
        _write_exr(tmp_path / "b.exr", _scene(2))
        ds = RadianceMaps([str(tmp_path)], crops_per_map=3, crop=16, tonemap="durand").setup()
        assert len(ds) == 6
        item = ds[4]
        assert item["frames"].shape == (3, 3, 16, 16) and item["target"].shape == (3, 16, 16)
        assert item["name"] == "b_1"

    def test_target_params_with_crops(self, tmp_path):
        _write_hdr(tmp_path / "a.hdr", _scene(1, size=(40, 48)))
        params = {"contrast": 0.4, "exposure": 2.5, "mu": 0.55}
        ds = RadianceMaps([str(tmp_path / "a.hdr")], crops_per_map=3, crop=24, flip=True, target_params=params)
        for key in ((0, 0), (1, 3), (2, 1)):
            item = ds[key]
            expected = efusion.exposure_fusion(item["frames"], **params)
            torch.testing.assert_close(item["target"], expected, rtol=0, atol=1e-6)

    def test_whole_maps_and_globs(self, tmp_path):
        _write_hdr(tmp_path / "a.hdr", _scene(1))
        ds = RadianceMaps([str(tmp_path / "*.hdr")], crop=None, scale=0.5).setup()
        assert len(ds) == 1 and ds[0]["frames"].shape == (3, 3, 10, 14)
        ds = RadianceMaps([str(tmp_path / "a.hdr")], crop=None, max_size=14).setup()
        assert ds[0]["target"].shape == (3, 10, 14)

    def test_errors(self, tmp_path):
        _write_hdr(tmp_path / "small.hdr", _scene(1, size=(8, 8)))
        with pytest.raises(DatasetError, match="small.hdr.*smaller than the crop"):
            RadianceMaps([str(tmp_path / "small.hdr")], crop=16).setup()
        with pytest.raises(DatasetError, match="nothing"):
            RadianceMaps([str(tmp_path / "nothing")]).setup()
        (tmp_path / "empty").mkdir()
        with pytest.raises(DatasetError, match="empty: no radiance map"):
            RadianceMaps([str(tmp_path / "empty")]).setup()


def _write_bracket(folder, size=(16, 20), frames=3, reference=True, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    stack = synthetic.bracket(*size, n_frames=frames, seed=seed)
    for n, frame in enumerate(stack):
        efusion_io.write_image(folder / f"{n:02d}.png", frame)
    if reference:
        efusion_io.write_image(folder / "reference.png", stack.mean(0))
    return stack


class TestSceneFolders:
    def test_smoke(self, tmp_path):
        stack = _write_bracket(tmp_path / "s1")
        _write_bracket(tmp_path / "s2", seed=1)
        ds = SceneFolders(root=str(tmp_path)).setup()
        assert len(ds) == 2
        item = ds[0]
        assert item["name"] == "s1"
        torch.testing.assert_close(item["frames"], stack, atol=0.5 / 255, rtol=0)
        assert item["target"].shape == (3, 16, 20) and "mask" not in item

    def test_crops_per_scene(self, tmp_path):
        _write_bracket(tmp_path / "s", size=(24, 32))
        ds = SceneFolders(root=str(tmp_path), crops_per_scene=3, crop=16).setup()
        assert len(ds) == 3 and [ds[i]["name"] for i in range(3)] == ["s_0", "s_1", "s_2"]
        assert ds[2]["frames"].shape == (3, 3, 16, 16)

    def test_reference_dir_layout(self, tmp_path):
        _write_bracket(tmp_path / "Dataset" / "1", reference=False)
        (tmp_path / "Dataset" / "Label").mkdir()
        efusion_io.write_image(tmp_path / "Dataset" / "Label" / "1.png", torch.rand(3, 16, 20))
        ds = SceneFolders(root=str(tmp_path / "Dataset"), reference_dir=str(tmp_path / "Dataset" / "Label")).setup()
        assert len(ds) == 1 and ds[0]["target"].shape == (3, 16, 20)

    def test_radiance_map_target_and_frame_selection(self, tmp_path):
        _write_bracket(tmp_path / "s", frames=4, reference=False)
        _write_hdr(tmp_path / "s" / "scene.hdr", _scene(0, size=(16, 20)))
        item = SceneFolders(scenes=[str(tmp_path / "s")], frames=[0, -1], tonemap="reinhard").setup()[0]
        assert item["frames"].shape == (2, 3, 16, 20) and item["target"].shape == (3, 16, 20)

    def test_ignore_color_masks_marked_pixels(self, tmp_path):
        folder = tmp_path / "s"
        _write_bracket(folder, reference=True)
        frame, _ = efusion_io.read_image(folder / "00.png")
        frame[:, :, :2] = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1)
        efusion_io.write_image(folder / "00.png", frame, overwrite=True)
        item = SceneFolders(scenes=[str(folder)], ignore_color=[0, 0, 255]).setup()[0]
        assert float(item["mask"][0, :, :, :2].max()) == 0.0
        assert float(item["mask"][0, :, :, 2:].min()) == 1.0 and float(item["mask"][1].min()) == 1.0

    def test_predict_without_reference(self, tmp_path):
        _write_bracket(tmp_path / "s", reference=False)
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
        _write_bracket(tmp_path / "s1")
        _write_bracket(tmp_path / "s2", reference=False)
        with pytest.raises(DatasetError, match="s2: no reference image"):
            SceneFolders(root=str(tmp_path)).setup()

    def test_two_scenes_of_one_name(self, tmp_path):
        # predictions (<name>.png) and reference_dir files are named after the scene folder
        _write_bracket(tmp_path / "a" / "s1")
        _write_bracket(tmp_path / "b" / "s1", seed=1)
        with pytest.raises(DatasetError, match="two scenes named 's1'"):
            SceneFolders(scenes=[str(tmp_path / "a" / "s1"), str(tmp_path / "b" / "s1")]).setup()
        # one folder given twice (under root and by a path spelled otherwise) is one scene
        ds = SceneFolders(root=str(tmp_path / "a"), scenes=[str(tmp_path / "a" / ".." / "a" / "s1")]).setup()
        assert len(ds) == 1 and ds[0]["name"] == "s1"

    def test_two_references(self, tmp_path):
        _write_bracket(tmp_path / "s")
        _write_hdr(tmp_path / "s" / "scene.hdr", _scene(0, size=(16, 20)))
        with pytest.raises(DatasetError, match="more than one reference"):
            SceneFolders(root=str(tmp_path)).setup()

    def test_frames_of_different_sizes(self, tmp_path):
        _write_bracket(tmp_path / "s")
        efusion_io.write_image(tmp_path / "s" / "02.png", torch.rand(3, 16, 24), overwrite=True)
        with pytest.raises(DatasetError, match=r"02.png: frame is 24x16 but .*00.png is 20x16"):
            SceneFolders(root=str(tmp_path)).setup()

    def test_reference_of_another_size(self, tmp_path):
        _write_bracket(tmp_path / "s")
        efusion_io.write_image(tmp_path / "s" / "reference.png", torch.rand(3, 8, 8), overwrite=True)
        with pytest.raises(DatasetError, match="reference.png: reference is 8x8"):
            SceneFolders(root=str(tmp_path)).setup()

    @pytest.mark.parametrize("name", ["01.png", "reference.png"])
    def test_unreadable_file(self, tmp_path, name):
        _write_bracket(tmp_path / "s")
        (tmp_path / "s" / name).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        with pytest.raises(DatasetError, match=name.replace(".", r"\.")):
            SceneFolders(root=str(tmp_path)).setup()

    def test_single_frame(self, tmp_path):
        _write_bracket(tmp_path / "s", frames=1)
        with pytest.raises(DatasetError, match="only one frame"):
            SceneFolders(root=str(tmp_path)).setup()

    def test_module_setup_fails_before_training(self, tmp_path):
        _write_bracket(tmp_path / "s", reference=False)
        dm = FusionDataModule(train=SceneFolders(root=str(tmp_path)))
        with pytest.raises(DatasetError, match="s: no reference image"):
            dm.setup("fit")


# ----------------------------------------------------------------------------------------------
# The shared data (skipped in a fresh clone)


@requires_shared(HDR / "Desk.exr")
def test_shared_piz_exr_and_hdr():
    desk = data.read_radiance(HDR / "Desk.exr")
    assert desk.shape == (3, 874, 644) and bool(torch.isfinite(desk).all())
    grace = data.read_radiance(HDR / "Grace_Cathedral.hdr")
    assert grace.shape == (3, 250, 500)
    ds = RadianceMaps([str(HDR / "Grace_Cathedral.hdr")], crops_per_map=2, crop=64, scale=0.5).setup()
    assert ds[1]["frames"].shape == (3, 3, 64, 64)


@requires_shared(BURSTS / "memorial" / "memorial.hdr")
def test_shared_memorial_frames_with_radiance_map():
    ds = SceneFolders(scenes=[str(BURSTS / "memorial")], frames=[2, 6, 10], ignore_color=[0, 0, 255], crop=64).setup()
    item = ds[0]
    assert item["frames"].shape == (3, 3, 64, 64) and item["target"].shape == (3, 64, 64)
    whole = ds._items[0]
    assert whole["frames"].shape == (3, 3, 768, 512)
    assert float(whole["mask"].mean()) < 1.0  # the blue borders of the registered scans are ignored
