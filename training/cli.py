"""Command line: ``python -m training {fit,validate,test,predict,export} ...``.

``fit`` / ``validate`` / ``test`` / ``predict`` are Lightning's own (:class:`LightningCLI` around
:class:`training.module.FusionModule` and :class:`training.data.FusionDataModule`): configs
compose (``--config base.yaml --config overlay.yaml``, later files and flags win), every run
has its own folder ``runs/<name>/version_N/`` (resolved config, ``params.yaml``, trajectories,
``checkpoints/last.ckpt`` = the end of training), relative folders of a config are taken inside
``--trainer.default_root_dir``, and ``--ckpt_path last`` is the newest run's ``last.ckpt`` (with
``fit``: resume a stopped run). ``export`` writes the parameters of a checkpoint in the format of
``efusion fuse --params`` (never over an existing file without ``--force``). A config error is
one line on stderr and exit status 2::

    python -m training fit --config configs/synthetic.yaml
    python -m training test --config configs/synthetic.yaml --ckpt_path last
    python -m training export runs/synthetic/version_0/checkpoints/last.ckpt -o tuned.yaml
    efusion fuse bracket/ -o fused.png --params tuned.yaml
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

from efusion.io.errors import one_line

from .data import DatasetError, FusionDataModule
from .module import FusionModule, export_checkpoint

__all__ = ["FusionCLI", "main"]


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
            raise ConfigError(one_line(error)) from None

    def before_instantiate_classes(self) -> None:
        """Relative log and checkpoint folders of a config are taken inside --trainer.default_root_dir."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer = config.get("trainer") if config is not None else None
        root = trainer.get("default_root_dir") if trainer is not None else None
        if not root:
            return
        loggers = trainer.get("logger")
        for entry in loggers if isinstance(loggers, list) else [loggers]:
            args = getattr(entry, "init_args", None)
            if args is not None and args.get("save_dir") and not Path(args["save_dir"]).is_absolute():
                args["save_dir"] = str(Path(root) / args["save_dir"])
        for entry in trainer.get("callbacks") or []:
            args = getattr(entry, "init_args", None)
            if args is not None and args.get("dirpath") and not Path(args["dirpath"]).is_absolute():
                args["dirpath"] = str(Path(root) / args["dirpath"])

    def _resolve_last(self) -> None:
        """``--ckpt_path last``: the newest run's ``last.ckpt`` (every run has its own folder, so
        Lightning's own lookup, in the new run's folder, would find nothing)."""
        kwargs = self.config_init[self.subcommand]
        if kwargs.get("ckpt_path") != "last":
            return
        logger = self.trainer.logger
        if logger is None or getattr(logger, "save_dir", None) is None:
            return
        runs = Path(logger.save_dir) / (logger.name or "")
        found = []
        for folder in runs.glob("version_*"):
            number = folder.name[len("version_"):]
            if number.isdigit() and (folder / "checkpoints" / "last.ckpt").is_file():
                found.append((int(number), folder / "checkpoints" / "last.ckpt"))
        if not found:
            if self.subcommand == "fit":
                return  # nothing to resume: Lightning starts afresh, and says so
            raise ConfigError(f"--ckpt_path last: no run in {runs} has a checkpoints/last.ckpt; run fit first")
        last = max(found)[1]
        kwargs["ckpt_path"] = str(last)
        print(f"--ckpt_path last: {last}", flush=True)

    def before_fit(self) -> None:
        self._resolve_last()

    def before_validate(self) -> None:
        self._resolve_last()

    def before_test(self) -> None:
        self._resolve_last()

    def before_predict(self) -> None:
        self._resolve_last()


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
        print(f"python -m training export: error: {one_line(error)}", file=sys.stderr)
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
    saved_argv = sys.argv
    if args is not None:  # arguments given from Python: LightningCLI would warn about the process's own sys.argv
        sys.argv = [saved_argv[0] if saved_argv else PROG]
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
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr, flush=True)
        return 2
    finally:
        sys.argv = saved_argv
