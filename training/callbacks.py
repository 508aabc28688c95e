"""Lightning callbacks: checkpoints of a run, write fused brackets from ``predict``, record parameter trajectories."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter, Callback, ModelCheckpoint

from efusion import io as efusion_io

__all__ = ["FusedImageWriter", "ParameterTrajectories", "RunCheckpoint", "plot_trajectories"]


class RunCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` whose ``last.ckpt`` is always the latest state of the run.

    Lightning 2.6 writes ``last.ckpt`` only when it also writes a top-k checkpoint, so with
    ``monitor`` and ``save_top_k: 1`` it stays at the best epoch (a 25-epoch run of
    ``configs/synthetic.yaml`` left it at epoch 22). Here it is also written after every epoch
    that saved nothing else, and when training ends. Without ``dirpath`` the files go to
    ``<run folder>/checkpoints/`` (``runs/<name>/version_N/checkpoints/``), one folder per run.
    Takes the arguments of :class:`ModelCheckpoint`.
    """

    def _save_last_if_behind(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_behind(trainer)


class FusedImageWriter(BasePredictionWriter):
    """Write each fused bracket of ``predict`` to ``<output_dir>/<scene name>.<format>``.

    Files are written with :func:`efusion.io.write_image`: atomically (a complete file or
    none), and never over an existing file unless ``overwrite``; an existing result is skipped,
    so re-running a stopped prediction finishes the rest. With several processes Lightning's
    predict loop gives every bracket to exactly one process (no padding), so each is written once.

    Args:
        output_dir: folder for the results (created).
        format: ``png``, ``jpg`` or ``tif``.
        bit_depth: 8, 16 or 32 (float TIFF, unclamped); default by format (8 for png/jpg).
        overwrite: replace existing results.
    """

    def __init__(self, output_dir: str, format: str = "png", bit_depth: int | None = None, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        if format not in efusion_io.OUTPUT_FORMATS:
            raise ValueError(f"format must be one of {sorted(efusion_io.OUTPUT_FORMATS)}, got {format!r}")
        self.output_dir = Path(output_dir)
        self.suffix = f".{format}"
        self.bit_depth = efusion_io.check_output(self.output_dir / f"x{self.suffix}", bit_depth)
        self.overwrite = bool(overwrite)
        self.written: list[Path] = []
        self.skipped: list[Path] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        for image, name in zip(prediction["fused"], prediction["name"]):
            out = self.output_dir / f"{name}{self.suffix}"
            if out.exists() and not self.overwrite:
                self.skipped.append(out)
                continue
            shown = image if self.bit_depth == 32 else image.clamp(0.0, 1.0)
            try:
                efusion_io.write_image(out, shown.float(), bit_depth=self.bit_depth, overwrite=self.overwrite)
            except efusion_io.ImageIOError:
                if out.exists() and not self.overwrite:  # another run wrote it meanwhile
                    self.skipped.append(out)
                    continue
                raise
            self.written.append(out)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        print(  # every process reports its own share
            f"rank {trainer.global_rank}: wrote {len(self.written)} fused image(s) to {self.output_dir}, "
            f"skipped {len(self.skipped)} already there",
            flush=True,
        )


class ParameterTrajectories(Callback):
    """Record the learnable parameters after every optimiser step; at the end of ``fit`` write
    ``<log dir>/<name>.csv`` and a plot ``<log dir>/<name>.png`` (one panel per parameter) when
    the trainer has a logger (its folder); otherwise keep them in :attr:`steps` / :attr:`values`.

    The history is saved in checkpoints, so a resumed run plots the whole trajectory.

    Args:
        name: file name stem.
        every_n_steps: record every n-th step.
        reference: optional values to draw as dashed lines (e.g. the hidden parameters of a
            recovery experiment).
        plot: also write the PNG (needs matplotlib).
    """

    def __init__(self, name: str = "trajectories", every_n_steps: int = 1, reference: dict[str, float] | None = None,
                 plot: bool = True) -> None:
        super().__init__()
        self.name = name
        self.every_n_steps = max(1, int(every_n_steps))
        self.reference = dict(reference or {})
        self.plot = bool(plot)
        self.steps: list[int] = []
        self.values: list[dict[str, float]] = []

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = int(trainer.global_step)
        if self.steps and self.steps[-1] == step:
            return
        self.steps.append(step)
        self.values.append(dict(pl_module.parameter_values()))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._record(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module)
        if not self.steps or trainer.fast_dev_run or trainer.logger is None:
            return
        log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask, not just rank 0
        if not trainer.is_global_zero:
            return
        folder = Path(log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        names = list(self.values[-1])
        with open(folder / f"{self.name}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["step", *names])
            for step, values in zip(self.steps, self.values):
                writer.writerow([step, *(values.get(n, "") for n in names)])
        written = [folder / f"{self.name}.csv"]
        if self.plot:
            plot_trajectories(self.steps, self.values, folder / f"{self.name}.png", reference=self.reference)
            written.append(folder / f"{self.name}.png")
        print(f"parameter trajectories written to {' and '.join(str(p) for p in written)}", flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "values": [dict(v) for v in self.values]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = list(state_dict.get("steps", []))
        self.values = [dict(v) for v in state_dict.get("values", [])]


def plot_trajectories(
    steps: Sequence[int],
    values: Sequence[dict[str, float]],
    path: str | Path | None = None,
    *,
    reference: dict[str, float] | None = None,
    title: str | None = None,
):
    """Plot parameter values against steps, one panel per parameter; save to ``path`` if given.

    Returns the matplotlib figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(values[-1]) if values else []
    columns = min(3, max(1, len(names)))
    rows = max(1, -(-len(names) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.4 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        axis.plot(list(steps), [v.get(name, float("nan")) for v in values], color="tab:blue", lw=1.6)
        if reference and name in reference:
            axis.axhline(reference[name], color="tab:red", ls="--", lw=1.0, label="hidden")
            axis.legend(loc="best", fontsize=7)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
