"""training.data.sampler and training.data.batching: EpochSampler and collate."""
from __future__ import annotations

import pytest
import torch

import efusion
from training import data
from training.data import DatasetError, EpochSampler


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
