"""Benchmark efusion against OpenCV's MergeMertens: same inputs, one process, warm medians.

For each case (a size and a number of frames) a synthetic bracket is rendered by
:func:`efusion.synthetic.bracket` (an HDR room scene photographed at several exposures, 8-bit) and
timed, interleaved, repeat after repeat, with:

- ``opencv``: ``cv2.createMergeMertens(1, 1, 1).process(frames)`` on the uint8 ``H x W x 3`` frames;
- ``eager``: ``efusion.exposure_fusion(stack)`` on the float stack ``[N, 3, H, W]`` (``frames / 255``),
  without autograd;
- ``stream``: ``efusion.fuse_frames(frames)`` on the uint8 ``[3, H, W]`` frames (converted one by one;
  in float32 measured on their exact values, as ``exposure_fusion`` measures a uint8 stack, which
  its agreement is checked against);
- ``compiled``: ``torch.compile(efusion.exposure_fusion, fullgraph=True)`` on the float stack
  (compile time reported apart; on a CPU the compiled graph calls efusion's kernels as operators,
  ``--inductor`` has Inductor compile the reference code instead);
- ``forward_grad`` / ``forward_backward``: the stack and every parameter (contrast, saturation,
  exposure, mu, sigma, levels) requiring gradients: the forward alone, then forward + backward.

Each measurement is warmed up, then repeated; the median is reported with the ratio to OpenCV's
median of the same repeats. Peak memory is measured once per method in a fresh subprocess: on a CPU
the process's peak resident set size (VmHWM, reset through ``/proc/self/clear_refs`` right before
the call; ``ru_maxrss`` where that is unavailable) minus the resident size just before the call,
i.e. what the call adds on top of its inputs; on a GPU ``torch.cuda.max_memory_allocated``.

Usage::

    python benchmarks/bench.py                          # the default grid (several minutes)
    python benchmarks/bench.py --quick                  # 1 and 3 MP, 3 frames
    python benchmarks/bench.py --sizes 12 --frames 3,9 --json results.json
    python benchmarks/bench.py --sizes 480x640 --frames 2 --repeats 1 --skip compiled,memory
    python benchmarks/bench.py --quick --load 1         # idle, then beside one busy process
    python benchmarks/bench.py --quick --backend cpu    # the Python band kernels instead of "native"

``--load N`` times every case twice: idle, then with N busy processes beside it (each spins one
core in a pure-Python loop, as a data loader or a second job would), interleaved per case so both
columns see the same machine; the table shows the loaded eager time, its ratio to efusion's own
idle time and to OpenCV's time under the same load.

``--batch B`` times B brackets at once (different scenes): efusion's methods take the batched
stack ``[B, N, 3, H, W]`` (the training shape ``[8, 3, 3, 256, 256]`` is ``--sizes 256x256 --frames 3
--batch 8``), OpenCV and ``stream`` fuse the B brackets one after the other.

``--sizes`` takes megapixels (4:3 frames: 12 -> 3000 x 4000) or ``HxW``. Results go to stdout as
a Markdown table and, with ``--json PATH`` (``-`` for stdout), as JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

import efusion
import efusion.pyramid
from efusion.synthetic import bracket

METHODS = ("opencv", "eager", "stream", "compiled", "forward_grad", "forward_backward")
#: methods whose peak memory is probed in a subprocess (compile time and memory are not the point)
MEMORY_METHODS = ("opencv", "eager", "stream", "forward_backward")
SKIPPABLE = METHODS + ("memory", "reference")
DEFAULT_SIZES = "1,3,12,24"
DEFAULT_FRAMES = "2,3,9,16"
#: the default grid leaves out cases above this many megapixel-frames (24 MP x 9 needs ~20 GB)
DEFAULT_MAX_MEGAPIXEL_FRAMES = 110
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: the parameters of the gradient measurements, all learnable (levels -1: the automatic depth)
GRAD_PARAMS = {"contrast": 1.0, "saturation": 1.0, "exposure": 1.0, "mu": 0.5, "sigma": 0.2, "levels": -1.0}


# ---------------------------------------------------------------------------------------------
# inputs


def parse_size(text: str) -> tuple[int, int]:
    """``"12"`` (megapixels, 4:3 landscape) or ``"3000x4000"`` -> ``(height, width)``."""
    if "x" in text:
        height, width = (int(v) for v in text.lower().split("x"))
    else:
        pixels = float(text) * 1e6
        height = round(math.sqrt(pixels * 3 / 4))
        width = round(height * 4 / 3)
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width


def ev_step(frames: int) -> float:
    """Stops between exposures: 2 EV apart up to 5 frames, 8 EV in all beyond."""
    return 2.0 if frames <= 1 else min(2.0, 8.0 / (frames - 1))


def make_frames(height: int, width: int, frames: int, seed: int) -> np.ndarray:
    """An 8-bit bracket ``[N, H, W, 3]`` (uint8, RGB) of a synthetic HDR scene."""
    stack = bracket(height, width, frames, ev_step=ev_step(frames), seed=seed)  # k / 255, float32
    return (stack * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# ---------------------------------------------------------------------------------------------
# what is timed


#: backend the compiled method is traced with (``None``: automatic; ``--inductor``: "reference")
COMPILED_BACKEND: str | None = None

class Case:
    """The inputs of one case in every form the methods take, and the callables that time them."""

    def __init__(self, frames_u8: np.ndarray, device: torch.device, dtype: torch.dtype, preset: str) -> None:
        """``frames_u8``: one bracket ``[N, H, W, 3]`` or a batch of them ``[B, N, H, W, 3]``."""
        self.frames_u8 = frames_u8
        self.device, self.dtype, self.preset = device, dtype, preset
        brackets = frames_u8 if frames_u8.ndim == 5 else frames_u8[None]
        self.cv_brackets = [list(b) for b in brackets]  # OpenCV takes a list of H x W x 3 arrays (RGB here)
        chw = torch.from_numpy(brackets).permute(0, 1, 4, 2, 3)
        self.torch_brackets = [[f.contiguous().to(device) for f in b] for b in chw]
        stack = (chw.to(device=device, dtype=torch.float32) / 255).to(dtype).contiguous()
        self.stack = stack if frames_u8.ndim == 5 else stack[0]
        self._compiled = None
        self._grad_inputs = None

    def opencv(self) -> Callable[[], object]:
        import cv2

        merge = cv2.createMergeMertens(1.0, 1.0, 1.0)
        return lambda: [merge.process(frames) for frames in self.cv_brackets]

    def eager(self) -> Callable[[], torch.Tensor]:
        def run():
            with torch.no_grad():
                return efusion.exposure_fusion(self.stack, preset=self.preset)

        return run

    def stream(self) -> Callable[[], torch.Tensor]:
        def run():
            with torch.no_grad():
                fused = [efusion.fuse_frames(frames, preset=self.preset, dtype=self._stream_dtype())
                         for frames in self.torch_brackets]
            return torch.stack(fused) if self.stack.dim() == 5 else fused[0]

        return run

    def integer_eager(self) -> Callable[[], torch.Tensor]:
        """``eager`` on the uint8 frames themselves (``stream``'s input; float32: measured exactly)."""
        if self._stream_dtype() != torch.float32:
            return self.eager()

        def run():
            with torch.no_grad():
                fused = [efusion.exposure_fusion(torch.stack(frames), preset=self.preset) for frames in self.torch_brackets]
            return torch.stack(fused) if self.stack.dim() == 5 else fused[0]

        return run

    def _stream_dtype(self) -> torch.dtype:
        return self.dtype if self.dtype in (torch.float32, torch.float64) else torch.float32

    def compiled(self) -> Callable[[], torch.Tensor]:
        if self._compiled is None:
            self._compiled = torch.compile(efusion.exposure_fusion, fullgraph=True)

        def run():
            # the backend is read when Dynamo traces (the first call): "reference" = --inductor
            with torch.no_grad(), efusion.backends.use(COMPILED_BACKEND):
                return self._compiled(self.stack, preset=self.preset)

        return run

    def _grads(self):
        if self._grad_inputs is None:
            stack = self.stack.clone().requires_grad_()
            params = {k: torch.tensor(v, device=self.device, dtype=torch.float32, requires_grad=True)
                      for k, v in GRAD_PARAMS.items()}
            self._grad_inputs = stack, params
        return self._grad_inputs

    def forward_grad(self) -> Callable[[], torch.Tensor]:
        def run():
            stack, params = self._grads()
            return efusion.exposure_fusion(stack, preset=self.preset, **params).detach()

        return run

    def forward_backward(self) -> Callable[[], torch.Tensor]:
        def run():
            stack, params = self._grads()
            for t in (stack, *params.values()):
                t.grad = None
            out = efusion.exposure_fusion(stack, preset=self.preset, **params)
            out.backward(torch.ones_like(out))
            return stack.grad

        return run


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen]]:
    """``count`` processes that each keep one core busy (a pure-Python spin) while the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)  # let the scheduler see them
        yield spinners
    finally:
        for process in spinners:
            process.kill()
        for process in spinners:
            process.wait()


def time_methods(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Each method once per repeat, interleaved, so slow drifts of the machine hit them alike."""
    times: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(repeats):
        for m, run in runs.items():
            times[m].append(timed(run, device))
    return times


# ---------------------------------------------------------------------------------------------
# peak memory, one fresh process per measurement


def _rss_mb() -> tuple[float, float | None]:
    """Current and peak resident set size (MB) of this process from /proc, or (ru_maxrss, None)."""
    try:
        fields = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    fields[key] = int(value.split()[0]) / 1024
        return fields["VmRSS"], fields["VmHWM"]
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def probe_memory(method: str, input_path: str, device: str, dtype: str, preset: str) -> dict:
    """Run ``method`` once on the saved frames and report its peak memory (in this process)."""
    device_ = torch.device(device)
    case = Case(np.load(input_path), device_, DTYPES[dtype], preset)
    fn = getattr(case, method)()
    if method.startswith("forward"):
        case._grads()
    if device_.type == "cuda" and method != "opencv":  # OpenCV runs on the host: its peak is the process's
        torch.cuda.synchronize(device_)
        before = torch.cuda.memory_allocated(device_)
        torch.cuda.reset_peak_memory_stats(device_)
        fn()
        torch.cuda.synchronize(device_)
        peak = torch.cuda.max_memory_allocated(device_)
        return {"method": "torch.cuda.max_memory_allocated", "baseline_mb": before / 2**20,
                "peak_mb": peak / 2**20, "peak_delta_mb": (peak - before) / 2**20}
    baseline, _ = _rss_mb()
    reset = _reset_peak()
    fn()
    _, peak = _rss_mb()
    if not reset or peak is None:  # lifetime peak: an upper bound if loading the inputs peaked higher
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": "VmHWM after clear_refs" if reset else "ru_maxrss", "baseline_mb": baseline,
            "peak_mb": peak, "peak_delta_mb": peak - baseline}


def measure_memory(method: str, input_path: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--probe", method, "--probe-input", input_path,
               "--device", args.device, "--dtype", args.dtype, "--preset", args.preset]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.backend:
        command += ["--backend", args.backend]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# one case


def run_case(height: int, width: int, frames: int, args, log: Callable[[str], None]) -> dict:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    skip = set(args.skip)
    frames_u8 = make_frames(height, width, frames, args.seed)
    if args.batch > 1:
        frames_u8 = np.stack([frames_u8, *(make_frames(height, width, frames, args.seed + b) for b in range(1, args.batch))])
    case = Case(frames_u8, device, dtype, args.preset)
    methods = [m for m in METHODS if m not in skip]
    runs = {m: getattr(case, m)() for m in methods}
    result: dict = {
        "height": height, "width": width, "megapixels": round(height * width / 1e6, 3), "frames": frames,
        "batch": args.batch, "ev_step": ev_step(frames), "device": str(device), "dtype": args.dtype, "preset": args.preset,
        "input_mb": {"uint8": frames_u8.nbytes / 2**20, "float32": frames_u8.size * 4 / 2**20},
    }
    # warm-up (the first compiled call compiles: its time is reported apart)
    outputs = {}
    for m in methods:
        start = time.perf_counter()
        outputs[m] = runs[m]()
        if m == "compiled":
            result["compile_time_s"] = time.perf_counter() - start
    for m in methods[1:] if args.warmup > 1 else []:
        for _ in range(args.warmup - 1):
            runs[m]()
    times = time_methods(runs, args.repeats, device)
    medians = {m: statistics.median(t) for m, t in times.items()}
    result["time_s"] = medians
    result["times_s"] = times
    ratios = {}
    if "opencv" in medians:
        for m, median in medians.items():
            if m != "opencv":
                ratios[f"{m}/opencv"] = median / medians["opencv"]
    if "forward_backward" in medians:
        for base in ("eager", "forward_grad"):
            if base in medians:
                ratios[f"forward_backward/{base}"] = medians["forward_backward"] / medians[base]
    result["ratio"] = ratios
    if args.load:
        with busy_processes(args.load):
            loaded = time_methods(runs, args.repeats, device)
        loaded_medians = {m: statistics.median(t) for m, t in loaded.items()}
        result["loaded"] = {
            "processes": args.load, "time_s": loaded_medians, "times_s": loaded,
            "slowdown": {m: loaded_medians[m] / medians[m] for m in loaded_medians},
            "ratio": {f"{m}/opencv": loaded_medians[m] / loaded_medians["opencv"]
                      for m in loaded_medians if m != "opencv" and "opencv" in loaded_medians},
        }
    # agreement between paths (max absolute difference of the fused images)
    diffs = {}
    if "eager" in outputs:
        eager = outputs["eager"].float()
        for m in ("stream", "compiled"):
            if m in outputs:
                same_input = case.integer_eager()() if m == "stream" else eager
                diffs[f"{m}_vs_eager"] = (outputs[m].float() - same_input.float()).abs().max().item()
        if "reference" not in skip:
            with efusion.backends.use("reference"):
                reference = case.eager()()
            diffs["eager_vs_reference"] = (reference.float() - eager).abs().max().item()
    result["max_abs_diff"] = diffs
    del outputs, runs, case
    if "memory" not in skip:
        memory = {}
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "frames.npy")
            np.save(path, frames_u8)
            for m in MEMORY_METHODS:
                if m not in skip:
                    memory[m] = measure_memory(m, path, args)
        result["memory"] = memory
    log(format_row(result))
    return result


# ---------------------------------------------------------------------------------------------
# report


COLUMNS = ("| size | N | OpenCV s | eager s (x OpenCV) | compiled s (x OpenCV) | stream s (x OpenCV) "
           "| fwd+bwd s (x eager, x fwd w/ grad) | peak MB: stream / eager / OpenCV "
           "| under --load: eager s (x own idle, x OpenCV loaded) |")


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _count(r: dict) -> str:
    """The frame count, ``B x N`` for a batch of B brackets."""
    return f"{r['batch']} x {r['frames']}" if r.get("batch", 1) > 1 else str(r["frames"])


def format_row(r: dict) -> str:
    t, q, mem = r.get("time_s", {}), r.get("ratio", {}), r.get("memory", {})

    def timed_cell(m: str) -> str:
        if m not in t:
            return "-"
        return f"{t[m]:.3f} ({_fmt(q.get(m + '/opencv'))})"

    fb = "-"
    if "forward_backward" in t:
        fb = (f"{t['forward_backward']:.3f} ({_fmt(q.get('forward_backward/eager'))}, "
              f"{_fmt(q.get('forward_backward/forward_grad'))})")
    peaks = " / ".join(_fmt(mem.get(m, {}).get("peak_delta_mb"), ".0f") for m in ("stream", "eager", "opencv"))
    loaded, under_load = r.get("loaded"), "-"
    if loaded and "eager" in loaded["time_s"]:
        under_load = (f"{loaded['time_s']['eager']:.3f} ({_fmt(loaded['slowdown']['eager'])}, "
                      f"{_fmt(loaded['ratio'].get('eager/opencv'))})")
    return (f"| {r['megapixels']:g} MP ({r['height']}x{r['width']}) | {_count(r)} | {_fmt(t.get('opencv'), '.3f')} "
            f"| {timed_cell('eager')} | {timed_cell('compiled')} | {timed_cell('stream')} | {fb} | {peaks} "
            f"| {under_load} |")


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "efusion": efusion.__version__, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        import cv2

        info["opencv"] = cv2.__version__
        info["opencv_threads"] = cv2.getNumThreads()
    except ImportError:
        info["opencv"] = None
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def targets(results: Sequence[dict]) -> dict:
    """Issue 13's targets, on the cases that ran: every cell (eager vs OpenCV, idle and under
    ``--load``), the 12 MP x 3 cell (eager, forward + backward) and the 3- vs 9-frame memory at
    12 MP. A target whose cases did not run is left out."""
    def find(mp: float, n: int) -> dict | None:
        return next((r for r in results if abs(r["megapixels"] - mp) < 0.1 and r["frames"] == n), None)

    out: dict = {}

    def check(name: str, value: float | None, limit: float) -> None:
        if value is not None:
            out[name] = {"value": value, "limit": limit, "met": value <= limit}

    def worst(values: list[float]) -> float | None:
        return max(values) if values else None

    check("eager/opencv, worst cell", worst([r["ratio"]["eager/opencv"] for r in results
                                             if "eager/opencv" in r.get("ratio", {})]), 0.5)
    loaded = [r["loaded"] for r in results if "loaded" in r]
    check("eager under load / eager idle, worst cell",
          worst([q["slowdown"]["eager"] for q in loaded if "eager" in q["slowdown"]]), 2.0)
    check("eager/opencv under load, worst cell",
          worst([q["ratio"]["eager/opencv"] for q in loaded if "eager/opencv" in q["ratio"]]), 0.5)
    three, nine = find(12, 3), find(12, 9)
    if three:
        q = three.get("ratio", {})
        check("eager/opencv at 12 MP x 3", q.get("eager/opencv"), 0.2)
        check("forward_backward/eager at 12 MP x 3", q.get("forward_backward/eager"), 2.5)
        eager_peak = three.get("memory", {}).get("eager", {}).get("peak_delta_mb")
        if eager_peak is not None:
            check("eager peak (3 frames) / input as float32", eager_peak / three["input_mb"]["float32"], 2.0)
    if three and nine:
        for method, limit in (("eager", 1.3), ("stream", 1.3)):
            a = three.get("memory", {}).get(method, {}).get("peak_delta_mb")
            b = nine.get("memory", {}).get(method, {}).get("peak_delta_mb")
            if a and b is not None:
                check(f"{method} peak 9 frames / 3 frames", b / a, limit)
    return out


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help=f"comma-separated megapixels or HxW (default {DEFAULT_SIZES})")
    parser.add_argument("--frames", help=f"comma-separated frame counts (default {DEFAULT_FRAMES})")
    parser.add_argument("--max-megapixel-frames", type=float, default=None,
                        help=f"skip cases with more megapixels x frames (default grid: {DEFAULT_MAX_MEGAPIXEL_FRAMES})")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per method (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per method first (default 1)")
    parser.add_argument("--device", default="cpu", help="device of efusion's tensors (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="efusion's float dtype")
    parser.add_argument("--preset", default="mertens", choices=sorted(efusion.PRESETS), help="efusion's preset")
    parser.add_argument("--backend", default=None,
                        help="efusion backend for every method (efusion.backends.use; default: automatic selection, "
                             f"which prefers 'native'); one of {', '.join(efusion.backends.available())}")
    parser.add_argument("--threads", type=int, default=0, help="threads for torch and OpenCV (default: theirs)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed")
    parser.add_argument("--batch", type=int, default=1, metavar="B",
                        help="B brackets at once: efusion on [B, N, 3, H, W], OpenCV and stream one by one (default 1)")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="also time every case beside N busy processes (default 0: idle only)")
    parser.add_argument("--skip", default="", help=f"comma-separated, among {', '.join(SKIPPABLE)}")
    parser.add_argument("--inductor", action="store_true",
                        help="compile the reference code with Inductor (default on a CPU: the kernels' operators)")
    parser.add_argument("--quick", action="store_true", help="1 and 3 MP, 3 frames, 3 repeats")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON ('-': stdout)")
    parser.add_argument("--probe", choices=MEMORY_METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--probe-input", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)
    if args.backend is not None and args.backend not in efusion.backends.available():
        raise SystemExit(f"--backend: unknown {args.backend!r}; choose among {', '.join(efusion.backends.available())}")
    with efusion.backends.use(args.backend):
        return _main(args)


def _main(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            import cv2

            cv2.setNumThreads(args.threads)
        except ImportError:
            pass
    if args.probe:  # internal: one memory measurement in this fresh process
        print(json.dumps(probe_memory(args.probe, args.probe_input, args.device, args.dtype, args.preset)))
        return {}
    if args.inductor:
        global COMPILED_BACKEND
        COMPILED_BACKEND = "reference"
    args.skip = [s for s in args.skip.split(",") if s]
    unknown = set(args.skip) - set(SKIPPABLE)
    if unknown:
        raise SystemExit(f"--skip: unknown {sorted(unknown)}; choose among {', '.join(SKIPPABLE)}")
    if args.repeats < 1 or args.warmup < 1:
        raise SystemExit("--repeats and --warmup must be >= 1")
    if args.batch < 1:
        raise SystemExit("--batch must be >= 1")
    if args.load < 0:
        raise SystemExit("--load must be >= 0")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is available here")
    if torch.device(args.device).type != "cuda" and args.dtype in ("float16", "bfloat16"):
        args.skip.append("compiled")  # half precision on a CPU runs the (slow) reference path
    try:
        import cv2
    except ImportError:
        args.skip.append("opencv")
    default_grid = args.sizes is None and args.frames is None and not args.quick
    if args.quick:
        args.sizes, args.frames, args.repeats = args.sizes or "1,3", args.frames or "3", min(args.repeats, 3)
    sizes = [parse_size(s) for s in (args.sizes or DEFAULT_SIZES).split(",")]
    counts = [int(n) for n in (args.frames or DEFAULT_FRAMES).split(",")]
    limit = args.max_megapixel_frames or (DEFAULT_MAX_MEGAPIXEL_FRAMES if default_grid else math.inf)
    cases = [(h, w, n) for h, w in sizes for n in counts if h * w * n / 1e6 <= limit]
    to_stdout = args.json == "-"

    def log(line: str) -> None:
        print(line, file=sys.stderr if to_stdout else sys.stdout, flush=True)

    log(COLUMNS)
    log("|" + "---|" * 9)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = [run_case(h, w, n, args, log) for h, w, n in cases]
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if args.argv is None else "bench.py " + " ".join(args.argv),
        "machine": machine(),
        "load_average": {"before": load_before, "after": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("probe")},
        "grad_params": GRAD_PARAMS,
        "cases": results,
        "targets": targets(results),
    }
    for name, t in report["targets"].items():
        log(f"target {name}: {t['value']:.2f} (limit {t['limit']}) {'met' if t['met'] else 'NOT met'}")
    if args.json:
        text = json.dumps(report, indent=1)
        if to_stdout:
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
