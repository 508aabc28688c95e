"""``efusion demo``: fuse a generated bracket and write its frames, the result and a contact sheet."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..io import write_image
from .common import (
    PROG,
    CommandError,
    check_writable,
    display,
    fusion_settings,
    make_folder,
)

__all__ = ["DEMO_DIR", "run"]

#: the default output folder; a re-run refreshes it
DEMO_DIR = "efusion-demo"


def run(args: argparse.Namespace) -> int:
    """Run ``efusion demo``; returns the exit status."""
    import efusion
    from efusion import synthetic

    params, device, dtype = fusion_settings(args)
    out_dir = Path(args.out_dir)
    frame_paths = [out_dir / "frames" / f"frame-{i}.png" for i in range(args.frames)]
    fused_path, sheet_path = out_dir / "fused.png", out_dir / "contact-sheet.png"
    # the default folder holds nothing but an earlier demo's output: re-running refreshes it
    overwrite = args.force or out_dir == Path(DEMO_DIR)
    if not overwrite:
        for path in [fused_path, sheet_path, *frame_paths]:
            if path.exists():
                raise CommandError(f"{path}: already exists (pass --force to overwrite, or --out-dir to write elsewhere)")
    check_writable(out_dir)

    start = time.perf_counter()
    stack = synthetic.bracket(args.height, args.width, args.frames, ev_step=args.ev_step, seed=args.seed)
    stack = stack.to(device=device, dtype=dtype)
    with torch.inference_mode():
        weights = efusion.mertens_weights(stack, **_weight_params(params))
        result = efusion.blend(stack, weights, levels=params.get("levels"), preset=params.get("preset", "mertens"))
        image = display(result, args, 8)
        sheet = _contact_sheet(stack, weights, image)
    seconds = time.perf_counter() - start

    make_folder(frame_paths[0].parent)
    if overwrite:  # frames of an earlier run with more frames would join this bracket
        for path in frame_paths[0].parent.glob("frame-*.png"):
            number = path.name[len("frame-"):-len(".png")]
            if number.isdigit() and str(int(number)) == number and int(number) >= args.frames and path.is_file():
                try:
                    path.unlink()
                except OSError as error:
                    raise CommandError(f"{path}: cannot remove this earlier demo frame ({error.strerror or error})") from None
    for path, frame in zip(frame_paths, stack):
        write_image(path, frame, bit_depth=8, overwrite=overwrite)
    write_image(fused_path, image, bit_depth=8, overwrite=overwrite)
    write_image(sheet_path, sheet, bit_depth=8, overwrite=overwrite)
    print(
        f"{PROG} demo: generated and fused a {args.frames}-frame bracket ({args.width}x{args.height}, "
        f"{args.ev_step:g} EV apart) in {seconds:.2f} s on {device.type}\n"
        f"  frames:        {frame_paths[0].parent}{os.sep} ({len(frame_paths)} PNG files)\n"
        f"  result:        {fused_path}\n"
        f"  contact sheet: {sheet_path} (frames on top, their weight maps below, the result on the right)\n"
        f"Fuse your own bracket the same way:  {PROG} fuse {frame_paths[0].parent}{os.sep} -o fused.png"
    )
    return 0


def _weight_params(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if key != "levels"}


def _contact_sheet(frames: torch.Tensor, weights: torch.Tensor, fused: torch.Tensor, gap: int = 8) -> torch.Tensor:
    """Frames in a row, their weight maps (gray) below, the result on the right: ``[3, H', W']``."""
    n, _, height, width = frames.shape
    sheet = torch.full((3, 2 * height + 3 * gap, (n + 1) * width + (n + 2) * gap), 0.12)

    def place(image: torch.Tensor, top: int, left: int) -> None:
        sheet[:, top : top + height, left : left + width] = image.float().cpu().clamp(0, 1).expand(3, -1, -1)

    for i in range(n):
        left = gap + i * (width + gap)
        place(frames[i], gap, left)
        place(weights[i], 2 * gap + height, left)
    place(fused, gap + (height + gap) // 2, gap + n * (width + gap))
    return sheet
