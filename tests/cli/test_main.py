"""The ``efusion`` command as a whole: help, version, --threads, ``python -m efusion`` and the console launcher."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import efusion

from _cli_helpers import run
from _image_files import scene, write_frames


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
    return subprocess.run([sys.executable, "-m", "efusion", *map(str, argv)], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)


def test_python_m_efusion(tmp_path, bracket8):
    done = python_m("fuse", bracket8[0].parent, "-o", "fused.jpg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fused.jpg").exists() and "wrote fused.jpg" in done.stdout
    failed = python_m("fuse", "missing.png", bracket8[0], "-o", "other.png", cwd=tmp_path)
    assert failed.returncode == 1
    assert failed.stderr.strip() == "efusion: error: missing.png: no such file"
    assert not (tmp_path / "other.png").exists()


# ----------------------------------------------------------------------------------------------
# issue 16 item 14: --threads, and OpenMP threads that sleep rather than spin when the machine is busy


def test_threads_option_sets_the_computation_threads_and_restores_them(tmp_path, capsys, bracket8, monkeypatch):
    seen = []
    real = efusion.fuse_frames

    def recording(*args, **kwargs):  # the real fusion, noting how many threads it ran with
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(efusion, "fuse_frames", recording)
    before = torch.get_num_threads()
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "one.png", "--threads", "1"], capsys)
    assert code == 0, err
    assert seen == [1] and torch.get_num_threads() == before
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "two.png", "--threads", "2"], capsys)
    assert code == 0 and seen == [1, 2]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), np.asarray(Image.open(tmp_path / "two.png")))
    big = write_frames(tmp_path / "big", (scene(48, 48) * 255).round().astype(np.uint8))  # MEF-SSIM needs 44 px
    code, _, err = run(["eval", *big, "--threads", "1", "--json"], capsys)
    assert code == 0, err
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("text", ["0", "-2", "two"])
def test_bad_threads(tmp_path, capsys, bracket8, text):
    code, _, err = run(["fuse", *bracket8, "-o", tmp_path / "f.png", "--threads", text], capsys)
    assert code == 2 and "--threads" in err


def launcher(code: str, **env) -> str:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environment.update(env, PYTHONPATH=os.pathsep.join([str(root), environment.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_console_entry_point_sets_a_passive_wait_policy_before_torch_loads():
    # the console script's module imports neither torch nor efusion, so the setting is in place
    # when libgomp reads it (once, as torch loads)
    code = ("import sys, efusion_cli; assert 'torch' not in sys.modules and 'efusion' not in sys.modules; "
            "status = efusion_cli.main(['--version']); import os; print(status, os.environ['OMP_WAIT_POLICY'])")
    assert launcher(code).splitlines()[-1] == "0 PASSIVE"
    assert launcher(code, OMP_WAIT_POLICY="ACTIVE").splitlines()[-1] == "0 ACTIVE"  # the user's choice is kept


def test_console_entry_point_is_the_launcher():
    import configparser
    from pathlib import Path

    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    assert "efusion = efusion_cli:main" in config["options.entry_points"]["console_scripts"]
    assert "efusion_cli" in config["options"]["py_modules"]
