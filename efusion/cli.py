"""The ``efusion`` command: fuse exposure brackets from image files, or run the demo.

::

    efusion demo                                   # generated bracket -> ./efusion-demo/
    efusion fuse a.jpg b.jpg c.jpg -o fused.png    # one bracket
    efusion fuse shoot/*/ --out-dir fused/         # one result per folder, resumable

``main(argv)`` returns the exit status (0 success, 1 failure, 2 bad command line) and never
lets a traceback out for bad input: each problem is one ``efusion: error: ...`` line on stderr
naming the file. Set ``EFUSION_DEBUG=1`` to get the traceback of an unexpected error.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from . import __version__
from .io import (
    IMAGE_SUFFIXES,
    PARAM_NAMES,
    ImageIOError,
    ParamsError,
    check_output,
    default_bit_depth,
    list_frames,
    read_bracket,
    read_params,
    robust_normalize,
    validate_params,
    write_image,
)

__all__ = ["main", "build_parser"]

PROG = "efusion"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FORMAT_SUFFIX = {"png": ".png", "jpg": ".jpg", "tif": ".tif"}


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line that points to --help, instead of the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _levels(text: str):
    if text.lower() in ("auto", "none"):
        return "auto"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, 100), got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text}")
    return value


def _add_fusion_options(parser: argparse.ArgumentParser) -> None:
    fusion = parser.add_argument_group(
        "fusion parameters",
        "Defaults reproduce Mertens, Kautz & Van Reeth, \"Exposure Fusion\" (2007), as in Mertens' own code.",
    )
    fusion.add_argument("--contrast", type=float, metavar="E", help="exponent of the contrast measure (default 1; 0 turns it off)")
    fusion.add_argument("--saturation", type=float, metavar="E", help="exponent of the saturation measure (default 1; 0 turns it off)")
    fusion.add_argument(
        "--exposure", type=float, metavar="E", help="exponent of the well-exposedness measure (default 1; 0 turns it off)"
    )
    fusion.add_argument("--mu", type=float, metavar="M", help="centre of the well-exposedness curve, in [0, 1] (default 0.5)")
    fusion.add_argument("--sigma", type=float, metavar="S", help="width of the well-exposedness curve, > 0 (default 0.2)")
    fusion.add_argument(
        "--levels",
        type=_levels,
        metavar="L",
        help="pyramid depth: a number >= 1, a negative number counted from the deepest possible (-1 = deepest), "
        "or 'auto' (default: the preset's automatic depth); non-integers blend two depths",
    )
    fusion.add_argument(
        "--preset",
        choices=("mertens", "opencv"),
        help="reproduce Mertens' MATLAB code (mertens, default) or OpenCV's MergeMertens (opencv)",
    )
    fusion.add_argument(
        "--params",
        metavar="FILE",
        help="JSON or YAML file of parameters (e.g. exported by the training), keys among "
        f"{', '.join(PARAM_NAMES)}; options given on the command line override it",
    )
    compute = parser.add_argument_group("computation")
    compute.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to compute (default auto: cuda when available)"
    )
    compute.add_argument("--dtype", choices=tuple(_DTYPES), default="float32", help="floating type of the computation (default float32)")


def _add_output_options(parser: argparse.ArgumentParser, *, batch: bool) -> None:
    out = parser.add_argument_group("output")
    if batch:
        out.add_argument(
            "--format", choices=tuple(_FORMAT_SUFFIX), default="png", help="file type of the results in --out-dir (default png)"
        )
        out.add_argument(
            "--bit-depth",
            type=int,
            choices=(8, 16, 32),
            help="8 or 16 bits per sample, or 32 for float32 TIFF (default: 8 for JPEG; for PNG 16 when the frames "
            "have 16 bits, else 8; for TIFF the frames' depth, float frames giving float32)",
        )
        out.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG quality, 1 to 100 (default 95)")
    out.add_argument(
        "--range",
        choices=("clip", "robust"),
        help="bring the result into [0, 1]: clip (default; float32 TIFF is left unclamped unless --range is given) "
        "or robust: one affine map for all channels that saturates --clip-black/--clip-white percent of the pixels "
        "(simplest colour balance, as in Hessel's IPOL study of exposure fusion)",
    )
    out.add_argument("--clip-black", type=_percent, default=1.0, metavar="PCT", help="robust range: percent of pixels sent to black (default 1)")
    out.add_argument("--clip-white", type=_percent, default=1.0, metavar="PCT", help="robust range: percent of pixels sent to white (default 1)")
    out.add_argument("--force", action="store_true", help="overwrite existing outputs (default: never overwrite)")


def build_parser() -> argparse.ArgumentParser:
    """The ``efusion`` argument parser (subcommands ``fuse`` and ``demo``)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="Mertens exposure fusion: blend differently exposed photos of one scene into one well-exposed image.",
        epilog=(
            "examples:\n"
            "  efusion demo                                  fuse a generated bracket, write ./efusion-demo/\n"
            "  efusion fuse dark.jpg mid.jpg bright.jpg -o fused.png\n"
            "  efusion fuse shoot/*/ --out-dir fused/        one result per folder; re-run to finish an interrupted batch\n"
            "\nRun 'efusion COMMAND --help' for the options of a command."
        ),
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fuse = commands.add_parser(
        "fuse",
        formatter_class=formatter,
        help="fuse brackets of image files",
        description=(
            "Fuse one bracket (its frames, or one folder of frames) into -o OUT, or each folder into one result in "
            "--out-dir.\n"
            f"Frames: {', '.join(IMAGE_SUFFIXES)}; 8/16-bit PNG, 8/16-bit and float TIFF; gray or RGB; an alpha channel "
            "excludes\ntransparent pixels from the blend; EXIF orientation is applied. A folder's frames are its image "
            "files sorted\nby name. Outputs are written atomically and never overwritten without --force; in a batch "
            "existing outputs\nare skipped, so re-running an interrupted batch finishes the rest."
        ),
        epilog=(
            "examples:\n"
            "  efusion fuse IMG_01.jpg IMG_02.jpg IMG_03.jpg -o fused.jpg --quality 92\n"
            "  efusion fuse bracket/ -o fused.tif --bit-depth 32     # unclamped float32 for an HDR pipeline\n"
            "  efusion fuse shoot/*/ --out-dir fused/ --format tif --range robust\n"
            "  efusion fuse bracket/ -o fused.png --params tuned.yaml --levels -1"
        ),
    )
    fuse.add_argument("inputs", nargs="+", metavar="INPUT", help="frame files of one bracket, or folders (one bracket each)")
    where = fuse.add_argument_group("where to write (one of)").add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", metavar="OUT", help="output file (.png, .jpg, .tif) for one bracket")
    where.add_argument("--out-dir", metavar="DIR", help="output folder: one file per input folder, named after it")
    fuse.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary (errors are still shown)")
    _add_output_options(fuse, batch=True)
    _add_fusion_options(fuse)

    demo = commands.add_parser(
        "demo",
        formatter_class=formatter,
        help="fuse a generated bracket and write the result and a contact sheet",
        description=(
            "Render a procedurally generated high-dynamic-range scene at several exposures, fuse the frames and write\n"
            "frames/, fused.png and contact-sheet.png (frames on top, their weight maps below, the result on the right)\n"
            "into the output folder. Needs no data and takes seconds on a CPU."
        ),
    )
    demo.add_argument(
        "--out-dir", default=DEMO_DIR, metavar="DIR",
        help=f"output folder (default ./{DEMO_DIR}, refreshed on every run; another folder needs --force to overwrite)",
    )
    demo.add_argument("--frames", type=_positive_int, default=3, metavar="N", help="number of exposures (default 3)")
    demo.add_argument("--ev-step", type=float, default=2.0, metavar="EV", help="exposure step between frames in stops (default 2)")
    demo.add_argument("--height", type=_positive_int, default=320, metavar="H", help="frame height in pixels (default 320)")
    demo.add_argument("--width", type=_positive_int, default=480, metavar="W", help="frame width in pixels (default 480)")
    demo.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    _add_output_options(demo, batch=False)
    _add_fusion_options(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``efusion`` command line; returns the exit status (0 success, 1 failure, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, usage errors
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    try:
        if args.command == "fuse":
            return _fuse(args)
        return _demo(args)
    except CommandError as error:
        _error(str(error))
        return error.code
    except (ImageIOError, ParamsError) as error:
        _error(str(error))
        return 1
    except KeyboardInterrupt:
        _error("interrupted (finished outputs are kept; re-run the same command to do the rest)")
        return 130
    except Exception as error:  # a bug, or something the checks above did not foresee
        if os.environ.get("EFUSION_DEBUG"):
            raise
        _error(f"unexpected {type(error).__name__}: {_one_line(error)} (set EFUSION_DEBUG=1 for the traceback)")
        return 1


# ----------------------------------------------------------------------------------------------
# Shared steps


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _fusion_params(args: argparse.Namespace) -> dict[str, Any]:
    """Parameters from --params, overridden by the options given on the command line."""
    params = read_params(args.params) if args.params else {}
    given = {key: getattr(args, key) for key in PARAM_NAMES if getattr(args, key) is not None}
    if given.get("levels") == "auto":
        given["levels"] = None
    params.update(validate_params(given, source="command line"))
    return params


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return torch.device(name)


def _weight_params(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if key != "levels"}


def _display(result: torch.Tensor, args: argparse.Namespace, bit_depth: int) -> torch.Tensor:
    """The result as it will be stored: clipped or robustly normalised, or raw for float32."""
    if args.range == "robust":
        return robust_normalize(result, black=args.clip_black, white=args.clip_white)
    if args.range is None and bit_depth == 32:
        return result  # float32 TIFF keeps Mertens fusion's out-of-range values
    return result.clamp(0, 1)


def _check_writable(folder: Path) -> None:
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


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"{folder}: cannot create the output folder ({error.strerror or _one_line(error)})") from None


def _fuse_files(frames: list[Path], out: Path, args, params, device, dtype) -> tuple[int, tuple[int, ...]]:
    """Read, fuse and write one bracket; returns (number of frames, frame shape)."""
    import efusion

    bracket = read_bracket(frames, dtype=dtype, device=device)
    depth = args.bit_depth if args.bit_depth is not None else default_bit_depth(out, bracket.bit_depth)
    check_output(out, depth)
    shape = tuple(bracket.frames.shape)
    with torch.inference_mode():
        result = efusion.exposure_fusion(bracket.frames, mask=bracket.mask, **params)
        del bracket
        image = _display(result, args, depth)
    _make_folder(out.parent)
    write_image(out, image, bit_depth=depth, quality=args.quality, overwrite=args.force)
    return shape[0], shape


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# efusion fuse


def _fuse(args: argparse.Namespace) -> int:
    params = _fusion_params(args)
    device = _device(args.device)
    dtype = _DTYPES[args.dtype]
    if args.clip_black + args.clip_white >= 100:
        raise CommandError(f"--clip-black + --clip-white must stay below 100 percent, got {args.clip_black} + {args.clip_white}")
    if not 1 <= args.quality <= 100:
        raise CommandError(f"--quality must be between 1 and 100, got {args.quality}")
    if args.output is not None:
        return _fuse_one(args, params, device, dtype)
    return _fuse_many(args, params, device, dtype)


def _fuse_one(args, params, device, dtype) -> int:
    inputs = [Path(p) for p in args.inputs]
    out = Path(args.output)
    if len(inputs) == 1 and inputs[0].is_dir():
        frames = list_frames(inputs[0])
        label = str(inputs[0])
    else:
        folders = [str(p) for p in inputs if p.is_dir()]
        if folders:
            raise CommandError(
                f"{folders[0]}: is a folder; with -o give the frame files of one bracket or a single folder "
                "(use --out-dir to fuse several folders)",
                code=2,
            )
        frames = inputs
        label = str(frames[0]) if len(frames) == 1 else f"{frames[0]} (and {len(frames) - 1} more frames)"
    check_output(out, args.bit_depth)
    for frame in frames:
        if _same_file(frame, out):
            raise CommandError(f"{out}: is one of the input frames; inputs are never overwritten")
    if out.is_dir():
        raise CommandError(f"{out}: is a folder; -o takes a file name (use --out-dir for a folder)")
    if out.exists() and not args.force:
        raise CommandError(f"{out}: already exists (pass --force to overwrite it)")
    _check_writable(out.parent)
    start = time.perf_counter()
    try:
        count, shape = _fuse_files(frames, out, args, params, device, dtype)
    except (ImageIOError, ParamsError):
        raise  # their messages already name the file
    except (ValueError, TypeError, RuntimeError, MemoryError) as error:  # from the fusion itself
        raise CommandError(f"{label}: {_one_line(error)}") from None
    if not args.quiet:
        print(f"{PROG}: wrote {out} ({count} frames, {shape[-1]}x{shape[-2]}, {time.perf_counter() - start:.1f} s)")
    return 0


def _fuse_many(args, params, device, dtype) -> int:
    out_dir = Path(args.out_dir)
    suffix = _FORMAT_SUFFIX[args.format]
    check_output(out_dir / f"result{suffix}", args.bit_depth)
    folders = [Path(p) for p in args.inputs]
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise CommandError(
                f"{folder}: is a file; --out-dir takes folders, one bracket each (use -o OUT to fuse files into one image)",
                code=2,
            )
        if _same_file(folder, out_dir):
            raise CommandError(f"{out_dir}: is also an input folder; its results would be read as frames next time")
    jobs: list[tuple[Path, Path]] = []
    claimed: dict[Path, Path] = {}
    for folder in folders:
        name = folder.resolve().name or "bracket"
        out = out_dir / f"{name}{suffix}"
        if out in claimed:
            if _same_file(claimed[out], folder):
                continue  # the same folder given twice
            raise CommandError(f"{claimed[out]} and {folder} would both be written to {out}; rename one folder")
        claimed[out] = folder
        jobs.append((folder, out))
    _check_writable(out_dir)
    created = not out_dir.exists()
    _make_folder(out_dir)

    from tqdm import tqdm

    done = skipped = failed = 0
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=PROG, unit="bracket", file=sys.stderr, disable=True if args.quiet else None, leave=False)
    try:
        for folder, out in jobs:
            if out.exists() and not args.force:
                skipped += 1
            else:
                try:
                    _fuse_files(list_frames(folder), out, args, params, device, dtype)
                    done += 1
                except Exception as error:  # one bad bracket must not stop the batch
                    failed += 1
                    if isinstance(error, (ImageIOError, ParamsError, CommandError)):
                        message = str(error)  # already names the file
                    elif isinstance(error, (ValueError, TypeError, RuntimeError, OSError)):
                        message = f"{folder}: {_one_line(error)}"
                    else:
                        message = f"{folder}: unexpected {type(error).__name__}: {_one_line(error)}"
                    tqdm.write(f"{PROG}: error: {message}", file=sys.stderr)
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        _error(
            f"interrupted after {done} done, {skipped} skipped, {failed} failed; "
            "finished outputs are kept, re-run the same command to do the rest"
        )
        return 130
    finally:
        bar.close()
        if created:
            try:
                out_dir.rmdir()  # only succeeds when nothing was written
            except OSError:
                pass
    if not args.quiet:
        print(
            f"{PROG}: {done} done, {skipped} skipped (already there), {failed} failed, "
            f"{time.perf_counter() - start:.1f} s -> {out_dir}"
        )
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------
# efusion demo


DEMO_DIR = "efusion-demo"


def _demo(args: argparse.Namespace) -> int:
    import efusion
    from efusion import synthetic

    params = _fusion_params(args)
    device = _device(args.device)
    dtype = _DTYPES[args.dtype]
    if args.clip_black + args.clip_white >= 100:
        raise CommandError(f"--clip-black + --clip-white must stay below 100 percent, got {args.clip_black} + {args.clip_white}")
    out_dir = Path(args.out_dir)
    frame_paths = [out_dir / "frames" / f"frame-{i}.png" for i in range(args.frames)]
    fused_path, sheet_path = out_dir / "fused.png", out_dir / "contact-sheet.png"
    # the default folder holds nothing but an earlier demo's output: re-running refreshes it
    overwrite = args.force or args.out_dir == DEMO_DIR
    if not overwrite:
        for path in [fused_path, sheet_path, *frame_paths]:
            if path.exists():
                raise CommandError(f"{path}: already exists (pass --force to overwrite, or --out-dir to write elsewhere)")
    _check_writable(out_dir)

    start = time.perf_counter()
    stack = synthetic.bracket(args.height, args.width, args.frames, ev_step=args.ev_step, seed=args.seed)
    stack = stack.to(device=device, dtype=dtype)
    with torch.inference_mode():
        weights = efusion.mertens_weights(stack, **_weight_params(params))
        result = efusion.blend(stack, weights, levels=params.get("levels"), preset=params.get("preset", "mertens"))
        image = _display(result, args, 8)
        sheet = _contact_sheet(stack, weights, image)
    seconds = time.perf_counter() - start

    _make_folder(frame_paths[0].parent)
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
