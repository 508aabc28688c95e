"""The benchmark script runs end to end on a tiny case (so it cannot rot). Nothing here is timed."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("efusion_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_json_structure(bench, tmp_path):
    path = tmp_path / "results.json"
    bench.main(["--sizes", "24x32", "--frames", "2", "--repeats", "1", "--skip", "memory", "--json", str(path)])
    report = json.loads(path.read_text())
    assert {"command", "machine", "load_average", "settings", "grad_params", "cases", "targets"} <= set(report)
    assert report["machine"]["cpus"] >= 1 and report["machine"]["torch"]
    (case,) = report["cases"]
    assert (case["height"], case["width"], case["frames"]) == (24, 32, 2)
    assert set(case["time_s"]) == set(bench.METHODS)
    assert all(len(v) == 1 and v[0] > 0 for v in case["times_s"].values())
    assert {"eager/opencv", "compiled/opencv", "stream/opencv", "forward_backward/eager",
            "forward_backward/forward_grad"} <= set(case["ratio"])
    assert case["compile_time_s"] > 0
    # the paths agree: streaming and compiled give the eager result, the reference path too
    diffs = case["max_abs_diff"]
    assert diffs["stream_vs_eager"] == 0 and diffs["compiled_vs_eager"] == 0
    assert diffs["eager_vs_reference"] < 1e-5
    assert "memory" not in case and "loaded" not in case
    # the per-cell targets are checked on whatever ran; the 12 MP ones need a 12 MP case
    assert set(report["targets"]) == {"eager/opencv, worst cell"}
    target = report["targets"]["eager/opencv, worst cell"]
    assert target["value"] == case["ratio"]["eager/opencv"] and target["met"] == (target["value"] <= 0.5)


def test_batch_option_fuses_every_bracket(bench, tmp_path):
    path = tmp_path / "results.json"
    bench.main(["--sizes", "24x32", "--frames", "3", "--batch", "2", "--repeats", "1", "--skip", "memory,compiled",
                "--json", str(path)])
    (case,) = json.loads(path.read_text())["cases"]
    assert (case["batch"], case["frames"]) == (2, 3)
    # the batched stack gives each bracket's own fusion: the streamed brackets, one by one, agree
    assert case["max_abs_diff"]["stream_vs_eager"] < 1e-6 and case["max_abs_diff"]["eager_vs_reference"] < 1e-5
    assert "| 2 x 3 |" in bench.format_row(case)
    brackets = np.stack([bench.make_frames(24, 32, 3, seed) for seed in (0, 1)])
    stack = bench.Case(brackets, bench.torch.device("cpu"), bench.torch.float32, "mertens").stack
    assert stack.shape == (2, 3, 3, 24, 32) and not bench.torch.equal(stack[0], stack[1])
    with pytest.raises(SystemExit, match="--batch must be >= 1"):
        bench.main(["--batch", "0"])


def test_backend_option_runs_every_method_with_that_backend(bench, tmp_path):
    path = tmp_path / "results.json"
    bench.main(["--sizes", "24x32", "--frames", "2", "--repeats", "1", "--skip", "memory,compiled,forward_grad",
                "--backend", "cpu", "--json", str(path)])
    report = json.loads(path.read_text())
    assert report["settings"]["backend"] == "cpu"
    (case,) = report["cases"]
    assert case["max_abs_diff"]["stream_vs_eager"] == 0  # one backend: streamed and stacked give the same bits
    with pytest.raises(SystemExit, match="--backend: unknown 'gpu'"):
        bench.main(["--backend", "gpu"])


def test_load_times_every_method_beside_busy_processes(bench, tmp_path):
    path = tmp_path / "results.json"
    bench.main(["--sizes", "24x32", "--frames", "2", "--repeats", "1", "--skip", "memory,compiled", "--load", "1",
                "--json", str(path)])
    (case,) = json.loads(path.read_text())["cases"]
    loaded = case["loaded"]
    assert loaded["processes"] == 1 and set(loaded["time_s"]) == set(case["time_s"])
    for method, seconds in loaded["time_s"].items():
        assert seconds > 0 and loaded["slowdown"][method] == seconds / case["time_s"][method]
    assert loaded["ratio"]["eager/opencv"] == loaded["time_s"]["eager"] / loaded["time_s"]["opencv"]


def test_busy_processes_run_during_the_block_and_are_reaped_after(bench):
    with bench.busy_processes(2) as spinners:
        assert len(spinners) == 2 and all(p.poll() is None for p in spinners)
    assert all(p.poll() is not None for p in spinners)


def test_memory_probe_in_a_fresh_process(bench, tmp_path):
    frames = bench.make_frames(24, 32, 3, seed=0)
    assert frames.dtype == np.uint8 and frames.shape == (3, 24, 32, 3)
    path = tmp_path / "frames.npy"
    np.save(path, frames)
    args = bench.build_parser().parse_args(["--threads", "1"])
    result = bench.measure_memory("stream", str(path), args)
    assert "error" not in result, result
    assert result["method"] in ("VmHWM after clear_refs", "ru_maxrss")
    assert result["peak_mb"] >= result["baseline_mb"] > 0 and math.isfinite(result["peak_delta_mb"])


@pytest.mark.parametrize("text, expected", [("12", (3000, 4000)), ("480x640", (480, 640)), ("1", (866, 1155))])
def test_sizes(bench, text, expected):
    assert bench.parse_size(text) == expected


def test_bad_arguments(bench):
    with pytest.raises(SystemExit, match="unknown"):
        bench.main(["--sizes", "24x32", "--skip", "everything"])


def test_cuda_device(bench, tmp_path):
    # --device cuda: efusion's tensors on the GPU, OpenCV (always on the host) measured by the process's peak
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            bench.main(["--sizes", "24x32", "--frames", "2", "--device", "cuda"])
        return
    out = tmp_path / "cuda.json"
    result = bench.main(["--sizes", "24x32", "--frames", "2", "--repeats", "1", "--device", "cuda",
                         "--skip", "compiled", "--json", str(out)])
    case = result["cases"][0]
    assert case["device"].startswith("cuda") and case["time_s"]["eager"] > 0
    assert case["memory"]["eager"]["method"] == "torch.cuda.max_memory_allocated"
    assert case["memory"]["opencv"]["method"] != "torch.cuda.max_memory_allocated"


def test_roofline_model_and_run(capsys):
    # the byte model by hand for one 2 x 2 gray frame and one level: weights read 4 samples and
    # write 4; the top level reads image and weights (8) and writes the residual (4); the collapse
    # reads and writes it (8); 4 bytes each
    spec = importlib.util.spec_from_file_location("efusion_roofline", SCRIPT.with_name("roofline.py"))
    roofline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roofline)
    passes = roofline.model(2, 2, 1, 1, top=1)
    assert passes["weights"][0] == 8 * 4 and passes["blend + collapse"][0] == 20 * 4
    assert roofline.level_sizes(5, 7, 3) == [35, 12, 4]
    roofline.main(["--size", "24x32", "--frames", "2", "--repeats", "1", "--bandwidth-mb", "4"])
    table = capsys.readouterr().out
    assert "| fuse |" in table and "GB/s" in table
