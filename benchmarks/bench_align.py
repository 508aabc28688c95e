"""Benchmark efusion.align against OpenCV's AlignMTB on the same shaken brackets: speed and accuracy.

A synthetic bracket (:func:`efusion.synthetic.bracket`, an HDR room at -2, 0, +2 EV, 8-bit) is
rendered larger than the frame, and each frame is cut from it at a known integer offset (AlignMTB
finds integer translations only, so the cases are ones it can represent). Timed, interleaved,
repeat after repeat, warm medians:

- ``opencv``: ``cv2.createAlignMTB().process(frames, aligned)`` on the uint8 ``H x W x 3`` frames
  (estimation and shifting), its shifts read back with ``calculateShift`` against the middle frame
  (untimed);
- ``translation`` / ``homography``: ``efusion.align(stack, model=..., reference=1)`` on the float
  stack ``[3, 3, H, W]`` (estimation and warp), without autograd.

Accuracy: the corner RMS (pixels) of each method's transform against the true offsets, worst frame.

Usage::

    python benchmarks/bench_align.py                    # 3 x 12 MP, 5 repeats
    python benchmarks/bench_align.py --size 1200x1600 --repeats 3 --device cuda
    python benchmarks/bench_align.py --threads 1         # torch and OpenCV on one thread each
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import efusion
from efusion.synthetic import bracket

#: true offsets (x, y) of the frames in pixels; the middle frame is the reference
OFFSETS = [(-57, 31), (0, 0), (44, -38)]


def make_case(height: int, width: int, seed: int = 0):
    pad = 64
    big = bracket(height + 2 * pad, width + 2 * pad, 3, ev_step=2.0, seed=seed)  # [3, 3, H, W] in [0, 1]
    big = (big * 255).round().clamp(0, 255).to(torch.uint8)
    frames = torch.stack([big[i, :, pad + dy : pad + dy + height, pad + dx : pad + dx + width] for i, (dx, dy) in enumerate(OFFSETS)])
    truth = torch.eye(3, dtype=torch.float64).repeat(3, 1, 1)
    for i, (dx, dy) in enumerate(OFFSETS):
        # reference pixel p shows what frame i shows at p + (dx_ref - dx_i, ...): frame i was cut at its offset
        truth[i, 0, 2], truth[i, 1, 2] = OFFSETS[1][0] - dx, OFFSETS[1][1] - dy
    return frames, truth


def corner_rms(estimated: torch.Tensor, truth: torch.Tensor, height: int, width: int) -> float:
    corners = torch.tensor([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], dtype=torch.float64)
    worst = 0.0
    for e, t in zip(estimated, truth):
        pe, pt = corners @ e.double().cpu().T, corners @ t.T
        d = pe[:, :2] / pe[:, 2:] - pt[:, :2] / pt[:, 2:]
        worst = max(worst, float((d ** 2).sum(-1).mean().sqrt()))
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="3000x4000", help="HxW of the frames (default 12 MP)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="threads for torch and OpenCV (default: their own defaults)")
    args = parser.parse_args(argv)
    import cv2

    if args.threads is not None:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)

    height, width = (int(v) for v in args.size.lower().split("x"))
    device = torch.device(args.device)
    frames, truth = make_case(height, width)
    images = [np.ascontiguousarray(f.permute(1, 2, 0).numpy()[..., ::-1]) for f in frames]  # BGR as cv2 users pass
    stack = (frames.to(device).float() / 255)

    mtb = cv2.createAlignMTB()

    def run_opencv():
        out = []
        mtb.process(images, out)
        return out

    def run_efusion(model):
        with torch.no_grad():
            result = efusion.align(stack, model=model, reference=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result

    methods = {"opencv": run_opencv, "translation": lambda: run_efusion("translation"), "homography": lambda: run_efusion("homography")}
    for fn in methods.values():  # warm-up
        fn()
    times = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    gray = [cv2.cvtColor(im, cv2.COLOR_BGR2GRAY) for im in images]
    cv_h = torch.eye(3, dtype=torch.float64).repeat(3, 1, 1)
    for i in range(3):
        dx, dy = mtb.calculateShift(gray[1], gray[i])  # shift that moves frame i onto the reference
        cv_h[i, 0, 2], cv_h[i, 1, 2] = -dx, -dy
    errors = {"opencv": corner_rms(cv_h, truth, height, width)}
    for model in ("translation", "homography"):
        errors[model] = corner_rms(run_efusion(model).homographies, truth, height, width)

    print(
        f"3 frames {height}x{width} ({height * width / 1e6:.1f} MP), device {device}, torch threads "
        f"{torch.get_num_threads()}, OpenCV threads {cv2.getNumThreads()}, {args.repeats} repeats"
    )
    print("| method | median s | min s | worst corner RMS px |")
    print("|---|---|---|---|")
    for name in methods:
        print(f"| {name} | {statistics.median(times[name]):.3f} | {min(times[name]):.3f} | {errors[name]:.3f} |")


if __name__ == "__main__":
    main()
