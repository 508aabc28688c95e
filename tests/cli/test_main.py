"""The ``efusion`` command as a whole: help, version, and ``python -m efusion``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _cli_helpers import run


def test_help_reads_well(capsys):
    code, stdout, _ = run(["--help"], capsys)
    assert code == 0 and "fuse" in stdout and "demo" in stdout and "examples:" in stdout
    code, stdout, _ = run(["fuse", "--help"], capsys)
    assert code == 0
    for option in ("--contrast", "--saturation", "--exposure", "--mu", "--sigma", "--levels", "--preset", "--params",
                   "--device", "--dtype", "--bit-depth", "--quality", "--range", "--force", "--out-dir"):
        assert option in stdout
    assert run(["--version"], capsys)[0] == 0


def python_m(*argv, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("EFUSION_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "efusion", *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True)


def test_python_m_efusion(tmp_path, bracket8):
    done = python_m("fuse", bracket8[0].parent, "-o", "fused.jpg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fused.jpg").exists() and "wrote fused.jpg" in done.stdout
    failed = python_m("fuse", "missing.png", bracket8[0], "-o", "other.png", cwd=tmp_path)
    assert failed.returncode == 1
    assert failed.stderr.strip() == "efusion: error: missing.png: no such file"
    assert not (tmp_path / "other.png").exists()
