"""The ``efusion`` command: fuse exposure brackets from image files, score fusions, or run the demo.

::

    efusion demo                                   # generated bracket -> ./efusion-demo/
    efusion fuse a.jpg b.jpg c.jpg -o fused.png    # one bracket
    efusion fuse shoot/*/ --out-dir fused/         # one result per folder, resumable
    efusion eval bracket/ --fused other.jpg        # MEF-SSIM of efusion's result and of other.jpg

``main(argv)`` returns the exit status (0 success, 1 failure, 2 bad command line) and never
lets a traceback out for bad input: each problem is one ``efusion: error: ...`` line on stderr
naming the file. Set ``EFUSION_DEBUG=1`` to get the traceback of an unexpected error.
"""
from __future__ import annotations

import argparse
import collections.abc
import errno
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from . import __version__
from .metrics import _rgb_to_gray
from .io import (
    IMAGE_SUFFIXES,
    PARAM_NAMES,
    MAX_PIXELS,
    ImageIOError,
    ImageMetadata,
    ParamsError,
    _FORMATS,
    _one_line,
    check_output,
    default_bit_depth,
    list_frames,
    open_bracket,
    read_bracket,
    read_metadata,
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


def _channel_values(text: str):
    """``0.5`` or one value per channel, ``0.4,0.5,0.6`` (R, G, B), as a parameter file takes them."""
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers (one per channel, e.g. 0.4,0.5,0.6), got {text!r}"
        ) from None
    return values[0] if len(values) == 1 else values


def _pixel_count(text: str) -> int:
    """A number of pixels: ``250000000`` or ``250M``."""
    scale, digits = (1_000_000, text[:-1]) if text[-1:].upper() == "M" else (1, text)
    try:
        value = int(digits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels (e.g. 250000000 or 250M), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of pixels >= 1, got {text}")
    return value * scale


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
        "--exposure", type=float, metavar="E", help="exponent of the well-exposedness measure (default 1, with --preset opencv 0 as in OpenCV; 0 turns it off)"
    )
    fusion.add_argument(
        "--mu", type=_channel_values, metavar="M",
        help="centre of the well-exposedness curve on the [0, 1] sample scale (default 0.5); one value, or one per "
        "channel as R,G,B",
    )
    fusion.add_argument(
        "--sigma", type=_channel_values, metavar="S",
        help="width of the well-exposedness curve, > 0 (default 0.2); one value, or one per channel as R,G,B",
    )
    fusion.add_argument(
        "--levels",
        type=_levels,
        metavar="L",
        help="pyramid depth: a number >= 1, a negative number counted from the deepest possible (-1 = deepest), "
        "or 'auto' (default: the preset's automatic depth); non-integers blend two depths; a depth beyond what the "
        "frames allow is clamped to it, with a warning",
    )
    fusion.add_argument(
        "--preset",
        choices=("mertens", "opencv", "opencv-rgb"),
        help="reproduce Mertens' MATLAB code (mertens, default), OpenCV's MergeMertens as its users call it on "
        "cv2.imread's BGR frames (opencv), or OpenCV fed RGB frames (opencv-rgb)",
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
    compute.add_argument(
        "--threads", type=_positive_int, metavar="N",
        help="CPU threads of the computation (default: torch's, one per core); fewer leave cores to other work",
    )
    compute.add_argument(
        "--max-pixels", type=_pixel_count, default=MAX_PIXELS, metavar="N",
        help=f"refuse frames with more pixels, e.g. 250M (default {MAX_PIXELS}, Pillow's guard against decompression "
        "bombs: small files that claim a huge size)",
    )


def _add_output_options(parser: argparse.ArgumentParser, *, batch: bool) -> None:
    out = parser.add_argument_group("output")
    if batch:
        out.add_argument(
            "--format", choices=tuple(_FORMAT_SUFFIX), help="file type of the results in --out-dir (default png; with -o the "
            "file name's suffix gives it)"
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


def _add_eval_parser(commands, formatter) -> None:
    evaluate = commands.add_parser(
        "eval",
        formatter_class=formatter,
        help="score fusions with MEF-SSIM (no reference needed), and PSNR/SSIM against a reference",
        description=(
            "Score the fusion of each bracket with MEF-SSIM (Ma, Zeng & Wang, IEEE TIP 24(11), 2015), the standard\n"
            "no-reference measure of multi-exposure fusion: how well a fused image keeps the structure and contrast its\n"
            "frames offer, 1 at best; printed over 3 scales (the paper's score) and at full resolution only. Each bracket\n"
            "is fused by efusion with the fusion parameters below; --fused scores another fused image beside it (or\n"
            "alone, with --fused-only), --baselines adds the mean of the frames and the best single frame, and\n"
            "--reference adds PSNR and SSIM against a ground truth.\n"
            "\n"
            "How images are scored (the protocol of the metric's published reference scores):\n"
            "  files         frames and --fused: clipped to [0, 1] and converted to gray as MATLAB's rgb2gray does on\n"
            "                their stored samples, so 8-bit files give whole gray levels, 16-bit files 16-bit levels and\n"
            "                float TIFFs unrounded gray\n"
            "  computed      efusion's result and the mean of the frames: clipped to [0, 1], gray with the same weights,\n"
            "                not rounded; efusion's result is scored as computed, not quantised as a file would be (pass\n"
            "                a written file as --fused to score that)\n"
            "  PSNR          over R, G, B of the clipped images, peak 1 (over gray when either image is gray); inf when\n"
            "                the images are identical\n"
            "  SSIM          Wang, Bovik, Sheikh & Simoncelli (IEEE TIP 13(4), 2004): 11x11 Gaussian window, sigma 1.5,\n"
            "                K1 0.01, K2 0.03, on luma (rgb2gray weights) of the clipped images\n"
            "Scores are computed in float64 whatever --dtype (which applies to the fusion). An alpha channel masks the\n"
            "fusion only. Frames need at least 44 pixels on each side (an 11-pixel window at 3 scales)."
        ),
        epilog=(
            "examples:\n"
            "  efusion eval bracket/\n"
            "  efusion eval dark.jpg mid.jpg bright.jpg --fused other-tool.jpg --baselines\n"
            "  efusion eval bracket/ --fused fused.png --fused-only\n"
            "  efusion eval scene/ --reference ground-truth.tif --preset opencv --levels -1\n"
            "  efusion eval shoot/*/ --params tuned.yaml --json > scores.jsonl\n"
            "  efusion eval shoot/*/ --fused other-tool/ --fused-only   # other-tool/NAME.jpg for each shoot/NAME/\n"
            "\n"
            "--json prints one JSON object per bracket and line, with the keys\n"
            "  bracket, frames, width, height, params (the fusion parameters used; null with --fused-only),\n"
            "  reference (its path, or null) and results: one object per scored image, in the table's order, with\n"
            "  image (efusion, fused, mean or best_frame), path (null for efusion and mean), mef_ssim,\n"
            "  mef_ssim_single_scale, mef_ssim_per_scale (finest first), psnr and ssim (null without --reference;\n"
            "  psnr is also null for an image identical to the reference, whose PSNR is infinite).\n"
            "Several folders are scored one after the other; a bad one is reported and skipped (exit status 1)."
        ),
    )
    evaluate.add_argument("inputs", nargs="+", metavar="INPUT", help="frame files of one bracket, or folders (one bracket each)")
    images = evaluate.add_argument_group("what to score")
    images.add_argument(
        "--fused", metavar="IMAGE", action="append",
        help="also score this fused image of the bracket (e.g. from another tool); repeat it for several (one row "
        "each); a folder of results scores, for each bracket folder, the image named after it (shoot/a/ -> DIR/a.png)",
    )
    images.add_argument("--fused-only", action="store_true", help="score only --fused, without fusing the bracket with efusion")
    images.add_argument(
        "--baselines", action="store_true", help="also score the mean of the frames and the best single frame (as the fused image)"
    )
    images.add_argument(
        "--reference", metavar="IMAGE", help="ground-truth image of the scene: adds PSNR and SSIM against it; one bracket only"
    )
    out = evaluate.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object per bracket and line instead of the table")
    _add_fusion_options(evaluate)


def build_parser() -> argparse.ArgumentParser:
    """The ``efusion`` argument parser (subcommands ``fuse``, ``eval`` and ``demo``)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="Mertens exposure fusion: blend differently exposed photos of one scene into one well-exposed image.",
        epilog=(
            "examples:\n"
            "  efusion demo                                  fuse a generated bracket, write ./efusion-demo/\n"
            "  efusion fuse dark.jpg mid.jpg bright.jpg -o fused.png\n"
            "  efusion fuse shoot/*/ --out-dir fused/        one result per folder; re-run to finish an interrupted batch\n"
            "  efusion eval bracket/ --fused other.jpg       MEF-SSIM of efusion's result and of another fusion\n"
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
            "existing outputs\nare skipped, so re-running an interrupted batch finishes the rest; each output records "
            "its fusion\nsettings, and one made with other settings is kept with a warning (--force re-fuses it)."
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
    where.add_argument(
        "-o", "--output", metavar="OUT", help="output file (.png, .jpg, .tif) for one bracket; missing folders are created"
    )
    where.add_argument(
        "--out-dir", metavar="DIR", help="output folder (created if missing): one file per input folder, named after it"
    )
    fuse.add_argument(
        "-q", "--quiet", action="store_true",
        help="no progress bar and no summary (errors are still shown); the bar (frames read, or brackets of a batch) "
        "is drawn only on a terminal",
    )
    _add_output_options(fuse, batch=True)
    _add_fusion_options(fuse)

    _add_eval_parser(commands, formatter)

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
    threads = torch.get_num_threads()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        if args.command == "fuse":
            return _fuse(args)
        if args.command == "eval":
            return _eval(args)
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
    finally:
        if args.threads is not None:  # main() may run inside a larger program: leave its setting
            torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Shared steps


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def _warn_repeated_frames(frames: list[Path]) -> None:
    """A frame file listed twice counts twice in the fusion (a doubled glob, most likely): say so."""
    for i, frame in enumerate(frames):
        for j in range(i):
            if _same_file(frames[j], frame):
                print(f"{PROG}: warning: {frame} is given twice (frames {j + 1} and {i + 1}); it counts twice in the "
                      "fusion", file=sys.stderr, flush=True)
                break


def _fusion_params(args: argparse.Namespace) -> dict[str, Any]:
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


def _warn_clamped_depth(args: argparse.Namespace, params: dict[str, Any], height: int, width: int) -> None:
    """The fusion clamps a depth beyond the frames' deepest pyramid (or below one level): say so,
    once per command, since the result is then that of another depth than asked for."""
    from .presets import get_preset

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


def _fusion_settings(args: argparse.Namespace) -> tuple[dict[str, Any], torch.device, torch.dtype]:
    """Parameters, device and dtype of a command that fuses and writes (fuse, demo); checks --clip-*."""
    params = _fusion_params(args)
    device = _device(args.device)
    dtype = _DTYPES[args.dtype]
    if args.clip_black + args.clip_white >= 100:
        raise CommandError(f"--clip-black + --clip-white must stay below 100 percent, got {args.clip_black} + {args.clip_white}")
    return params, device, dtype


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


def _fuse_files(frames: list[Path], out: Path, args, params, device, dtype, progress: bool = False) -> tuple[int, tuple[int, ...]]:
    """Read, fuse and write one bracket; returns (number of frames, stack shape ``(N, C, H, W)``).

    With ``progress``, a bar counts the frames read in the fusion's two passes (on a terminal only).
    """
    import efusion

    bracket = open_bracket(frames, max_pixels=args.max_pixels)
    _warn_clamped_depth(args, params, *bracket.shape[1:])
    depth = args.bit_depth if args.bit_depth is not None else default_bit_depth(out, bracket.bit_depth)
    check_output(out, depth)
    float_files = bracket.bit_depth == 32  # only float samples can be NaN or infinite
    with torch.inference_mode():
        if dtype in (torch.float32, torch.float64):
            # frames are decoded when fuse_frames uses them (twice: two passes), so memory holds
            # one frame and the blended pyramid, however many frames the bracket has
            frames = bracket.frames(dtype=dtype, device=device)
            if float_files:
                frames = _FiniteFrames(frames, bracket.paths)
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=2 * len(bracket), desc=f"{PROG} {out.name}", unit="frame", file=sys.stderr,
                           disable=None, leave=False)
                frames = _CountedFrames(frames, bar)
            try:
                result = efusion.fuse_frames(frames, masks=bracket.masks(dtype=dtype, device=device), dtype=dtype, **params)
            finally:
                if bar is not None:
                    bar.close()
        else:  # half precision runs exposure_fusion's reference code, on the whole stack
            stack = bracket.read(dtype=dtype, device=device)
            if float_files:
                for path, frame in zip(stack.paths, stack.frames):
                    _check_finite(path, frame, f" or values too large for --dtype {args.dtype}")
            result = efusion.exposure_fusion(stack.frames, mask=stack.mask, **params)
            del stack
        image = _display(result, args, depth)
    _make_folder(out.parent)
    write_image(out, image, bit_depth=depth, quality=args.quality, overwrite=args.force,
                metadata=_output_metadata(bracket.paths, args, params))
    return len(bracket), (len(bracket), *bracket.shape)


def _output_metadata(frames: Sequence[Path], args: argparse.Namespace, params: dict[str, Any]) -> ImageMetadata:
    """The middle frame's EXIF (the reference exposure of a bracket shot around it) and ICC
    profile; a frame whose metadata cannot be read gives none (the pixels were read fine)."""
    try:
        source = read_metadata(frames[len(frames) // 2])
    except ImageIOError:
        source = ImageMetadata()
    record = json.dumps({"efusion": __version__, "settings": _output_settings(args, params)}, allow_nan=False)
    return ImageMetadata(source.exif, source.icc, record)


def _output_settings(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    """What decides an output's pixels besides its frames: recorded in it, compared on a re-run."""
    settings: dict[str, Any] = {"params": _effective_params(params), "range": args.range or "clip"}
    if args.range == "robust":
        settings["clip"] = [args.clip_black, args.clip_white]
    return json.loads(json.dumps(settings))  # as it reads back: lists, not tuples


def _settings_change(out: Path, args: argparse.Namespace, params: dict[str, Any]) -> str | None:
    """How the settings recorded in an existing output differ from this run's (``None``: the
    same, or nothing recorded, e.g. a file from another tool)."""
    try:
        record = read_metadata(out).record
        recorded = json.loads(record)["settings"] if record else None
    except (ImageIOError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(recorded, dict):
        return None
    current = _output_settings(args, params)
    if recorded == current:
        return None
    changes = []
    old_params, new_params = recorded.get("params") or {}, current["params"]
    for name in PARAM_NAMES:
        if old_params.get(name) != new_params.get(name):
            changes.append(f"{name} {_shown_value(old_params.get(name))} -> {_shown_value(new_params.get(name))}")
    for key in ("range", "clip"):
        if recorded.get(key) != current.get(key):
            changes.append(f"{key} {recorded.get(key)} -> {current.get(key)}")
    return ", ".join(changes) or "other settings"


def _check_finite(path: Path, frame: torch.Tensor, also: str = "", cannot: str = "fuse it") -> None:
    """A float frame with NaN or infinite samples would spread them over much of the result."""
    if not torch.isfinite(frame).all():
        raise ImageIOError(f"{path}: has NaN or infinite samples{also}; cannot {cannot}")


class _CountedFrames(collections.abc.Sequence):
    """Frames that advance a progress bar each time one is decoded (twice each: two passes)."""

    def __init__(self, frames: Sequence[torch.Tensor], bar) -> None:
        self._frames, self._bar = frames, bar

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index):
        frame = self._frames[index]
        self._bar.update(1)
        return frame


class _FiniteFrames(collections.abc.Sequence):
    """The frames of a bracket, each checked for NaN and infinite samples as it is decoded."""

    def __init__(self, frames: Sequence[torch.Tensor], paths: Sequence[Path]) -> None:
        self._frames, self._paths = frames, paths

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index):
        frame = self._frames[index]
        _check_finite(self._paths[index], frame)
        return frame


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# efusion fuse


def _fuse(args: argparse.Namespace) -> int:
    params, device, dtype = _fusion_settings(args)
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
        _warn_repeated_frames(frames)
    if out.is_dir():  # before the suffix check, which would call it an unsupported format
        raise CommandError(
            f"{out}: is a folder; -o takes a file name such as {out / 'fused.png'} (use --out-dir {out} to write one "
            "result per input folder into it)",
            code=2,
        )
    check_output(out, args.bit_depth)
    if args.format is not None and _FORMATS[_FORMAT_SUFFIX[args.format]] != _FORMATS.get(out.suffix.lower()):
        raise CommandError(
            f"--format {args.format} disagrees with -o {out}: with -o the file name's suffix gives the format "
            "(--format is for --out-dir)",
            code=2,
        )
    if len(inputs) == 1 and inputs[0].is_dir() and not out.name.startswith(".") and _same_file(out.parent, inputs[0]):
        raise CommandError(
            f"{out}: is inside the input folder {inputs[0]}, where it would be read as a frame of the bracket next "
            "time; write it elsewhere"
        )
    for frame in frames:
        if _same_file(frame, out):
            raise CommandError(f"{out}: is one of the input frames; inputs are never overwritten")
    if out.exists() and not args.force:
        raise CommandError(f"{out}: already exists (pass --force to overwrite it)")
    _check_writable(out.parent)
    missing = [folder for folder in (out.parent, *out.parent.parents) if not folder.exists()]  # deepest first
    start = time.perf_counter()
    try:
        count, shape = _fuse_files(frames, out, args, params, device, dtype, progress=not args.quiet)
    except BaseException as error:
        for folder in missing:  # as --out-dir: no empty folder left behind by a failed run
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(error, (ImageIOError, ParamsError)) or not isinstance(error, Exception):
            raise  # their messages already name the file; KeyboardInterrupt
        if isinstance(error, (ValueError, TypeError, RuntimeError, MemoryError)):  # from the fusion itself
            raise CommandError(f"{label}: {_one_line(error)}") from None
        raise
    if not args.quiet:
        print(f"{PROG}: wrote {out} ({count} frame{'s' if count != 1 else ''}, {shape[-1]}x{shape[-2]}, "
              f"{time.perf_counter() - start:.1f} s)")
    return 0


#: errors writing into the output folder that no other bracket of the batch would escape
_DESTINATION_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _writes_into(error: BaseException, out_dir: Path) -> bool:
    """Whether ``error`` (an errno-carrying write error) is about a file in ``out_dir``, not an input."""
    return isinstance(error, ImageIOError) and str(error).startswith(str(out_dir))


def _fuse_many(args, params, device, dtype) -> int:
    out_dir = Path(args.out_dir)
    args.format = args.format or "png"
    suffix = _FORMAT_SUFFIX[args.format]
    probe = out_dir / f"result{suffix}"
    try:
        check_output(probe, args.bit_depth)
    except ImageIOError as error:  # its message names a file that will never exist: name the options instead
        reason = str(error).removeprefix(f"{probe}: ")
        raise CommandError(f"--format {args.format} --bit-depth {args.bit_depth}: {reason}") from None
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
        # named as given: "." and ".." are resolved, a symlinked folder keeps its link's name
        name = Path(os.path.abspath(folder)).name or "bracket"
        out = out_dir / f"{name}{suffix}"
        if out in claimed:
            if _same_file(claimed[out], folder):
                continue  # the same folder given twice
            raise CommandError(f"{claimed[out]} and {folder} would both be written to {out}; rename one folder")
        claimed[out] = folder
        jobs.append((folder, out))
    _check_writable(out_dir)
    created = [folder for folder in (out_dir, *out_dir.parents) if not folder.exists()]  # deepest first
    _make_folder(out_dir)

    from tqdm import tqdm

    done = skipped = failed = changed = 0
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=PROG, unit="bracket", file=sys.stderr, disable=True if args.quiet else None, leave=False)
    try:
        for folder, out in jobs:
            if out.exists() and not args.force:
                skipped += 1
                change = _settings_change(out, args, params)
                if change is not None:  # kept (never overwritten without --force), but said
                    changed += 1
                    tqdm.write(f"{PROG}: warning: {out}: made with other settings ({change}); kept, pass --force to "
                               "re-fuse it", file=sys.stderr)
            else:
                try:
                    _fuse_files(list_frames(folder), out, args, params, device, dtype)
                    done += 1
                except Exception as error:  # one bad bracket must not stop the batch ...
                    failed += 1
                    if isinstance(error, (ImageIOError, ParamsError, CommandError)):
                        message = str(error)  # already names the file
                    elif isinstance(error, (ValueError, TypeError, RuntimeError, OSError)):
                        message = f"{folder}: {_one_line(error)}"
                    else:
                        message = f"{folder}: unexpected {type(error).__name__}: {_one_line(error)}"
                    tqdm.write(f"{PROG}: error: {message}", file=sys.stderr)
                    if getattr(error, "errno", None) in _DESTINATION_ERRORS and _writes_into(error, out_dir):
                        # ... but a full disk or a read-only destination fails every bracket: stop
                        left = len(jobs) - (done + skipped + failed)
                        bar.close()
                        _error(
                            f"stopped: every bracket would fail writing into {out_dir}; {left} bracket"
                            f"{'s' if left != 1 else ''} not attempted ({done} done, {skipped} skipped); "
                            "re-run the same command once it is fixed"
                        )
                        return 1
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
        for folder in created:
            try:
                folder.rmdir()  # only succeeds when nothing was written
            except OSError:
                break
    if not args.quiet:
        print(
            f"{PROG}: {done} done, {skipped} skipped (already there"
            f"{f'; {changed} made with other settings' if changed else ''}), {failed} failed, "
            f"{time.perf_counter() - start:.1f} s -> {out_dir}"
        )
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------
# efusion eval

#: settings of ``mef_ssim`` used here: its defaults, the reference code's
_MEF_SCALES = 3
_MEF_WINDOW = 11
#: the reference needs the window to fit at the coarsest scale: 11 * 2^2 = 44 pixels
_MEF_MIN_SIZE = _MEF_WINDOW * 2 ** (_MEF_SCALES - 1)
#: code values per sample of integer files; rgb2gray rounds the gray of such frames to them
_CODE_VALUES = {8: 255, 16: 65535}
_IMAGE_LABELS = {"efusion": "efusion", "mean": "mean of frames"}


def _eval(args: argparse.Namespace) -> int:
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
    params = None if args.fused_only else _fusion_params(args)
    device = _device(args.device)
    dtype = _DTYPES[args.dtype]
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
                    _error(_bracket_error(label, error))
                    continue
                if isinstance(error, (ImageIOError, ParamsError, CommandError)):
                    raise  # already names the file
                if isinstance(error, (ValueError, TypeError, RuntimeError, MemoryError)):  # from the fusion or metric
                    raise CommandError(f"{label}: {_one_line(error)}") from None
                raise
            reports.append(report)
            if args.json:
                print(json.dumps(report, allow_nan=False), flush=True)
    except KeyboardInterrupt:
        _error(f"interrupted after scoring {len(reports)} of {len(brackets)} brackets")
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
            if not any(_same_file(folder, seen) for seen in unique):
                unique.append(folder)
        return [(str(folder), folder) for folder in unique]
    label = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more frames)"
    _warn_repeated_frames(paths)
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
        return f"{label}: {_one_line(error)}"
    return f"{label}: unexpected {type(error).__name__}: {_one_line(error)}"


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
    gray = _rgb_to_gray(images)
    if levels is not None:
        gray = torch.round(gray * levels) / levels
    return gray * 255.0


def _eval_bracket(label, source, args, params, device, dtype, fused, reference) -> dict[str, Any]:
    """Fuse (unless --fused-only) and score one bracket; returns its JSON report."""
    import efusion
    from .metrics import mef_ssim
    from .quality import psnr, ssim

    paths = list_frames(source) if isinstance(source, Path) else source
    bracket = read_bracket(paths, dtype=torch.float64, max_pixels=args.max_pixels)
    count, _, height, width = bracket.frames.shape
    if count < 2:
        where = f"{label}: holds one frame ({paths[0]})" if isinstance(source, Path) else f"{paths[0]}: one frame"
        raise CommandError(f"{where}; MEF-SSIM scores a fusion against its bracket and needs at least 2 frames")
    if bracket.bit_depth == 32:
        for path, frame in zip(paths, bracket.frames):  # the fusion takes float frames unclipped: NaN scores
            _check_finite(path, frame, cannot="score the bracket")
    if params is not None:
        _warn_clamped_depth(args, params, height, width)
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
            result = efusion.exposure_fusion(bracket.frames.to(device=device, dtype=dtype), mask=mask, **params)
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
                image, target = _rgb_to_gray(image), _rgb_to_gray(target)
            ratio = psnr(image, target).item()
            entry["psnr"] = None if math.isinf(ratio) else ratio  # identical images; JSON has no infinity
            entry["ssim"] = ssim(image, target).item()
        results.append(entry)
    return {
        "bracket": label,
        "frames": [str(p) for p in paths],
        "width": width,
        "height": height,
        "params": None if params is None else _effective_params(params),
        "reference": None if args.reference is None else str(args.reference),
        "results": results,
    }


def _effective_params(params: dict[str, Any]) -> dict[str, Any]:
    """Every fusion parameter: the given ones over :func:`efusion.exposure_fusion`'s defaults."""
    import inspect

    from .fusion import exposure_fusion

    from .params import EXPONENTS, resolve_exponents

    signature = inspect.signature(exposure_fusion).parameters
    effective = {name: params.get(name, signature[name].default) for name in PARAM_NAMES}
    contrast, saturation, exposure = (effective.get(n) for n in EXPONENTS)
    exponents = resolve_exponents(contrast, saturation, exposure, effective.get("preset") or "mertens")
    effective.update((n, v) for n, v in zip(EXPONENTS, exponents) if n in effective)
    return effective


def _shown_value(value) -> str:
    """A parameter for the table: ``auto`` for None, per-channel values joined by ``/``."""
    if value is None:
        return "auto"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "/".join(f"{v:g}" for v in value)
    return f"{value:g}"


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
        shown = {name: _shown_value(value) for name, value in params.items()}
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


# ----------------------------------------------------------------------------------------------
# efusion demo


DEMO_DIR = "efusion-demo"


def _demo(args: argparse.Namespace) -> int:
    import efusion
    from efusion import synthetic

    params, device, dtype = _fusion_settings(args)
    out_dir = Path(args.out_dir)
    frame_paths = [out_dir / "frames" / f"frame-{i}.png" for i in range(args.frames)]
    fused_path, sheet_path = out_dir / "fused.png", out_dir / "contact-sheet.png"
    # the default folder holds nothing but an earlier demo's output: re-running refreshes it
    overwrite = args.force or out_dir == Path(DEMO_DIR)
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
