"""Presets: the two reference implementations' conventions as data."""
from __future__ import annotations

import math

import pytest

from efusion import color
from efusion.presets import PRESETS, Preset, get_preset


def test_get_preset():
    assert get_preset("mertens") is PRESETS["mertens"]
    assert get_preset(PRESETS["opencv"]) is PRESETS["opencv"]
    with pytest.raises(ValueError, match="preset must be one of"):
        get_preset("matlab")
    with pytest.raises(ValueError, match="preset must be one of"):
        get_preset(None)


def test_luma_weights_come_from_color():
    assert PRESETS["mertens"].luma_weights == color.MATLAB_GRAY
    assert PRESETS["opencv"].luma_weights == color.OPENCV_GRAY
    assert math.isclose(sum(color.OPENCV_GRAY), 1.0) and math.isclose(sum(color.MATLAB_GRAY), 1.0, abs_tol=1e-14)


@pytest.mark.parametrize("side", [1, 2, 3, 7, 8, 9, 64, 100, 1000, 8192, 32768])
def test_max_levels(side):
    # MATLAB: floor(log2(min(H, W))) in double precision, at least 1; OpenCV one more
    assert get_preset("mertens").max_levels(side, side + 5) == max(1, math.floor(math.log(side) / math.log(2)))
    opencv = get_preset("opencv").max_levels(side + 5, side)
    if side in (8192, 32768):  # logf rounds log2 just below the integer (merge.cpp's float arithmetic)
        assert opencv == int(math.log2(side))
    else:
        assert opencv == max(1, math.floor(math.log2(side)) + 1)


def test_preset_is_frozen():
    with pytest.raises(AttributeError):
        PRESETS["mertens"].extra_level = True  # type: ignore[misc]
    assert isinstance(PRESETS["opencv"], Preset)
