"""``efusion fuse``: one bracket into ``-o OUT``, or a batch of bracket folders into ``--out-dir``
(resumable: existing results are kept, and one made with other settings is reported)."""
from __future__ import annotations

import argparse
import collections.abc
import errno
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..io import (
    FORMATS,
    PARAM_NAMES,
    ImageIOError,
    ImageMetadata,
    ParamsError,
    check_output,
    default_bit_depth,
    list_frames,
    open_bracket,
    read_metadata,
    write_image,
)
from ..io.errors import one_line
from .common import (
    PROG,
    CommandError,
    check_finite,
    check_writable,
    display,
    effective_params,
    exact_codes,
    fusion_settings,
    make_folder,
    print_error,
    same_file,
    shown_value,
    warn_clamped_depth,
    warn_repeated_frames,
)

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Run ``efusion fuse``; returns the exit status."""
    params, device, dtype = fusion_settings(args)
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
        warn_repeated_frames(frames)
    if out.is_dir():  # before the suffix check, which would call it an unsupported format
        raise CommandError(
            f"{out}: is a folder; -o takes a file name such as {out / 'fused.png'} (use --out-dir {out} to write one "
            "result per input folder into it)",
            code=2,
        )
    check_output(out, args.bit_depth)
    if args.format is not None and FORMATS[f".{args.format}"] != FORMATS.get(out.suffix.lower()):
        raise CommandError(
            f"--format {args.format} disagrees with -o {out}: with -o the file name's suffix gives the format "
            "(--format is for --out-dir)",
            code=2,
        )
    if len(inputs) == 1 and inputs[0].is_dir() and not out.name.startswith(".") and same_file(out.parent, inputs[0]):
        raise CommandError(
            f"{out}: is inside the input folder {inputs[0]}, where it would be read as a frame of the bracket next "
            "time; write it elsewhere"
        )
    for frame in frames:
        if same_file(frame, out):
            raise CommandError(f"{out}: is one of the input frames; inputs are never overwritten")
    if out.exists() and not args.force:
        raise CommandError(f"{out}: already exists (pass --force to overwrite it)")
    check_writable(out.parent)
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
            raise CommandError(f"{label}: {one_line(error)}") from None
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
    suffix = f".{args.format}"
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
        if same_file(folder, out_dir):
            raise CommandError(f"{out_dir}: is also an input folder; its results would be read as frames next time")
    jobs: list[tuple[Path, Path]] = []
    claimed: dict[Path, Path] = {}
    for folder in folders:
        # named as given: "." and ".." are resolved, a symlinked folder keeps its link's name
        name = Path(os.path.abspath(folder)).name or "bracket"
        out = out_dir / f"{name}{suffix}"
        if out in claimed:
            if same_file(claimed[out], folder):
                continue  # the same folder given twice
            raise CommandError(f"{claimed[out]} and {folder} would both be written to {out}; rename one folder")
        claimed[out] = folder
        jobs.append((folder, out))
    check_writable(out_dir)
    created = [folder for folder in (out_dir, *out_dir.parents) if not folder.exists()]  # deepest first
    make_folder(out_dir)

    from tqdm import tqdm  # type: ignore[import-untyped]

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
                except Exception as error:  # noqa: BLE001 - one bad bracket must not stop the batch ...
                    failed += 1
                    if isinstance(error, (ImageIOError, ParamsError, CommandError)):
                        message = str(error)  # already names the file
                    elif isinstance(error, (ValueError, TypeError, RuntimeError, OSError)):
                        message = f"{folder}: {one_line(error)}"
                    else:
                        message = f"{folder}: unexpected {type(error).__name__}: {one_line(error)}"
                    tqdm.write(f"{PROG}: error: {message}", file=sys.stderr)
                    if getattr(error, "errno", None) in _DESTINATION_ERRORS and _writes_into(error, out_dir):
                        # ... but a full disk or a read-only destination fails every bracket: stop
                        left = len(jobs) - (done + skipped + failed)
                        bar.close()
                        print_error(
                            f"stopped: every bracket would fail writing into {out_dir}; {left} bracket"
                            f"{'s' if left != 1 else ''} not attempted ({done} done, {skipped} skipped); "
                            "re-run the same command once it is fixed"
                        )
                        return 1
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        print_error(
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


def _fuse_files(frames: list[Path], out: Path, args, params, device, dtype, progress: bool = False) -> tuple[int, tuple[int, ...]]:
    """Read, fuse and write one bracket; returns (number of frames, stack shape ``(N, C, H, W)``).

    With ``progress``, a bar counts the frames read in the fusion's two passes (on a terminal only).
    """
    import efusion

    bracket = open_bracket(frames, max_pixels=args.max_pixels)
    warn_clamped_depth(args, params, *bracket.shape[1:])
    depth = args.bit_depth if args.bit_depth is not None else default_bit_depth(out, bracket.bit_depth)
    check_output(out, depth)
    float_files = bracket.bit_depth == 32  # only float samples can be NaN or infinite
    motion = args.align != "none" or args.deghost
    if args.reference is not None and not -len(bracket) <= args.reference < len(bracket):
        raise CommandError(f"--reference {args.reference}: the bracket has {len(bracket)} frames (0 to {len(bracket) - 1})",
                           code=2)
    with torch.inference_mode():
        if motion:
            whole = bracket.read(dtype=dtype, device=device)
            if float_files:
                for path, frame in zip(whole.paths, whole.frames):
                    check_finite(path, frame)
            steady, mask = _undo_motion(whole.frames, whole.mask, args, whole.paths)
            result = efusion.exposure_fusion(steady, mask=mask, **params)
            del whole, steady, mask
        elif dtype in (torch.float32, torch.float64):
            # frames are decoded when fuse_frames uses them (twice: two passes), so memory holds
            # one frame and the blended pyramid, however many frames the bracket has. 8- and 16-bit
            # frames without alpha go in as their 16-bit codes: float32 then measures their exact
            # values, as float64 does (Preset.integer_samples; OpenCV's presets scale as OpenCV)
            exact = exact_codes(params, dtype, bracket.bit_depth, bracket.has_alpha)
            decoded: Sequence[torch.Tensor] = bracket.frames(dtype=torch.uint16 if exact else dtype, device=device)
            if float_files:
                decoded = _FiniteFrames(decoded, bracket.paths)
            bar = None
            if progress:
                from tqdm import tqdm  # type: ignore[import-untyped]

                bar = tqdm(total=2 * len(bracket), desc=f"{PROG} {out.name}", unit="frame", file=sys.stderr,
                           disable=None, leave=False)
                decoded = _CountedFrames(decoded, bar)
            try:
                result = efusion.fuse_frames(decoded, masks=bracket.masks(dtype=dtype, device=device), dtype=dtype, **params)
            finally:
                if bar is not None:
                    bar.close()
        else:  # half precision runs exposure_fusion's reference code, on the whole stack
            stack = bracket.read(dtype=dtype, device=device)
            if float_files:
                for path, frame in zip(stack.paths, stack.frames):
                    check_finite(path, frame, f" or values too large for --dtype {args.dtype}")
            result = efusion.exposure_fusion(stack.frames, mask=stack.mask, **params)
            del stack
        image = display(result, args, depth)
    make_folder(out.parent)
    write_image(out, image, bit_depth=depth, quality=args.quality, overwrite=args.force,
                metadata=_output_metadata(bracket.paths, args, params))
    return len(bracket), (len(bracket), *bracket.shape)


def _undo_motion(frames: torch.Tensor, mask: torch.Tensor | None, args: argparse.Namespace,
                 paths: Sequence[Path]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``--align`` / ``--deghost``: the frames warped onto the reference and the mask the fusion takes."""
    import efusion

    if args.align != "none":
        try:
            aligned = efusion.align(frames, model=args.align, reference=args.reference, mask=mask)
        except ValueError as error:
            # the model and the reference were checked, the mask is the bracket's own: what is left
            # is the frames themselves (too small to align); align's message names their size
            where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more frames)"
            raise CommandError(f"{where}: --align {args.align}: {one_line(error)}; fuse these frames without --align",
                               code=2) from None
        frames = aligned.frames
        mask = aligned.mask if mask is None else aligned.mask * mask
        if args.verbose:
            for path, homography in zip(paths, aligned.homographies):
                rows = "; ".join(" ".join(f"{v:.6g}" for v in row) for row in homography.double().tolist())
                print(f"{PROG}: {path}: homography onto the reference [{rows}]")
    if args.deghost:
        agreement = efusion.deghost(frames, reference=args.reference, mask=mask)
        mask = agreement if mask is None else mask * agreement
        if args.verbose:
            for path, kept in zip(paths, agreement.mean(dim=(-3, -2, -1)).tolist()):
                print(f"{PROG}: {path}: deghosting keeps {100 * kept:.1f}% of its pixels")
    return frames, mask


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
    settings: dict[str, Any] = {"params": effective_params(params), "range": args.range or "clip"}
    if args.range == "robust":
        settings["clip"] = [args.clip_black, args.clip_white]
    if args.align != "none" or args.deghost:  # recorded only when used: older outputs stay comparable
        settings["motion"] = {"align": args.align, "deghost": args.deghost, "reference": args.reference}
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
            changes.append(f"{name} {shown_value(old_params.get(name))} -> {shown_value(new_params.get(name))}")
    for key in ("range", "clip", "motion"):
        if recorded.get(key) != current.get(key):
            changes.append(f"{key} {recorded.get(key)} -> {current.get(key)}")
    return ", ".join(changes) or "other settings"


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
        check_finite(self._paths[index], frame)
        return frame
