"""The Lightning module that tunes an :class:`efusion.Fusion` layer by gradient descent.

One shared step for train / val / test logs ``{stage}/loss``, and against the target
``{stage}/psnr`` and ``{stage}/ssim`` (val and test also log the same scores of Mertens' default
parameters as ``{stage}/psnr_mertens`` and ``{stage}/ssim_mertens``, the baseline to beat);
every training step logs each learnable parameter as ``param/<name>``. At the end of ``fit`` the
tuned parameters are written as the file ``efusion fuse --params`` reads (see :func:`export`),
and ``python -m training export CKPT -o params.yaml`` does the same from any checkpoint.

A non-finite loss or gradient (on any process) either stops the run with a message saying where
(``nonfinite="raise"``, the default) or skips that optimiser step without touching the
parameters or the optimiser state (``nonfinite="skip"``).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

import efusion
from efusion import io as efusion_io
from efusion.io.errors import one_line
from efusion.params import NAMES as PARAMETER_NAMES

from .losses import FusionLoss, psnr, ssim

__all__ = ["FusionModule", "export", "export_checkpoint"]

OPTIMIZERS = ("adam", "adamw", "sgd", "lbfgs")
SCHEDULERS = ("cosine",)
NONFINITE = ("raise", "skip")
_RAW_NAME = re.compile(r"^(?:parametrizations\.)?(\w+?)(?:\.original)?$")


class FusionModule(pl.LightningModule):
    """Learn Mertens fusion parameters from brackets and targets.

    Args:
        contrast, saturation, exposure, mu, sigma, levels, preset: start values of the
            :class:`efusion.Fusion` layer (Mertens' defaults; ``mu`` and ``sigma`` may be one value
            per channel, ``[r, g, b]``; ``levels=None`` is the automatic
            full depth, learned relative to it: -1 = full depth, -2 one level less ...).
        learnable: parameter names to learn (``sigma`` is redundant with ``exposure``).
        init_params: a parameter file (``efusion fuse --params`` format) whose values replace
            the start values above, e.g. to fine-tune or to predict with exported parameters
            (the hyperparameters saved in checkpoints hold those values, not the file's path).
        loss: ``l1``, ``mse``, ``ssim``, ``mix`` or ``mef_ssim`` (see :mod:`training.losses`).
        mix_alpha: weight of ``1 - SSIM`` in the ``mix`` loss.
        optimizer: ``adam``, ``adamw``, ``sgd`` (momentum 0.9) or ``lbfgs`` (L-BFGS with a
            strong-Wolfe line search: a handful of parameters on a fixed full batch converge in a
            few dozen evaluations even along the loss valley's flat directions; use it with
            ``batch_size`` = the whole training set).
        lr: learning rate (for ``lbfgs``, the initial step; 1 is usual).
        max_iter: L-BFGS iterations per training step.
        lr_scale: per-parameter multipliers of ``lr``, e.g. ``{levels: 5.0}``.
        weight_decay: decoupled (adamw) or L2 weight decay.
        scheduler: ``None`` or ``cosine`` (cosine decay to 0 over the run, per step).
        nonfinite: ``raise`` or ``skip`` on a non-finite loss or gradient.
        baseline: also score Mertens' defaults in validation and test.
        clamp_output: compare the displayed image, the fusion clipped to [0, 1], with the target
            (Mertens fusion overshoots slightly near strong edges). ``False`` compares the raw
            fusion: a smooth objective, which L-BFGS needs to converge tightly, and the right one
            for targets made by the fusion itself (they keep the overshoot).
        export_path: where ``fit`` writes the tuned parameters (relative paths are inside the
            run's log folder); ``None`` to skip.
    """

    def __init__(
        self,
        contrast: float = 1.0,
        saturation: float = 1.0,
        exposure: float = 1.0,
        mu: float | list[float] = 0.5,
        sigma: float | list[float] = 0.2,
        levels: float | None = None,
        preset: str = "mertens",
        learnable: Sequence[str] = ("contrast", "saturation", "exposure", "mu", "levels"),
        init_params: str | None = None,
        loss: str = "l1",
        mix_alpha: float = 0.84,
        optimizer: str = "adam",
        lr: float = 0.01,
        max_iter: int = 20,
        lr_scale: dict[str, float] | None = None,
        weight_decay: float = 0.0,
        scheduler: str | None = None,
        nonfinite: str = "raise",
        baseline: bool = True,
        clamp_output: bool = True,
        export_path: str | None = "params.yaml",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        start = {"contrast": contrast, "saturation": saturation, "exposure": exposure, "mu": mu, "sigma": sigma,
                 "levels": levels, "preset": preset}
        if init_params is not None:
            from_file = efusion_io.read_params(init_params)
            start.update(from_file)
            # checkpoints keep the values the file gave (shapes, depth, preset), not its path, so
            # they rebuild this layer when the file is gone (moved, another machine)
            self.hparams.update(from_file)
            self.hparams["init_params"] = None
        learnable = list(learnable)
        self.fusion = efusion.Fusion(**start, learnable=learnable)
        self.criterion = FusionLoss(loss, mix_alpha)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if scheduler is not None and scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be None or one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE)}, got {nonfinite!r}")
        if optimizer == "lbfgs" and nonfinite == "skip":
            raise ValueError(
                "nonfinite=skip needs a first-order optimiser: L-BFGS evaluates the loss several times per "
                "step inside its line search, where a step cannot be skipped; use nonfinite=raise"
            )
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        unknown = sorted(set(lr_scale or {}) - set(PARAMETER_NAMES))
        if unknown:
            raise ValueError(f"lr_scale has unknown parameter(s) {unknown}; choose among {list(PARAMETER_NAMES)}")
        self.skipped_steps = 0
        self._loss_finite = True
        self._last_batch_names: list[str] = []

    # -- parameters ---------------------------------------------------------------------------
    def parameter_values(self) -> dict[str, float]:
        """The learnable parameters' current values (constrained), as numbers."""
        values: dict[str, float] = {}
        for name in self.fusion.learnable:
            value = getattr(self.fusion, name).detach()
            if value.dim() == 0:
                values[name] = float(value)
            else:
                values.update({f"{name}_{i}": float(v) for i, v in enumerate(value.flatten())})
        return values

    def exported_params(self) -> dict[str, Any]:
        """All parameters in the form ``efusion fuse --params`` reads (see :func:`export`)."""
        return self.fusion.export()

    # -- steps --------------------------------------------------------------------------------
    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.fusion(frames, mask=mask)

    def _shared_step(self, batch: dict[str, Any], stage: str) -> Tensor:
        frames, target, mask = batch["frames"], batch.get("target"), batch.get("mask")
        batch_size = frames.shape[0]
        valid = None if mask is None else mask.amax(dim=1)
        fused = self._display(self.fusion(frames, mask=mask))
        loss = self.criterion(fused, target, frames, valid, frame_mask=mask)
        train = stage == "train"
        self.log(f"{stage}/loss", loss, batch_size=batch_size, prog_bar=True, sync_dist=not train)
        if target is not None:
            with torch.no_grad():
                shown = fused.detach()
                scores = {
                    f"{stage}/psnr": psnr(shown, target, valid).mean(),
                    f"{stage}/ssim": ssim(shown, target, valid).mean(),
                }
                if not train and self.hparams.baseline:
                    default = self._display(efusion.exposure_fusion(frames, mask=mask, preset=self.fusion.preset))
                    scores[f"{stage}/psnr_mertens"] = psnr(default, target, valid).mean()
                    scores[f"{stage}/ssim_mertens"] = ssim(default, target, valid).mean()
            self.log_dict(scores, batch_size=batch_size, sync_dist=not train, prog_bar=not train)
        return loss

    def _display(self, image: Tensor) -> Tensor:
        # the clipped result is what a file or a screen shows
        return image.clamp(0.0, 1.0) if self.hparams.clamp_output else image

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self.log_dict({f"param/{k}": v for k, v in self.parameter_values().items()}, on_step=True, on_epoch=False)
        loss = self._shared_step(batch, "train")
        if self.hparams.optimizer == "lbfgs" and self.trainer.world_size > 1:
            # the line search compares loss values: every process must see the same one (the
            # global mean; its gradient is the mean DDP all-reduces anyway)
            value = self.all_gather(loss.detach()).mean()
            loss = loss + (value - loss).detach()
        self._loss_finite = bool(torch.isfinite(loss.detach()))
        self._last_batch_names = list(batch.get("name", []))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return {"fused": self.fusion(batch["frames"], mask=batch.get("mask")), "name": list(batch["name"])}

    # -- non-finite guard ---------------------------------------------------------------------
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        bad_grads = [
            name for name, p in self.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())
        ]
        local_bad = (not self._loss_finite) or bool(bad_grads)
        # every process takes the same decision (gradients are already all-reduced; the loss is not)
        bad = self.trainer.strategy.reduce_boolean_decision(local_bad, all=False)
        if not bad:
            return
        where = (
            f"step {self.global_step} (epoch {self.current_epoch}, scenes {self._last_batch_names or '?'}, "
            f"rank {self.global_rank})"
        )
        what = []
        if not self._loss_finite:
            what.append("the loss")
        if bad_grads:
            what.append("the gradient of " + ", ".join(_short_name(n) for n in bad_grads))
        what_text = " and ".join(what) if what else "the loss or gradient on another process"
        if self.hparams.nonfinite == "raise":
            raise FloatingPointError(
                f"non-finite value in {what_text} at {where}; parameters are still {self.parameter_values()}. "
                "Check the data (frames must be finite, in [0, 1]) and the learning rate, or set "
                "model.nonfinite=skip to skip such steps."
            )
        for p in self.parameters():
            p.grad = None  # optimisers leave parameters without a gradient (and their state) alone
        self.skipped_steps += 1
        self.print(f"skipping optimiser step: non-finite value in {what_text} at {where}")
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        bad = [k for k, v in self.parameter_values().items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"parameters {bad} became non-finite at step {self.global_step}: {self.parameter_values()}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # ``--ckpt_path last`` takes whatever the checkpoint folder holds, and overlays (another loss,
        # another set of learnable parameters) write into their base config's folder: resuming or
        # testing another run's checkpoint must not pass silently
        saved = checkpoint.get("hyper_parameters") or {}
        differences = [
            f"{key}={_run_identity(key, saved[key])!r} there, {_run_identity(key, self.hparams[key])!r} here"
            for key in RUN_IDENTITY
            if key in saved and key in self.hparams and _run_identity(key, saved[key]) != _run_identity(key, self.hparams[key])
        ]
        if differences:
            raise ValueError(
                "the checkpoint belongs to another run (" + "; ".join(differences) + "): give --ckpt_path this "
                "run's checkpoint (an overlay's runs write into its base config's checkpoint folder; a "
                "ModelCheckpoint dirpath of their own keeps them apart), or start from the other run's "
                "exported parameters with --model.init_params"
            )
        self.skipped_steps = int(checkpoint.get("skipped_steps", 0))

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        scale = dict(self.hparams.lr_scale or {})
        groups: dict[float, list[Tensor]] = {}
        for name, parameter in self.fusion.named_parameters():
            lr = self.hparams.lr * float(scale.get(_short_name(name), 1.0))
            groups.setdefault(lr, []).append(parameter)
        if not groups:
            raise ValueError("nothing to learn: model.learnable is empty")
        param_groups = [{"params": params, "lr": lr} for lr, params in groups.items()]
        name = self.hparams.optimizer
        if name == "adam":
            optimizer = torch.optim.Adam(param_groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        elif name == "adamw":
            optimizer = torch.optim.AdamW(param_groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        elif name == "sgd":
            optimizer = torch.optim.SGD(param_groups, lr=self.hparams.lr, momentum=0.9, weight_decay=self.hparams.weight_decay)
        else:
            if len(param_groups) > 1:
                raise ValueError("lr_scale does not apply to lbfgs (one step size for all parameters); remove it")
            # tolerances at 0: the fit can be exact, and the default stopping rules quit on the
            # flat part of the valley long before the exponents are recovered
            optimizer = torch.optim.LBFGS(
                param_groups, lr=self.hparams.lr, max_iter=self.hparams.max_iter, history_size=20,
                line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0,
            )
        if self.hparams.scheduler is None:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- end of fit -----------------------------------------------------------------------------
    def on_fit_end(self) -> None:
        trainer = self.trainer
        if trainer.world_size > 1:
            self._check_ranks_agree()
        if self.hparams.export_path and not trainer.fast_dev_run:
            path = Path(self.hparams.export_path)
            if not path.is_absolute():
                # trainer.log_dir is a broadcast under DDP: every process must ask, not just rank 0
                path = Path(trainer.log_dir or trainer.default_root_dir) / path
            if not trainer.is_global_zero:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            export(self, path)
            self.print(f"tuned parameters written to {path} (efusion fuse --params {path})")

    def _check_ranks_agree(self) -> None:
        """All processes must hold the same parameters (DDP keeps them in step); fail loudly if not."""
        vector = torch.cat([p.detach().flatten() for p in self.fusion.parameters()]).to(self.device)
        gathered = self.all_gather(vector)  # [world, P]
        spread = float((gathered - gathered[0:1]).abs().max())
        if spread != 0.0:
            raise RuntimeError(f"processes ended with different parameters (max difference {spread:.3g}): {gathered.tolist()}")


#: hyperparameters that define what a run optimises: a checkpoint with other values is another run's
RUN_IDENTITY = ("loss", "learnable", "preset")


def _run_identity(key: str, value: Any) -> Any:
    return sorted(value) if key == "learnable" else value


def _short_name(name: str) -> str:
    """``parametrizations.contrast.original`` -> ``contrast``; ``fusion.levels`` -> ``levels``."""
    name = name.removeprefix("fusion.")
    match = _RAW_NAME.match(name)
    return match.group(1) if match else name


def export(module: FusionModule, path: str | Path, *, overwrite: bool = True) -> dict[str, Any]:
    """Write ``module``'s parameters to ``path`` (``.yaml``/``.yml``/``.json``) for ``efusion fuse --params``.

    As :meth:`efusion.Fusion.export` gives them: a learned relative depth as a number <= -1
    (levels below the full depth), an absolute one as a number >= 1, per-channel ``mu`` or
    ``sigma`` as lists. The write is atomic; ``overwrite=False`` refuses an existing file.
    Returns the values written.
    """
    params = module.exported_params()
    efusion_io.write_params(path, params, overwrite=overwrite)
    return params


def export_checkpoint(checkpoint: str | Path, path: str | Path, *, overwrite: bool = True) -> dict[str, Any]:
    """Load a :class:`FusionModule` checkpoint and :func:`export` its parameters to ``path``
    (``overwrite=False``: refuse an existing file, checked before the checkpoint is loaded)."""
    if not overwrite and Path(path).exists():
        raise efusion_io.ParamsError(f"{path}: already exists (pass --force to replace it)")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint")
    not_ours = f"{checkpoint}: not a FusionModule checkpoint (one written by `python -m training fit`)"
    try:
        content = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - pickle, zip and torch errors alike: the file is not a torch checkpoint
        raise ValueError(f"{not_ours}: cannot load it ({one_line(error)})") from None
    if not isinstance(content, dict) or "pytorch-lightning_version" not in content or "state_dict" not in content:
        raise ValueError(f"{not_ours}: no Lightning state_dict in it")
    hparams = content.get("hyper_parameters", {})
    overrides = {}
    init_params = hparams.get("init_params")
    if init_params is not None and not Path(init_params).is_file():
        # init_params only set start values, which the checkpoint's weights replace; the file is
        # gone, so whether a learned depth is relative comes from the `levels` hyperparameter
        overrides = {"init_params": None}
    try:
        module = FusionModule.load_from_checkpoint(checkpoint, map_location="cpu", **overrides)
    except RuntimeError as error:  # state_dict keys or shapes of another model
        raise ValueError(f"{not_ours}: {one_line(error)}") from None
    return export(module, path, overwrite=overwrite)
