"""training.data.readers: read_radiance (and the shared radiance maps, skipped in a fresh clone)."""
from __future__ import annotations

import pytest
import torch

from training import data
from training.data import DatasetError, RadianceMaps

from _data_cases import small_scene, write_exr, write_hdr
from conftest import SHARED, requires_shared

HDR = SHARED / "data" / "hdr"


class TestReadRadiance:
    def test_hdr_and_exr(self, tmp_path):
        radiance = small_scene(0)
        write_hdr(tmp_path / "a.hdr", radiance)
        write_exr(tmp_path / "b.exr", radiance)
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
        write_hdr(tmp_path / "black.hdr", torch.zeros(3, 4, 4))
        with pytest.raises(DatasetError, match="black.hdr.*black"):
            data.read_radiance(tmp_path / "black.hdr")


@requires_shared(HDR / "Desk.exr")
def test_shared_piz_exr_and_hdr():
    desk = data.read_radiance(HDR / "Desk.exr")
    assert desk.shape == (3, 874, 644) and bool(torch.isfinite(desk).all())
    grace = data.read_radiance(HDR / "Grace_Cathedral.hdr")
    assert grace.shape == (3, 250, 500)
    ds = RadianceMaps([str(HDR / "Grace_Cathedral.hdr")], crops_per_map=2, crop=64, scale=0.5).setup()
    assert ds[1]["frames"].shape == (3, 3, 64, 64)
