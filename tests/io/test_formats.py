"""efusion.io.formats: one suffix -> format table, used by reading, writing and the output names."""
from __future__ import annotations

import pytest
import tifffile
import torch
from PIL import Image

from efusion.io import FORMATS, IMAGE_SUFFIXES, OUTPUT_FORMATS, check_output, write_image
from efusion.io.formats import DEPTHS


def test_the_tables_agree():
    assert IMAGE_SUFFIXES == tuple(FORMATS)
    assert all(suffix == suffix.lower() and suffix.startswith(".") for suffix in FORMATS)
    assert set(FORMATS.values()) == set(DEPTHS)
    assert {FORMATS[f".{name}"] for name in OUTPUT_FORMATS} == set(DEPTHS)  # each format has a short name


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_each_suffix_writes_the_format_it_names(tmp_path, suffix):
    """What a file is, asked of the codec libraries that read it, not of efusion."""
    path = tmp_path / f"x{suffix.upper()}"  # suffixes are matched case-insensitively
    write_image(path, torch.linspace(0, 1, 3 * 4 * 5).view(3, 4, 5))
    if FORMATS[suffix] == "TIFF":
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].shape == (4, 5, 3)
    else:
        with Image.open(path) as image:
            assert image.format == FORMATS[suffix]


def test_unknown_suffix_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"x\.gif: unsupported output format '\.gif'"):
        check_output(tmp_path / "x.gif")
