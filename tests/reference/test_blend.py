"""The reference blend: the streaming one against the textbook procedure, and the depth interpolation."""
from __future__ import annotations

import pytest
import torch

from efusion.presets import get_preset
from efusion.reference.blend import blend, textbook_blend
from efusion.reference.pyramid import collapse_laplacian_pyramid, gaussian_pyramid, laplacian_pyramid


@pytest.mark.parametrize("preset", ["mertens", "opencv"])
@pytest.mark.parametrize("levels", [None, 1, 2, 2.5, -2, "tensor"])
def test_streaming_equals_textbook_bit_for_bit(preset, levels, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 3, 19, 23, generator=g, dtype=dtype)
    w = torch.rand(2, 3, 1, 19, 23, generator=g, dtype=dtype)
    levels = torch.tensor(2.3, dtype=dtype) if levels == "tensor" else levels
    p = get_preset(preset)
    assert torch.equal(blend(x, w, levels, p), textbook_blend(x, w, levels, p))


def test_textbook_is_the_pyramid_definition():
    # at an integer depth: collapse(sum_n gaussian(w_n) * laplacian(x_n)), built from the public pyramid ops
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 3, 16, 21, generator=g, dtype=torch.float64)
    w = torch.rand(1, 3, 1, 16, 21, generator=g, dtype=torch.float64)
    depth = 3
    levels = [sum(gaussian_pyramid(w[:, n], depth)[l] * laplacian_pyramid(x[:, n], depth)[l] for n in range(3))
              for l in range(depth)]
    expected = collapse_laplacian_pyramid(levels)
    torch.testing.assert_close(textbook_blend(x, w, depth, get_preset("mertens")), expected, atol=1e-14, rtol=0)


def test_fractional_depth_interpolates():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 2, 3, 16, 16, generator=g, dtype=torch.float64)
    w = torch.rand(1, 2, 1, 16, 16, generator=g, dtype=torch.float64)
    p = get_preset("mertens")
    mixed = 0.75 * blend(x, w, 2, p) + 0.25 * blend(x, w, 3, p)
    torch.testing.assert_close(blend(x, w, 2.25, p), mixed, atol=1e-14, rtol=0)
