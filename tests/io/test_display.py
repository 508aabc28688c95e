"""efusion.io.display: the robust range (against the IPOL reference formula) and the display mapping."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from efusion.io import robust_normalize, to_display


def robust_reference(u: np.ndarray, w_sat: float, b_sat: float) -> np.ndarray:
    """Hessel's robustNormalization.m (colour branch, dyn = 1), line by line in numpy."""
    h, w, _ = u.shape
    n = h * w
    vmax = np.sort(u.max(2).ravel())[int(np.ceil(n - w_sat * n / 100)) - 1]
    vmin = np.sort(u.min(2).ravel())[int(np.floor(1 + b_sat * n / 100)) - 1]
    v = (u - vmin) * (1 / (vmax - vmin))
    v[u > vmax] = 1
    v[u < vmin] = 0
    return v


class TestRobustNormalize:
    @pytest.mark.parametrize("black, white", [(1.0, 1.0), (0.0, 0.0), (0.5, 3.0)])
    def test_matches_reference(self, black, white):
        u = np.random.default_rng(5).normal(0.5, 0.4, (37, 41, 3))
        out = robust_normalize(torch.from_numpy(u).permute(2, 0, 1), black=black, white=white)
        assert torch.allclose(out, torch.from_numpy(robust_reference(u, white, black)).permute(2, 0, 1), atol=1e-12)

    def test_one_map_for_all_channels(self):
        image = torch.rand(3, 20, 30, dtype=torch.float64) * 2 - 0.3
        out = robust_normalize(image, black=0, white=0)  # min/max channel extremes: no pixel clipped
        scale = (out[:, 0, 0] - out[:, 0, 1]) / (image[:, 0, 0] - image[:, 0, 1])
        assert torch.allclose(scale, scale[0].expand(3)) and out.min() == 0 and out.max() == 1

    def test_saturates_the_requested_share(self):
        image = torch.rand(1, 100, 100) * 3 - 1
        out = robust_normalize(image, black=2, white=5)
        assert 0.015 < out.eq(0).float().mean() < 0.025 and 0.045 < out.eq(1).float().mean() < 0.055

    def test_flat_and_dtype(self):
        out = robust_normalize(torch.full((3, 4, 4), 1.3, dtype=torch.float16))
        assert out.dtype == torch.float16 and out.eq(1).all()

    def test_errors(self):
        with pytest.raises(ValueError, match="percentage"):
            robust_normalize(torch.zeros(3, 4, 4), black=-1)
        with pytest.raises(ValueError, match="below 100"):
            robust_normalize(torch.zeros(3, 4, 4), black=60, white=40)
        with pytest.raises(ValueError, match=r"\[C, H, W\]"):
            robust_normalize(torch.zeros(4, 4))


# ----------------------------------------------------------------------------------------------
# Parameter files


class TestToDisplay:
    """The mapping from a fusion result to stored values: clip, robust range, or raw float32."""

    @settings(max_examples=25, deadline=None)
    @given(values=st.lists(st.floats(-2.0, 3.0), min_size=12, max_size=12), bit_depth=st.sampled_from([8, 16]))
    def test_integer_output_is_clipped_unless_robust(self, values, bit_depth):
        image = torch.tensor(values, dtype=torch.float64).view(3, 2, 2)
        for mode in (None, "clip"):
            out = to_display(image, mode, bit_depth=bit_depth)
            assert torch.equal(out, torch.clamp(image, 0, 1))  # identity inside [0, 1], saturates outside

    def test_float32_output_keeps_out_of_range_values_unless_asked(self):
        image = torch.tensor([-0.5, 0.25, 1.5]).view(1, 1, 3)
        assert torch.equal(to_display(image, None, bit_depth=32), image)
        assert torch.equal(to_display(image, "clip", bit_depth=32), torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 3))

    def test_robust_is_robust_normalize(self):
        u = np.random.default_rng(7).normal(0.5, 0.4, (9, 11, 3))
        image = torch.from_numpy(u).permute(2, 0, 1)
        out = to_display(image, "robust", black=2.0, white=0.5, bit_depth=32)
        assert torch.allclose(out, torch.from_numpy(robust_reference(u, 0.5, 2.0)).permute(2, 0, 1), atol=1e-12)

    def test_exception(self):
        with pytest.raises(ValueError, match="'stretch'"):
            to_display(torch.zeros(1, 2, 2), "stretch")
