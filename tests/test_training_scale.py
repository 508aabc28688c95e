"""Faults and scale-out: a killed run resumes to the same parameters; DDP ranks stay identical.

Both run ``python -m training fit`` in subprocesses where Lightning needs its own process
(a hard kill; DDP launching its ranks by re-running the command). The callbacks below are
loaded by those subprocesses from this file (``tests/`` is put on their ``PYTHONPATH``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pl = pytest.importorskip("pytorch_lightning")

from efusion import io as efusion_io
from training.cli import main

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


class KillAtEpoch(pl.Callback):
    """Simulate a crash: SIGKILL this process when epoch ``epoch`` starts (after the previous
    epoch's checkpoint was written), with no chance to clean up."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class DumpRank(pl.Callback):
    """Write each rank's final parameters and the scenes it trained on to ``<folder>/rank<r>.json``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.seen: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.setdefault(trainer.current_epoch, []).extend(batch["name"])

    def on_fit_end(self, trainer, pl_module) -> None:
        state = {"params": pl_module.parameter_values(), "seen": self.seen, "world_size": trainer.world_size}
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(state))


def _config(path: Path, *, checkpoints: Path | None, export: Path, callbacks=(), **trainer) -> Path:
    callback_list = [dict(c) for c in callbacks]
    if checkpoints is not None:
        callback_list.insert(0, {
            "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(checkpoints), "save_last": True, "save_top_k": -1, "every_n_epochs": 1},
        })
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": 4, "logger": False,
            "enable_checkpointing": checkpoints is not None, "enable_progress_bar": False,
            "enable_model_summary": False, "callbacks": callback_list, "default_root_dir": str(path.parent), **trainer,
        },
        "model": {"learnable": ["contrast", "saturation", "exposure", "mu"], "lr": 0.05, "export_path": str(export)},
        "data": {
            "train": {"class_path": "training.data.SyntheticScenes",
                      "init_args": {"length": 6, "size": 32, "crop": 24, "flip": True, "tonemap": "reinhard"}},
            "batch_size": 2,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _run(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.slow
# the resumed run writes into the killed run's checkpoint folder on purpose; Lightning notes it is not empty
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    straight = _config(tmp_path / "straight.yaml", checkpoints=tmp_path / "ckpt_a", export=tmp_path / "a.yaml")
    main(["fit", "--config", str(straight)])

    kill = {"class_path": "test_training_scale.KillAtEpoch", "init_args": {"epoch": 2}}
    crashing = _config(tmp_path / "crash.yaml", checkpoints=tmp_path / "ckpt_b", export=tmp_path / "b.yaml", callbacks=[kill])
    killed = _run(["fit", "--config", str(crashing)], tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "b.yaml").exists()  # it never finished
    assert (tmp_path / "ckpt_b" / "last.ckpt").exists()

    dump = {"class_path": "test_training_scale.DumpRank", "init_args": {"folder": str(tmp_path)}}
    resumable = _config(tmp_path / "resume.yaml", checkpoints=tmp_path / "ckpt_b", export=tmp_path / "b.yaml", callbacks=[dump])
    cli = main(["fit", "--config", str(resumable), "--ckpt_path", "last"])
    assert cli.trainer.current_epoch == 4
    trained = json.loads((tmp_path / "rank0.json").read_text())["seen"]
    assert sorted(trained) == ["2", "3"]  # it resumed after the two finished epochs, not from scratch
    assert efusion_io.read_params(tmp_path / "b.yaml") == efusion_io.read_params(tmp_path / "a.yaml")


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_identical(tmp_path):
    dump = {"class_path": "test_training_scale.DumpRank", "init_args": {"folder": str(tmp_path)}}
    config = _config(tmp_path / "ddp.yaml", checkpoints=None, export=tmp_path / "params.yaml", callbacks=[dump],
                     strategy="ddp", devices=2, max_epochs=2)
    done = _run(["fit", "--config", str(config)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["params"] == ranks[1]["params"]  # exactly equal, not just close
    assert ranks[0]["params"]["contrast"] != 1.0  # and they did train
    for epoch in ("0", "1"):  # each rank trained on its own half of every epoch
        first, second = set(ranks[0]["seen"][epoch]), set(ranks[1]["seen"][epoch])
        assert not first & second and len(first | second) == 6
    exported = efusion_io.read_params(tmp_path / "params.yaml")
    assert exported["contrast"] == pytest.approx(ranks[0]["params"]["contrast"])


@pytest.mark.slow
def test_ddp_with_logger_and_trajectories_finishes(tmp_path):
    # trainer.log_dir is a collective under DDP (rank 0 broadcasts it): asked on rank 0 only, at
    # the end of fit, it waited forever for the other process (the configs' logger + callbacks)
    logger = {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "runs")}}
    trajectories = {"class_path": "training.callbacks.ParameterTrajectories", "init_args": {"plot": False}}
    config = _config(tmp_path / "ddp.yaml", checkpoints=None, export=Path("params.yaml"), callbacks=[trajectories],
                     strategy="ddp", devices=2, max_epochs=1, logger=logger)
    try:
        done = _run(["fit", "--config", str(config)], tmp_path, timeout=120)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"DDP fit with a logger did not finish (deadlock at the end of fit): {str(error.stderr)[-2000:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert set(efusion_io.read_params(run / "params.yaml")) >= {"contrast", "saturation", "exposure", "mu"}
    rows = (run / "trajectories.csv").read_text().splitlines()
    assert rows[0].split(",") == ["step", "contrast", "saturation", "exposure", "mu"] and len(rows) >= 3


@pytest.mark.slow
def test_ddp_predict_writes_each_bracket_once(tmp_path):
    from efusion import synthetic

    for seed in range(3):
        folder = tmp_path / "in" / f"b{seed}"
        folder.mkdir(parents=True)
        for n, frame in enumerate(synthetic.bracket(24, 32, seed=seed)):
            efusion_io.write_image(folder / f"{n}.png", frame)
    done = _run(["predict", "--config", str(ROOT / "configs" / "predict.yaml"), "--trainer.accelerator", "cpu",
                 "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.enable_progress_bar", "false",
                 "--data.predict.init_args.root", str(tmp_path / "in"),
                 "--trainer.callbacks.init_args.output_dir", str(tmp_path / "out")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b0.png", "b1.png", "b2.png"]
    counts = [int(line.split("wrote ")[1].split()[0]) for line in done.stdout.splitlines() if "fused image(s)" in line]
    assert sorted(counts) == [1, 2]  # three brackets split over two ranks, none written twice
