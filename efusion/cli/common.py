"""Steps the ``efusion`` commands share: fusion settings from the options, checks, messages.

Public names here are for the modules of :mod:`efusion.cli`; the command line's public API is
:func:`efusion.cli.main`.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..io import (
    PARAM_NAMES,
    ImageIOError,
    ParamsError,
    read_params,
    to_display,
    validate_params,
)
from ..io.errors import one_line

__all__ = [
    "DTYPES",
    "PROG",
    "CommandError",
    "check_finite",
    "check_writable",
    "choose_device",
    "display",
    "effective_params",
    "fusion_params",
    "fusion_settings",
    "make_folder",
    "print_error",
    "same_file",
    "shown_value",
    "warn_clamped_depth",
    "warn_repeated_frames",
]

PROG = "efusion"
#: --dtype choices
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def print_error(message: str) -> None:
    """Print ``message`` as the one ``efusion: error: ...`` line on stderr."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def warn_repeated_frames(frames: list[Path]) -> None:
    """A frame file listed twice counts twice in the fusion (a doubled glob, most likely): say so."""
    for i, frame in enumerate(frames):
        for j in range(i):
            if same_file(frames[j], frame):
                print(f"{PROG}: warning: {frame} is given twice (frames {j + 1} and {i + 1}); it counts twice in the "
                      "fusion", file=sys.stderr, flush=True)
                break


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder (through links, ``..``, ...); ``False`` when unsure."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def fusion_params(args: argparse.Namespace) -> dict[str, Any]:
    """Parameters from --params, overridden by the options given on the command line."""
    params = read_params(args.params) if args.params else {}
    given = {key: getattr(args, key) for key in PARAM_NAMES if getattr(args, key) is not None}
    if given.get("levels") == "auto":
        given["levels"] = None
    for key, value in given.items():  # the library's rules; a bad value is a usage error
        try:
            params.update(validate_params({key: value}, source=f"--{key}"))
        except ParamsError as error:
            raise CommandError(str(error), code=2) from None
    return params


def warn_clamped_depth(args: argparse.Namespace, params: dict[str, Any], height: int, width: int) -> None:
    """The fusion clamps a depth beyond the frames' deepest pyramid (or below one level): say so,
    once per command, since the result is then that of another depth than asked for."""
    from ..presets import get_preset

    levels = params.get("levels")
    if levels is None or getattr(args, "_depth_warned", False):
        return
    maximum = get_preset(params.get("preset", "mertens")).max_levels(height, width)
    depth = float(levels) if levels >= 1 else maximum + 1 + float(levels)
    if 1 <= depth <= maximum:
        return
    args._depth_warned = True
    shown = f"--levels {args.levels}" if args.levels is not None else f"levels {levels} (from {args.params})"
    if depth > maximum:
        reason = f"is deeper than the {maximum} levels {width}x{height} frames allow; using {maximum}"
    else:
        reason = f"counts below one level for {width}x{height} frames ({maximum} levels at most); using 1"
    print(f"{PROG}: warning: {shown} {reason}", file=sys.stderr, flush=True)


def exact_codes(params: dict[str, Any], dtype: torch.dtype, bit_depth: int, alpha: bool) -> bool:
    """Whether a bracket's frames go to the fusion as 16-bit codes: 8- and 16-bit files without alpha,
    fused in float32 with a preset that measures exact values (``Preset.integer_samples``: then
    float32 weights are float64's); OpenCV's presets scale frames as OpenCV does."""
    from ..presets import get_preset

    preset = get_preset(params.get("preset") or "mertens")
    return bit_depth <= 16 and not alpha and bool(preset.for_integer_frames(dtype).integer_samples)


def fusion_settings(args: argparse.Namespace) -> tuple[dict[str, Any], torch.device, torch.dtype]:
    """Parameters, device and dtype of a command that fuses and writes (fuse, demo); checks --clip-*."""
    params = fusion_params(args)
    device = choose_device(args.device)
    dtype = DTYPES[args.dtype]
    if args.clip_black + args.clip_white >= 100:
        raise CommandError(f"--clip-black + --clip-white must stay below 100 percent, got {args.clip_black} + {args.clip_white}")
    return params, device, dtype


def choose_device(name: str) -> torch.device:
    """The device of ``--device`` (``auto``: CUDA when available); a missing CUDA is a :class:`CommandError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return torch.device(name)


def display(result: torch.Tensor, args: argparse.Namespace, bit_depth: int) -> torch.Tensor:
    """The result as it will be stored (--range, --clip-black, --clip-white; see :func:`efusion.io.to_display`)."""
    return to_display(result, args.range, black=args.clip_black, white=args.clip_white, bit_depth=bit_depth)


def check_writable(folder: Path) -> None:
    """Fail early when ``folder`` (or the folder it would be created in) cannot take files."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise CommandError(f"{folder}: cannot write there, {probe} is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise CommandError(f"{folder}: cannot write there, {probe} is not writable")


def make_folder(folder: Path) -> None:
    """Create ``folder`` and its parents; failure is a :class:`CommandError` naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"{folder}: cannot create the output folder ({error.strerror or one_line(error)})") from None


def check_finite(path: Path, frame: torch.Tensor, also: str = "", cannot: str = "fuse it") -> None:
    """A float frame with NaN or infinite samples would spread them over much of the result."""
    if not torch.isfinite(frame).all():
        raise ImageIOError(f"{path}: has NaN or infinite samples{also}; cannot {cannot}")


def effective_params(params: dict[str, Any]) -> dict[str, Any]:
    """Every fusion parameter: the given ones over :func:`efusion.exposure_fusion`'s defaults (the
    exponents left ``None`` resolved to the preset's, so outputs record the values used)."""
    import inspect

    from ..functional import exposure_fusion
    from ..params import EXPONENTS, resolve_exponents

    signature = inspect.signature(exposure_fusion).parameters
    effective = {name: params.get(name, signature[name].default) for name in PARAM_NAMES}
    contrast, saturation, exposure = (effective.get(n) for n in EXPONENTS)
    exponents = resolve_exponents(contrast, saturation, exposure, effective.get("preset") or "mertens")
    effective.update((n, v) for n, v in zip(EXPONENTS, exponents) if n in effective)
    return effective


def shown_value(value) -> str:
    """A parameter for the table: ``auto`` for None, per-channel values joined by ``/``."""
    if value is None:
        return "auto"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "/".join(f"{v:g}" for v in value)
    return f"{value:g}"
