"""training.data.datamodule: FusionDataModule."""
from __future__ import annotations

import pytest
import torch

from training.data import (
    DatasetError,
    EpochSampler,
    FusionDataModule,
    SceneFolders,
    SyntheticScenes,
)

from _data_cases import write_bracket


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
        write_bracket(tmp_path / "three", size=(24, 28), frames=3)
        write_bracket(tmp_path / "four", size=(24, 28), frames=4, seed=1)
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
