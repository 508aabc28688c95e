"""The ``efusion`` argument parser: its subcommands, their options, and the parsing of option values."""
from __future__ import annotations

import argparse

from .. import __version__
from ..io import IMAGE_SUFFIXES, MAX_PIXELS, OUTPUT_FORMATS, PARAM_NAMES
from ..io.display import RANGES
from ..presets import PRESETS
from .common import DTYPES, PROG
from .demo import DEMO_DIR

__all__ = ["build_parser"]


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


def _whole_number(text: str, *, of: str = "", millions: bool = False) -> int:
    """A whole number >= 1 (of ``of``, e.g. pixels, for the messages); with ``millions``, ``250M``
    stands for 250000000."""
    scale, digits = (1_000_000, text[:-1]) if millions and text[-1:].upper() == "M" else (1, text)
    example = " (e.g. 250000000 or 250M)" if millions else ""
    unit = f" of {of}" if of else ""
    try:
        value = int(digits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number{unit}{example}, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number{unit} >= 1, got {text}")
    return value * scale


def _pixel_count(text: str) -> int:
    """A number of pixels: ``250000000`` or ``250M``."""
    return _whole_number(text, of="pixels", millions=True)


def _positive_int(text: str) -> int:
    """A count such as --threads or --frames: a whole number >= 1."""
    return _whole_number(text)


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, 100), got {text}")
    return value


def _add_fusion_options(parser: argparse.ArgumentParser) -> None:
    fusion = parser.add_argument_group(
        "fusion parameters",
        "Defaults reproduce Mertens, Kautz & Van Reeth, \"Exposure Fusion\" (2007), as in Mertens' own code.",
    )
    fusion.add_argument("--contrast", type=float, metavar="E", help="exponent of the contrast measure (default 1; 0 turns it off)")
    fusion.add_argument("--saturation", type=float, metavar="E", help="exponent of the saturation measure (default 1; 0 turns it off)")
    fusion.add_argument(
        "--exposure", type=float, metavar="E",
        help="exponent of the well-exposedness measure (default 1, with --preset opencv 0 as in OpenCV; 0 turns it off)"
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
        choices=tuple(PRESETS),
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
    compute.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="floating type of the computation (default float32)")
    compute.add_argument(
        "--threads", type=_positive_int, metavar="N",
        help="CPU threads of the computation (default: torch's, one per core); fewer leave cores to other work",
    )
    compute.add_argument(
        "--max-pixels", type=_pixel_count, default=MAX_PIXELS, metavar="N",
        help=f"refuse frames with more pixels, e.g. 250M (default {MAX_PIXELS}, Pillow's guard against decompression "
        "bombs: small files that claim a huge size)",
    )


#: ``--align`` choices: no alignment, then efusion.align's motion models
ALIGN_MODELS = ("none", "translation", "euclidean", "similarity", "homography")


def _add_motion_options(parser: argparse.ArgumentParser) -> None:
    motion = parser.add_argument_group(
        "hand-held brackets and moving scenes",
        "Both read the whole bracket into memory (the streaming fusion reads one frame at a time).",
    )
    motion.add_argument(
        "--align", choices=ALIGN_MODELS, default="none",
        help="warp every frame onto the reference frame first, whatever their exposures (default none: for a tripod); "
        "homography also corrects perspective, translation only shifts",
    )
    motion.add_argument(
        "--deghost", action="store_true",
        help="keep what moved between frames only from the reference frame (after --align, if given)",
    )
    motion.add_argument(
        "--reference", type=int, metavar="INDEX",
        help="frame the others are aligned to and whose moving content is kept, counted from 0 in the frames' order "
        "(negative from the end; default: the frame of median brightness)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="also print what was estimated (with --align: each frame's homography onto the reference)",
    )


def _add_output_options(parser: argparse.ArgumentParser, *, batch: bool) -> None:
    out = parser.add_argument_group("output")
    if batch:
        out.add_argument(
            "--format", choices=OUTPUT_FORMATS, help="file type of the results in --out-dir (default png; with -o the "
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
        choices=RANGES,
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
            "  efusion fuse bracket/ -o fused.png --params tuned.yaml --levels -1\n"
            "  efusion fuse handheld/ -o fused.jpg --align homography --deghost -v   # shaken bracket, moving people"
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
    _add_motion_options(fuse)

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
    demo.add_argument(
        "--align", choices=ALIGN_MODELS[1:], metavar="MODEL",
        help="shake the bracket as a hand-held camera would (shifts up to 4%% of the frame), then align it with MODEL "
        f"({', '.join(ALIGN_MODELS[1:])}): also writes unaligned.png and before-after.png",
    )
    _add_output_options(demo, batch=False)
    _add_fusion_options(demo)
    return parser
