"""efusion.io.display: the robust range (against the IPOL reference formula)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from efusion.io import (
    robust_normalize,
)


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


