"""benchmarks/bench_align.py runs end to end on a small case, so it cannot rot (its accuracy column
is checked, not its times; its fixed shifts, up to 57 px, need frames of 300 x 400 for the 15 % search range)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("cv2")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_align.py"


def test_small_case_table(capsys):
    spec = importlib.util.spec_from_file_location("efusion_bench_align", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--size", "300x400", "--repeats", "1"])
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"opencv", "translation", "homography"}
    for name in ("opencv", "translation", "homography"):
        median, minimum, error = (float(v) for v in rows[name])
        assert 0 <= minimum <= median and error >= 0, (name, rows[name])
    # the cases are integer shifts known to the benchmark: efusion must find them (AlignMTB's
    # six-level pyramid is not reliable on small frames, so its error is only reported)
    for name in ("translation", "homography"):
        assert float(rows[name][2]) < 0.5, (name, rows[name])
