"""training.data.procedural: SyntheticScenes."""
from __future__ import annotations

import pytest
import torch

import efusion
from training.data import DatasetError, SyntheticScenes

from _data_cases import find_patch


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
                top, left = find_patch(target, full["target"])
            except AssertionError:
                flipped = True
                target, frames = target.flip(-1), frames.flip(-1)
                top, left = find_patch(target, full["target"])
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
