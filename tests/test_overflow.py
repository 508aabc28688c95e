"""Any legal exponent gives a finite result (issue 12, item 1): where ``C^c S^s E^e`` overflows, the
weights are normalised in the log domain; elsewhere they are the direct product's."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from conftest import scene

from efusion import backends, exposure_fusion, fuse_frames, get_preset, mertens_weights
from efusion.cli import main
from efusion.reference.measures import (
    log_normalise,
    log_weights,
    measure_terms,
    normalise,
    power,
    product_weights,
)


def noisy(dtype=torch.float64, seed=0):
    """Frames with strong local contrast (|Laplacian| well above 1), where large exponents overflow."""
    return torch.rand(3, 3, 18, 22, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("preset", ["mertens", "opencv"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_exponents_give_finite_weights_that_sum_to_one(backend, preset, dtype):
    x = noisy(dtype)
    with backends.use(backend):
        for kwargs in (dict(contrast=1000.0), dict(saturation=500.0, exposure=300.0), dict(contrast=80.0, saturation=80.0)):
            w = mertens_weights(x, preset=preset, **kwargs)
            assert torch.isfinite(w).all(), kwargs
            torch.testing.assert_close(w.sum(0), torch.ones_like(w[0]), atol=4 * torch.finfo(dtype).eps, rtol=0)
            assert torch.isfinite(exposure_fusion(x, preset=preset, **kwargs)).all(), kwargs
            assert torch.isfinite(fuse_frames(list(x), preset=preset, **kwargs)).all(), kwargs


def test_float32_fallback_matches_float64_direct_product():
    # contrast 200 overflows float32 where C > 1.56 but never float64 on [0, 1] data (C <= 8)
    x = noisy()
    exact = mertens_weights(x, contrast=200.0)
    assert torch.isfinite(exact).all()
    fallback = mertens_weights(x.float(), contrast=200.0)
    torch.testing.assert_close(fallback.double(), exact, atol=1e-5, rtol=0)


def test_log_domain_equals_the_product_where_nothing_overflows():
    x = scene(n=4, seed=3).unsqueeze(0)  # [B, N, C, H, W]: frames along dim 1
    mask = (torch.rand(1, 4, 1, 20, 24, generator=torch.Generator().manual_seed(3)) > 0.3).double()
    terms = measure_terms(x, 2.0, 0.5, 1.5, 0.5, 0.2, get_preset("mertens"))
    for m in (None, mask):
        torch.testing.assert_close(log_normalise(log_weights(terms, x), m), normalise(product_weights(terms, x), m),
                                   atol=1e-13, rtol=1e-12)


def test_unchanged_where_nothing_overflowed():
    # float32, contrast 60: some pixels overflow; the others keep the product's weights bit for bit
    x = noisy(torch.float32, seed=1).unsqueeze(0) * 2.0  # [B, N, C, H, W]
    terms = measure_terms(x, 60.0, 1.0, 1.0, 0.5, 0.2, get_preset("mertens"))
    direct = normalise(product_weights(terms, x), None)
    overflowed = ~torch.isfinite(direct).all(dim=1, keepdim=True)
    assert overflowed.any() and not overflowed.all()
    with backends.use("reference"):
        w = mertens_weights(x, contrast=60.0)
    # and where a factor exceeds sqrt(max) (finite, but its gradient may not be): the log domain too
    large = torch.stack([f > torch.finfo(f.dtype).max ** 0.5 for f in [power(terms[0][1], 60.0)]]).any(0).any(1, keepdim=True)
    kept = (~(overflowed | large)).expand_as(w)
    assert kept.any()
    assert torch.equal(w[kept], direct[kept])
    torch.testing.assert_close(w, log_normalise(log_weights(terms, x), None), atol=1e-6, rtol=0)


def test_gradients_stay_finite():
    x = noisy().requires_grad_()
    exponents = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in
                 dict(contrast=1000.0, saturation=3.0, exposure=700.0).items()}
    out = exposure_fusion(x, **exponents)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for name, tensor in [("stack", x), *exponents.items()]:
        assert torch.isfinite(tensor.grad).all(), name


def test_cli_fuse_with_contrast_1000_writes_a_finite_image(tmp_path, capsys):
    folder = tmp_path / "bracket"
    folder.mkdir()
    for i, frame in enumerate(noisy(torch.float32)):
        tifffile.imwrite(folder / f"{i}.tif", frame.permute(1, 2, 0).numpy(), photometric="rgb")
    out = tmp_path / "fused.tif"
    assert main(["fuse", str(folder), "-o", str(out), "--bit-depth", "32", "--contrast", "1000", "-q"]) == 0
    fused = tifffile.imread(out)
    assert np.isfinite(fused).all() and fused.max() > 0.05
