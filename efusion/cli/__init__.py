"""The ``efusion`` command: fuse exposure brackets from image files, score fusions, or run the demo.

::

    efusion demo                                   # generated bracket -> ./efusion-demo/
    efusion fuse a.jpg b.jpg c.jpg -o fused.png    # one bracket
    efusion fuse shoot/*/ --out-dir fused/         # one result per folder, resumable
    efusion eval bracket/ --fused other.jpg        # MEF-SSIM of efusion's result and of other.jpg

``main(argv)`` returns the exit status (0 success, 1 failure, 2 bad command line) and never
lets a traceback out for bad input: each problem is one ``efusion: error: ...`` line on stderr
naming the file. Set ``EFUSION_DEBUG=1`` to get the traceback of an unexpected error.

The package, one job per module: :mod:`~efusion.cli.parser` (the argument parser and the parsing
of option values), :mod:`~efusion.cli.fuse`, :mod:`~efusion.cli.evaluate` (``efusion eval`` and
its scoring protocol) and :mod:`~efusion.cli.demo` (one command each), and
:mod:`~efusion.cli.common` (the steps they share). The console script is ``efusion_cli.main``,
a launcher that sets the OpenMP wait policy before torch loads and then calls :func:`main`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..io import ImageIOError, ParamsError
from ..io.errors import one_line
from . import demo, evaluate, fuse
from .common import CommandError, print_error
from .parser import build_parser

__all__ = ["build_parser", "main"]

#: subcommand -> the function that runs it
_COMMANDS = {"fuse": fuse.run, "eval": evaluate.run, "demo": demo.run}


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
        return _COMMANDS[args.command](args)
    except CommandError as error:
        print_error(str(error))
        return error.code
    except (ImageIOError, ParamsError) as error:
        print_error(str(error))
        return 1
    except KeyboardInterrupt:
        print_error("interrupted (finished outputs are kept; re-run the same command to do the rest)")
        return 130
    except Exception as error:  # a bug, or something the checks above did not foresee
        if os.environ.get("EFUSION_DEBUG"):
            raise
        print_error(f"unexpected {type(error).__name__}: {one_line(error)} (set EFUSION_DEBUG=1 for the traceback)")
        return 1
    finally:
        if args.threads is not None:  # main() may run inside a larger program: leave its setting
            torch.set_num_threads(threads)
