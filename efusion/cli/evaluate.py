"""``efusion eval``: score fusions with MEF-SSIM (and PSNR/SSIM against a reference), with the
protocol of the metric's published reference scores (how files become gray images, which scales).

The protocol is described for users in ``efusion eval --help`` (:mod:`efusion.cli.parser`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..color import rgb_to_gray
from ..io import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageIOError,
    ParamsError,
    list_frames,
    read_bracket,
)
from ..io.errors import one_line
from .common import (
    DTYPES,
    CommandError,
    check_finite,
    choose_device,
    effective_params,
    exact_codes,
    fusion_params,
    print_error,
    same_file,
    shown_value,
    warn_clamped_depth,
    warn_repeated_frames,
)

__all__ = ["run"]

#: settings of ``mef_ssim`` used here: its defaults, the reference code's
_MEF_SCALES = 3
_MEF_WINDOW = 11
#: the reference needs the window to fit at the coarsest scale: 11 * 2^2 = 44 pixels
_MEF_MIN_SIZE = _MEF_WINDOW * 2 ** (_MEF_SCALES - 1)
#: code values per sample of integer files; rgb2gray rounds the gray of such frames to them
_CODE_VALUES = {8: 255, 16: 65535}
_IMAGE_LABELS = {"efusion": "efusion", "mean": "mean of frames"}


def run(args: argparse.Namespace) -> int:
    """Run ``efusion eval``; returns the exit status."""
    if args.fused_only and not args.fused:
        raise CommandError("--fused-only needs --fused IMAGE, the image to score instead of efusion's result", code=2)
    brackets = _eval_brackets([Path(p) for p in args.inputs])
    fused_paths = [Path(p) for p in args.fused or []]
    if len(brackets) > 1:
        for path in fused_paths:
            if not path.is_dir():
                raise CommandError(
                    f"--fused belongs to one bracket, but {len(brackets)} folders were given: give a folder of results "
                    f"instead, matched to the brackets by name ({path})",
                    code=2,
                )
        if args.reference is not None:
            raise CommandError(
                f"--reference belongs to one bracket, but {len(brackets)} folders were given (evaluate them one at a time)",
                code=2,
            )
    params = None if args.fused_only else fusion_params(args)
    device = choose_device(args.device)
    dtype = DTYPES[args.dtype]
    if len(brackets) == 1:  # read before any fusion: a bad file fails at once
        fused = [(path, _read_scored_image(path, args.max_pixels)) for path in _fused_of(brackets[0][1], fused_paths)]
    else:
        fused = None  # found and read for each bracket
    reference = _read_scored_image(Path(args.reference), args.max_pixels)[0] if args.reference is not None else None

    reports, failed = [], 0
    try:
        for label, source in brackets:
            try:
                images = fused
                if images is None:
                    images = [(path, _read_scored_image(path, args.max_pixels)) for path in _fused_of(source, fused_paths)]
                report = _eval_bracket(label, source, args, params, device, dtype, images, reference)
            except Exception as error:
                if len(brackets) > 1:  # one bad bracket must not stop the others
                    failed += 1
                    print_error(_bracket_error(label, error))
                    continue
                if isinstance(error, (ImageIOError, ParamsError, CommandError)):
                    raise  # already names the file
                if isinstance(error, (ValueError, TypeError, RuntimeError, MemoryError)):  # from the fusion or metric
                    raise CommandError(f"{label}: {one_line(error)}") from None
                raise
            reports.append(report)
            if args.json:
                print(json.dumps(report, allow_nan=False), flush=True)
    except KeyboardInterrupt:
        print_error(f"interrupted after scoring {len(reports)} of {len(brackets)} brackets")
        return 130
    if not args.json and reports:
        print(_eval_table(reports))
    return 1 if failed else 0


def _eval_brackets(paths: list[Path]) -> list[tuple[str, Path | list[Path]]]:
    """(label, folder or frame files) of each bracket on the command line."""
    folders = [p for p in paths if p.is_dir()]
    if folders and len(folders) < len(paths):
        raise CommandError(
            f"{folders[0]}: is a folder; give the frame files of one bracket, or folders only (one bracket each)", code=2
        )
    if folders:
        unique: list[Path] = []
        for folder in folders:
            if not any(same_file(folder, seen) for seen in unique):
                unique.append(folder)
        return [(str(folder), folder) for folder in unique]
    label = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more frames)"
    warn_repeated_frames(paths)
    return [(label, paths)]


def _fused_of(source: Path | list[Path], fused: list[Path]) -> list[Path]:
    """The --fused images of one bracket: files as given; in a folder, the image named after the
    bracket's folder (as ``efusion fuse --out-dir`` names its results)."""
    images = []
    for path in fused:
        if not path.is_dir():
            images.append(path)
            continue
        if not isinstance(source, Path):
            raise CommandError(
                f"--fused {path}: is a folder of results, matched to bracket folders by name; with frame files give "
                "the fused image itself",
                code=2,
            )
        name = Path(os.path.abspath(source)).name
        try:
            matches = sorted(p for p in path.iterdir() if p.stem == name and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        except OSError as error:
            raise CommandError(f"{path}: cannot list the folder ({error.strerror or error})") from None
        if not matches:
            raise CommandError(f"{path}: no result named {name!r} ({', '.join(IMAGE_SUFFIXES)}) for the bracket {source}")
        if len(matches) > 1:
            raise CommandError(f"{path}: several results named {name!r} for the bracket {source}: "
                               f"{', '.join(p.name for p in matches)}; keep one")
        images.append(matches[0])
    return images


def _bracket_error(label: str, error: BaseException) -> str:
    """The one-line message for a bracket of a batch that failed."""
    if isinstance(error, (ImageIOError, ParamsError, CommandError)):
        return str(error)  # already names the file
    if isinstance(error, (ValueError, TypeError, RuntimeError, MemoryError, OSError)):
        return f"{label}: {one_line(error)}"
    return f"{label}: unexpected {type(error).__name__}: {one_line(error)}"


def _read_scored_image(path: Path, max_pixels: int | None = MAX_PIXELS) -> tuple[torch.Tensor, int | None]:
    """A fused or reference image as float64 ``[C, H, W]`` clipped to [0, 1] as the metrics expect,
    and its code values per sample (255, 65535, or None for float)."""
    image = read_bracket([path], dtype=torch.float64, max_pixels=max_pixels)
    if torch.isnan(image.frames).any():
        raise CommandError(f"{path}: has NaN samples; cannot score it")
    return image.frames[0].clamp_(0, 1), _CODE_VALUES.get(image.bit_depth)


def _mef_gray(images: torch.Tensor, levels: int | None) -> torch.Tensor:
    """Gray ``[..., 1, H, W]`` on the 0-255 scale as the reference scores prepare images: MATLAB's
    ``rgb2gray`` of [0, 1] images, which rounds integer images' gray to their code values."""
    gray = rgb_to_gray(images)
    if levels is not None:
        gray = torch.round(gray * levels) / levels
    return gray * 255.0


def _eval_bracket(label, source, args, params, device, dtype, fused, reference) -> dict[str, Any]:
    """Fuse (unless --fused-only) and score one bracket; returns its JSON report."""
    import efusion

    from ..metrics import mef_ssim, psnr, ssim

    paths = list_frames(source) if isinstance(source, Path) else source
    bracket = read_bracket(paths, dtype=torch.float64, max_pixels=args.max_pixels)
    count, _, height, width = bracket.frames.shape
    if count < 2:
        where = f"{label}: holds one frame ({paths[0]})" if isinstance(source, Path) else f"{paths[0]}: one frame"
        raise CommandError(f"{where}; MEF-SSIM scores a fusion against its bracket and needs at least 2 frames")
    if bracket.bit_depth == 32:
        for path, frame in zip(paths, bracket.frames):  # the fusion takes float frames unclipped: NaN scores
            check_finite(path, frame, cannot="score the bracket")
    if params is not None:
        warn_clamped_depth(args, params, height, width)
    if min(height, width) < _MEF_MIN_SIZE:
        raise CommandError(
            f"{label}: frames are {width}x{height}, too small for MEF-SSIM: it needs at least {_MEF_MIN_SIZE} pixels on "
            f"each side (an {_MEF_WINDOW}-pixel window at {_MEF_SCALES} scales)"
        )
    others = [("--fused", str(path), image) for path, (image, _) in fused]
    for option, path, image in [*others, ("--reference", args.reference, reference)]:
        if image is not None and tuple(image.shape[-2:]) != (height, width):
            raise CommandError(
                f"{path}: {option} image is {image.shape[-1]}x{image.shape[-2]} but the bracket's frames are "
                f"{width}x{height} ({paths[0]})"
            )

    # (kind, path, image [C, H, W] in [0, 1], float64 on device, code values of its file or None)
    candidates: list[tuple[str, str | None, torch.Tensor, int | None]] = []
    if not args.fused_only:
        with torch.inference_mode():
            mask = None if bracket.mask is None else bracket.mask.to(device=device, dtype=dtype)
            stack = bracket.frames.to(device=device, dtype=dtype)
            if exact_codes(params, dtype, bracket.bit_depth, mask is not None):  # as efusion fuse: measured exactly
                stack = (bracket.frames * 65535).round_().to(torch.int32).to(device=device, dtype=torch.uint16)
            result = efusion.exposure_fusion(stack, mask=mask, **params)
        candidates.append(("efusion", None, result.to(torch.float64).clamp(0, 1), None))
        del result, mask
    for path, (image, levels) in fused:
        candidates.append(("fused", str(path), image.to(device), levels))
    frames = bracket.frames.to(device).clamp_(0, 1)  # after the fusion, which takes float frames as they are
    if args.baselines:
        candidates.append(("mean", None, frames.mean(dim=0), None))

    # as the metric's published reference scores were made: MATLAB imread + rgb2gray (MEFB's wrapper)
    stack_gray = _mef_gray(frames, _CODE_VALUES.get(bracket.bit_depth))
    fused_gray = [_mef_gray(image, levels) for _, _, image, levels in candidates]
    if args.baselines:
        fused_gray.extend(stack_gray)  # every frame scored as the fused image: the best one is a baseline
    score, per_scale = mef_ssim(
        torch.stack(fused_gray), stack_gray.unsqueeze(0), scales=_MEF_SCALES, window_size=_MEF_WINDOW, data_range=255.0,
        return_per_scale=True,
    )
    score, per_scale = score.cpu().tolist(), per_scale.cpu().tolist()
    rows = [(kind, path, image, score[i], per_scale[i]) for i, (kind, path, image, _) in enumerate(candidates)]
    if args.baselines:
        best = max(range(count), key=lambda i: score[len(candidates) + i])
        at = len(candidates) + best
        rows.append(("best_frame", str(paths[best]), frames[best], score[at], per_scale[at]))

    if reference is not None:
        reference = reference.to(device)
    results = []
    for kind, path, image, multi, scales in rows:
        entry = {
            "image": kind,
            "path": path,
            "mef_ssim": multi,
            "mef_ssim_single_scale": scales[0],
            "mef_ssim_per_scale": scales,
            "psnr": None,
            "ssim": None,
        }
        if reference is not None:
            target = reference
            if image.shape[0] != target.shape[0]:  # gray against colour: compare gray
                image, target = rgb_to_gray(image), rgb_to_gray(target)
            ratio = psnr(image, target).item()
            entry["psnr"] = None if math.isinf(ratio) else ratio  # identical images; JSON has no infinity
            entry["ssim"] = ssim(image, target).item()
        results.append(entry)
    return {
        "bracket": label,
        "frames": [str(p) for p in paths],
        "width": width,
        "height": height,
        "params": None if params is None else effective_params(params),
        "reference": None if args.reference is None else str(args.reference),
        "results": results,
    }


def _eval_table(reports: list[dict[str, Any]]) -> str:
    """The reports as an aligned text table, with a few lines saying what the numbers are."""
    with_reference = any(report["reference"] is not None for report in reports)
    header = ["bracket", "image", "MEF-SSIM", "single-scale"] + (["PSNR (dB)", "SSIM"] if with_reference else [])
    rows = []
    for report in reports:
        for i, result in enumerate(report["results"]):
            kind = result["image"]
            if kind == "best_frame":
                name = f"best frame: {Path(result['path']).name}"
            else:
                name = result["path"] if kind == "fused" else _IMAGE_LABELS[kind]
            row = [report["bracket"] if i == 0 else "", name]
            row += [f"{result['mef_ssim']:.6f}", f"{result['mef_ssim_single_scale']:.6f}"]
            if with_reference:
                row += ["inf" if result["psnr"] is None else f"{result['psnr']:.2f}", f"{result['ssim']:.6f}"]
            rows.append(row)
    widths = [max(len(line[j]) for line in [header, *rows]) for j in range(len(header))]

    def fmt(line: list[str]) -> str:
        cells = [cell.ljust(width) if j < 2 else cell.rjust(width) for j, (cell, width) in enumerate(zip(line, widths))]
        return "  ".join(cells).rstrip()

    lines = [fmt(header), *(fmt(row) for row in rows), ""]
    params = reports[0]["params"]  # the same for every bracket
    if params is not None:
        shown = {name: shown_value(value) for name, value in params.items()}
        order = ("preset", "contrast", "saturation", "exposure", "mu", "sigma", "levels")
        settings = ", ".join(f"{name} {shown[name]}" for name in order)
        lines.append(f"efusion: {settings}; its result is scored as computed, clipped to [0, 1]")
    lines.append(
        f"MEF-SSIM: Ma, Zeng & Wang (IEEE TIP 2015) on gray, over {_MEF_SCALES} scales and at full resolution only; 1 is best"
    )
    if with_reference:
        references = ", ".join(sorted({report["reference"] for report in reports if report["reference"] is not None}))
        lines.append(f"PSNR over R, G, B and SSIM (Wang et al., IEEE TIP 2004) on luma, against {references}")
    return "\n".join(lines)
