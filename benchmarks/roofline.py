"""How close the native forward runs to this machine's memory bandwidth (issue 13, target 5).

Measures the bandwidth of a large copy and a triad with torch (default threads), models the bytes
each pass of the native no-grad forward (``efusion_native::weights``, the blend's level passes,
the collapse) must move at least and the floating-point operations it does, times the passes, and
prints ``time / (bytes / bandwidth)``: 1 would be a pass that only streams its data.

Byte model (float elements; every array read or written once per pass, an accumulator read and
written, coarse levels written once and read as the next level's input; caches hold the rows a
pass reuses, so halo and filter re-reads are free):

- weights: read the stack ``N C P``, write the weights ``N P`` (the normalisation runs on rows in cache);
- per frame and level ``l`` below the top: read the level's image and weights ``(C + 1) P_l``,
  write the next level ``(C + 1) P_{l+1}``, the band accumulator ``C P_l`` written (first frame)
  or read and written (the others); the top level: read ``(C + 1) P_top``, residual accumulator likewise;
- collapse, per level: read the accumulator ``C P_l`` and the coarser result ``C P_{l+1}``, write ``C P_l``.

Flop model (additions and multiplications; the per-pixel counts of kernels.cpp's loops):
weights 40 per pixel and frame plus a square root and an exponential; the downsample 6 per fine
pixel and plane (5 taps along rows at half width: 4, along columns at quarter size: 2); the
upsample and band 7 per fine pixel and channel; the collapse 6 per pixel and channel.

    python benchmarks/roofline.py                    # 12 MP x 3, default threads
    python benchmarks/roofline.py --size 1 --frames 3 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # the benchmark's inputs: the same synthetic brackets

WEIGHT_FLOPS, DOWN_FLOPS, UP_BAND_FLOPS, COLLAPSE_FLOPS = 40, 6, 7, 6


def bandwidth(megabytes: int = 256, repeats: int = 7) -> dict[str, float]:
    """GB/s (10^9 bytes read + written per second, medians) of ``dst.copy_(src)`` and the triad ``a = b + 2 c``."""
    n = megabytes * 2**20 // 4
    a, b, c = (torch.ones(n) for _ in range(3))  # touched: no first-touch page faults in the timings
    results = {}
    for name, fn, moved in (("copy", lambda: a.copy_(b), 2), ("triad", lambda: torch.add(b, c, alpha=2, out=a), 3)):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        results[name] = moved * n * 4 / statistics.median(times) / 1e9
    return results


def level_sizes(height: int, width: int, top: int) -> list[int]:
    """Pixels per pyramid level (each level ``ceil`` half the previous, as the kernels)."""
    sizes, h, w = [], height, width
    for _ in range(top):
        sizes.append(h * w)
        h, w = (h + 1) // 2, (w + 1) // 2
    return sizes


def model(height: int, width: int, frames: int, channels: int, top: int, itemsize: int = 4) -> dict[str, tuple[float, float]]:
    """``{pass: (bytes, flops)}`` of the native forward (see the module docstring)."""
    sizes = level_sizes(height, width, top)
    p, c, n = sizes[0], channels, frames
    weights = ((n * c * p + n * p) * itemsize, n * p * WEIGHT_FLOPS)
    blend_bytes = blend_flops = 0.0
    for frame in range(n):
        acc = 1 if frame == 0 else 2  # written, or read and written
        for l, size in enumerate(sizes):
            if l < top - 1:
                blend_bytes += ((c + 1) * size + (c + 1) * sizes[l + 1] + acc * c * size) * itemsize
                blend_flops += (c + 1) * size * DOWN_FLOPS + c * size * UP_BAND_FLOPS
            else:
                blend_bytes += ((c + 1) * size + acc * c * size) * itemsize
                blend_flops += 2 * c * size
    collapse_bytes = sum((2 * c * size + (c * sizes[l + 1] if l < top - 1 else 0)) * itemsize for l, size in enumerate(sizes))
    collapse_flops = sum(c * size * COLLAPSE_FLOPS for size in sizes)
    return {"weights": weights, "blend + collapse": (blend_bytes + collapse_bytes, blend_flops + collapse_flops)}


def timings(stack: torch.Tensor, repeats: int) -> tuple[dict[str, float], int]:
    """Median seconds of the native ``weights``, ``blend`` (with its collapse) and ``fuse`` operators, and the depth."""
    from efusion.backends.native import BACKEND, build, conventions
    from efusion.presets import get_preset

    if not build.load():
        raise SystemExit("the native kernels are unavailable (no C++ compiler?)")
    preset = get_preset("mertens")
    codes, reals = conventions(preset)
    band, residual = BACKEND._plan(None, stack, preset)
    weight_args = [[1.0, 1.0, 1.0], [0.5] * 3, [0.2] * 3, False]
    weights = torch.ops.efusion_native.weights(stack, *weight_args, reals, codes)
    runs = {
        "weights": lambda: torch.ops.efusion_native.weights(stack, *weight_args, reals, codes),
        "blend + collapse": lambda: torch.ops.efusion_native.blend(stack, weights, band, residual, reals, codes),
        "fuse": lambda: torch.ops.efusion_native.fuse(stack, *weight_args, reals, band, residual, codes),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):  # interleaved, as bench.py
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, len(band)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="12", help="megapixels (4:3) or HxW (default 12)")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--bandwidth-mb", type=int, default=256, help="MiB per array of the bandwidth runs (default 256)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = bench.parse_size(args.size)
    frames_u8 = bench.make_frames(height, width, args.frames, 0)
    stack = (torch.from_numpy(frames_u8).permute(0, 3, 1, 2).float() / 255).unsqueeze(0).contiguous()
    bw = bandwidth(args.bandwidth_mb)
    seconds, top = timings(stack, args.repeats)
    passes = model(height, width, args.frames, 3, top)
    passes["fuse"] = tuple(sum(v[i] for v in passes.values()) for i in range(2))  # type: ignore[assignment]
    print(f"{height}x{width} x {args.frames} frames, {top} levels, {torch.get_num_threads()} threads; "
          f"bandwidth: copy {bw['copy']:.1f} GB/s, triad {bw['triad']:.1f} GB/s")
    print("| pass | bytes (model) | flops (model) | time | bytes / triad bandwidth | time / that | GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (moved, flops) in passes.items():
        floor = moved / (bw["triad"] * 1e9)
        print(f"| {name} | {moved / 1e9:.2f} GB | {flops / 1e9:.2f} G | {seconds[name]:.3f} s | {floor:.3f} s "
              f"| {seconds[name] / floor:.1f}x | {flops / seconds[name] / 1e9:.1f} |")


if __name__ == "__main__":
    main()
