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
    unaligned_path, before_after_path = out_dir / "unaligned.png", out_dir / "before-after.png"
    extra_paths = [unaligned_path, before_after_path] if args.align else []
    # the default folder holds nothing but an earlier demo's output: re-running refreshes it
    overwrite = args.force or out_dir == Path(DEMO_DIR)
    if not overwrite:
        for path in [fused_path, sheet_path, *extra_paths, *frame_paths]:
            if path.exists():
                raise CommandError(f"{path}: already exists (pass --force to overwrite, or --out-dir to write elsewhere)")
    check_writable(out_dir)

    start = time.perf_counter()
    if args.align:
        stack = _shaken_bracket(args)
    else:
        stack = synthetic.bracket(args.height, args.width, args.frames, ev_step=args.ev_step, seed=args.seed)
    stack = stack.to(device=device, dtype=dtype)
    with torch.inference_mode():
        frames, mask = stack, None
        if args.align:
            unaligned = display(efusion.exposure_fusion(stack, **params), args, 8)
            alignment = efusion.align(stack, model=args.align, reference=args.frames // 2)  # the steady one
            frames, mask = alignment.frames, alignment.mask
        weights = efusion.mertens_weights(frames, mask=mask, **_weight_params(params))
        result = efusion.blend(frames, weights, levels=params.get("levels"), preset=params.get("preset", "mertens"))
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
    aligned_lines = ""
    if args.align:
        write_image(unaligned_path, unaligned, bit_depth=8, overwrite=overwrite)
        write_image(before_after_path, _side_by_side(unaligned, image), bit_depth=8, overwrite=overwrite)
        aligned_lines = (f"  shaken, fused as it is: {unaligned_path}\n"
                         f"  before | after --align {args.align}: {before_after_path}\n")
    print(
        f"{PROG} demo: generated and fused a {args.frames}-frame bracket ({args.width}x{args.height}, "
        f"{args.ev_step:g} EV apart) in {seconds:.2f} s on {device.type}\n"
        f"  frames:        {frame_paths[0].parent}{os.sep} ({len(frame_paths)} PNG files)\n"
        f"  result:        {fused_path}\n"
        f"  contact sheet: {sheet_path} (frames on top, their weight maps below, the result on the right)\n"
        f"{aligned_lines}"
        f"Fuse your own bracket the same way:  {PROG} fuse {frame_paths[0].parent}{os.sep} -o fused.png"
        + (f" --align {args.align}" if args.align else "")
    )
    return 0


def _weight_params(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if key != "levels"}


def _shaken_bracket(args: argparse.Namespace) -> torch.Tensor:
    """The demo's bracket as a hand-held camera takes it: each frame cut from a larger render at its
    own offset (up to 4% of the frame's size; the middle frame, ``frames // 2``, centred)."""
    from efusion import synthetic

    pad_y, pad_x = max(1, round(0.04 * args.height)), max(1, round(0.04 * args.width))
    large = synthetic.bracket(args.height + 2 * pad_y, args.width + 2 * pad_x, args.frames, ev_step=args.ev_step,
                              seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    frames = []
    for i, frame in enumerate(large):
        steady = i == args.frames // 2
        dy = 0 if steady else int(torch.randint(-pad_y, pad_y + 1, (), generator=generator))
        dx = 0 if steady else int(torch.randint(-pad_x, pad_x + 1, (), generator=generator))
        frames.append(frame[:, pad_y + dy:pad_y + dy + args.height, pad_x + dx:pad_x + dx + args.width])
    return torch.stack(frames)


def _side_by_side(left: torch.Tensor, right: torch.Tensor, gap: int = 8) -> torch.Tensor:
    """Two ``[3, H, W]`` images with a dark gap between them."""
    spacer = torch.full((3, left.shape[-2], gap), 0.12, dtype=left.dtype, device=left.device)
    return torch.cat([left, spacer, right], dim=-1)


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
