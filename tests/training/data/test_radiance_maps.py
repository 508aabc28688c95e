"""training.data.radiance_maps: RadianceMaps."""
from __future__ import annotations

import pytest
import torch

import efusion
from training.data import DatasetError, RadianceMaps

from _data_cases import small_scene, write_exr, write_hdr


class TestRadianceMaps:
    def test_folder_of_maps(self, tmp_path):
        write_hdr(tmp_path / "a.hdr", small_scene(1))
        write_exr(tmp_path / "b.exr", small_scene(2))
        ds = RadianceMaps([str(tmp_path)], crops_per_map=3, crop=16, tonemap="durand").setup()
        assert len(ds) == 6
        item = ds[4]
        assert item["frames"].shape == (3, 3, 16, 16) and item["target"].shape == (3, 16, 16)
        assert item["name"] == "b_1"

    def test_target_params_with_crops(self, tmp_path):
        write_hdr(tmp_path / "a.hdr", small_scene(1, size=(40, 48)))
        params = {"contrast": 0.4, "exposure": 2.5, "mu": 0.55}
        ds = RadianceMaps([str(tmp_path / "a.hdr")], crops_per_map=3, crop=24, flip=True, target_params=params)
        for key in ((0, 0), (1, 3), (2, 1)):
            item = ds[key]
            expected = efusion.exposure_fusion(item["frames"], **params)
            torch.testing.assert_close(item["target"], expected, rtol=0, atol=1e-6)

    def test_whole_maps_and_globs(self, tmp_path):
        write_hdr(tmp_path / "a.hdr", small_scene(1))
        ds = RadianceMaps([str(tmp_path / "*.hdr")], crop=None, scale=0.5).setup()
        assert len(ds) == 1 and ds[0]["frames"].shape == (3, 3, 10, 14)
        ds = RadianceMaps([str(tmp_path / "a.hdr")], crop=None, max_size=14).setup()
        assert ds[0]["target"].shape == (3, 10, 14)

    def test_errors(self, tmp_path):
        write_hdr(tmp_path / "small.hdr", small_scene(1, size=(8, 8)))
        with pytest.raises(DatasetError, match="small.hdr.*smaller than the crop"):
            RadianceMaps([str(tmp_path / "small.hdr")], crop=16).setup()
        with pytest.raises(DatasetError, match="nothing"):
            RadianceMaps([str(tmp_path / "nothing")]).setup()
        (tmp_path / "empty").mkdir()
        with pytest.raises(DatasetError, match="empty: no radiance map"):
            RadianceMaps([str(tmp_path / "empty")]).setup()
