"""Command line: ``python -m training {fit,validate,test,predict,export} ...``.

``fit`` / ``validate`` / ``test`` / ``predict`` are Lightning's own (:class:`LightningCLI` around
:class:`training.module.FusionModule` and :class:`training.data.FusionDataModule`): configs
compose (``--config base.yaml --config overlay.yaml``, later files and flags win), the resolved
config is saved into each run's log folder, and ``--ckpt_path last`` resumes a stopped run.
``export`` writes the parameters of a checkpoint in the format of ``efusion fuse --params``::

    python -m training fit --config configs/synthetic.yaml
    python -m training test --config configs/synthetic.yaml --ckpt_path last
    python -m training export runs/synthetic/checkpoints/last.ckpt -o tuned.yaml
    efusion fuse bracket/ -o fused.png --params tuned.yaml
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

from efusion.io import _one_line

from .data import DatasetError, FusionDataModule
from .module import FusionModule, export_checkpoint

__all__ = ["main", "FusionCLI"]


PROG = "python -m training"


class ConfigError(ValueError):
    """A config value that the module, the data module or a dataset refused; its message says which."""


class FusionCLI(LightningCLI):
    """LightningCLI for exposure-fusion tuning (no extra options; everything lives in configs).

    The classes check their arguments as they are made; a refusal there is a :class:`ConfigError`,
    which :func:`main` prints as one line.
    """

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            raise ConfigError(_one_line(error)) from None


class SaveConfigToRun(SaveConfigCallback):
    """Save the resolved config into the run's log folder; a run without a logger has no folder,
    so nothing is written (rather than a ``config.yaml`` in the working directory)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.logger is None:
            return
        super().setup(trainer, pl_module, stage)


def _export(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training export",
        description="Write the fusion parameters of a training checkpoint for `efusion fuse --params`.",
    )
    parser.add_argument("checkpoint", help="a checkpoint (.ckpt) written by `python -m training fit`")
    parser.add_argument("-o", "--output", required=True, help="parameter file to write (.yaml, .yml or .json)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file (default: never overwrite)")
    args = parser.parse_args(list(argv))
    try:
        params = export_checkpoint(args.checkpoint, args.output, overwrite=args.force)
    except (OSError, ValueError) as error:
        print(f"python -m training export: error: {_one_line(error)}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    return 0


def main(args: Sequence[str] | None = None, run: bool = True):
    """Run the command line; returns the :class:`FusionCLI` (or the exit status of ``export``).

    Args:
        args: arguments without the program name (default ``sys.argv[1:]``).
        run: run the subcommand (``False``: only parse and instantiate, for inspection).
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "export":
        return _export(argv[1:])
    try:
        return FusionCLI(
            FusionModule,
            FusionDataModule,
            seed_everything_default=0,
            save_config_callback=SaveConfigToRun,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=argv,
            run=run,
        )
    except (ConfigError, DatasetError) as error:  # bad values or data in the config: one line, not a traceback
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr, flush=True)
        return 2
