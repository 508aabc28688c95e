"""The package namespace: what ``import efusion`` gives, and what it costs."""
from __future__ import annotations

import subprocess
import sys

import efusion


def test_all_names_exist():
    assert all(hasattr(efusion, name) for name in efusion.__all__)
    assert efusion.mef_ssim is efusion.metrics.mef_ssim and efusion.MEFSSIMLoss is efusion.metrics.MEFSSIMLoss
    assert efusion.psnr is efusion.quality.psnr and efusion.ssim is efusion.quality.ssim


def test_submodules_after_plain_import_without_codecs():
    # a fresh interpreter: in this one other tests have imported the submodules already
    code = (
        "import sys, torch, efusion\n"
        "stack = efusion.synthetic.bracket(48, 64, 3)\n"
        "score = efusion.metrics.mef_ssim(efusion.exposure_fusion(stack), stack)\n"
        "assert 0 < float(score) <= 1, score\n"
        "assert float(efusion.quality.ssim(stack[1], stack[1])) == 1\n"
        "print(sorted(m for m in ('cv2', 'tifffile', 'PIL', 'yaml') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # image codecs load only when efusion.io needs them
