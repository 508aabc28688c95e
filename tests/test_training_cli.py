"""``python -m training`` as a new user meets it (issue 16): export, config errors, where runs go."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pl = pytest.importorskip("pytorch_lightning")

from efusion import io as efusion_io
from training.cli import main
from training.data import FusionDataModule, SyntheticScenes
from training.module import FusionModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    module = FusionModule(learnable=["contrast"], export_path=None)
    dm = FusionDataModule(train=SyntheticScenes(length=2, size=24, target_params={"contrast": 0.5}), batch_size=2)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         max_steps=2, default_root_dir=str(root))
    trainer.fit(module, dm)
    return next(root.rglob("*.ckpt"))


# ----------------------------------------------------------------------------------------------
# 3: export never overwrites without --force


def test_export_does_not_overwrite_without_force(tmp_path, capsys, checkpoint):
    out = tmp_path / "tuned.yaml"
    out.write_text("contrast: 0.123\n")
    assert main(["export", str(checkpoint), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and "--force" in err[0]
    assert out.read_text() == "contrast: 0.123\n"
    assert main(["export", str(checkpoint), "-o", str(out), "--force"]) == 0
    assert efusion_io.read_params(out)["contrast"] != 0.123
    assert [p.name for p in tmp_path.iterdir()] == ["tuned.yaml"]  # no temporary file left


# ----------------------------------------------------------------------------------------------
# 4: config errors are one line and exit 2; fit says where it wrote


def tiny_config(tmp_path: Path, **model) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False, "log_every_n_steps": 1,
            "enable_model_summary": False, "default_root_dir": str(tmp_path),
            "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path), "name": "run"}},
            "callbacks": [{"class_path": "training.callbacks.ParameterTrajectories"}],
        },
        "model": {"learnable": ["contrast"], "lr": 0.05, **model},
        "data": {
            "train": {"class_path": "training.data.SyntheticScenes", "init_args": {"length": 2, "size": 24}},
            "val": {"class_path": "training.data.SyntheticScenes", "init_args": {"length": 2, "size": 24, "seed": 99}},
            "test": {"class_path": "training.data.SyntheticScenes", "init_args": {"length": 2, "size": 24, "seed": 199}},
            "batch_size": 2,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--model.loss", "frob"], "frob"),
        (["--model.learnable", "[contrast, gamma]"], "gamma"),
        (["--model.lr", "-1"], "lr"),
        (["--data.batch_size", "0"], "batch_size"),
        (["--data.train", "training.data.RadianceMaps", "--data.train.files", "[missing.exr]"], "missing.exr"),
    ],
)
def test_config_errors_are_one_line_and_exit_2(tmp_path, capsys, flags, needle):
    config = tiny_config(tmp_path)
    status = main(["fit", "--config", str(config), *flags])
    err = capsys.readouterr().err
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("python -m training: error: "), err
    assert needle in lines[0] and "Traceback" not in err


def test_fit_says_where_it_wrote(tmp_path, capsys):
    config = tiny_config(tmp_path)
    cli = main(["fit", "--config", str(config)])
    out = capsys.readouterr().out
    run = Path(cli.trainer.log_dir)
    for name in ("params.yaml", "trajectories.png", "trajectories.csv"):
        assert (run / name).is_file()
        assert str(run / name) in out, out


# ----------------------------------------------------------------------------------------------
# 1, 2: last.ckpt is the end of training; each run has its own checkpoint folder, which follows
# --trainer.default_root_dir


def with_checkpoints(config: Path, save_dir: str | None = None, epochs: int = 3) -> Path:
    content = yaml.safe_load(config.read_text())
    content["trainer"]["max_epochs"] = epochs
    content["trainer"]["callbacks"].append({
        "class_path": "training.callbacks.RunCheckpoint",
        "init_args": {"filename": "best-{epoch:02d}", "monitor": "val/loss", "save_top_k": 1, "save_last": True},
    })
    # the loss rises when the parameters walk away from Mertens' defaults (the targets' own):
    # the best epoch is the first, which is where Lightning 2.6 left last.ckpt
    content["model"].update(lr=0.5, contrast=1.0)
    content["data"]["train"]["init_args"]["target_params"] = {"contrast": 1.0}
    for split in ("val", "test"):
        content["data"][split]["init_args"]["target_params"] = {"contrast": 1.0}
    if save_dir is not None:
        content["trainer"]["logger"]["init_args"]["save_dir"] = save_dir
        del content["trainer"]["default_root_dir"]
    config.write_text(yaml.safe_dump(content))
    return config


def saved_contrast(checkpoint: Path) -> float:
    import torch

    module = FusionModule.load_from_checkpoint(checkpoint, map_location="cpu")
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"] > 0
    return module.fusion.contrast.item()


def test_last_checkpoint_is_the_end_of_training_and_each_run_has_its_folder(tmp_path, capsys):
    config = with_checkpoints(tiny_config(tmp_path))
    runs = []
    for _ in range(2):
        cli = main(["fit", "--config", str(config)])
        run = Path(cli.trainer.log_dir)
        runs.append(run)
        last = run / "checkpoints" / "last.ckpt"
        import torch

        assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == cli.trainer.global_step
        assert saved_contrast(last) == pytest.approx(efusion_io.read_params(run / "params.yaml")["contrast"], abs=1e-6)
        assert max(p.name for p in (run / "checkpoints").iterdir()) == "last.ckpt"  # no last-v1.ckpt
    assert [r.name for r in runs] == ["version_0", "version_1"]
    # --ckpt_path last means the newest run's last.ckpt
    cli = main(["test", "--config", str(config), "--ckpt_path", "last"])
    assert Path(cli.trainer.ckpt_path) == runs[1] / "checkpoints" / "last.ckpt"
    assert str(runs[1] / "checkpoints" / "last.ckpt") in capsys.readouterr().out


def test_run_folders_follow_default_root_dir(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    config = with_checkpoints(tiny_config(tmp_path), save_dir="runs", epochs=1)
    cli = main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "x")])
    assert Path(cli.trainer.log_dir) == tmp_path / "x" / "runs" / "run" / "version_0"
    assert (tmp_path / "x" / "runs" / "run" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("name", ["synthetic.yaml", "hdr-maps.yaml", "memorial.yaml"])
def test_shipped_configs_keep_checkpoints_in_the_run_folder(name):
    from training.callbacks import RunCheckpoint

    cli = main(["--config", str(CONFIGS / name), "--config", str(CONFIGS / "debug.yaml")], run=False)
    checkpoints = [c for c in cli.trainer.callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)]
    assert len(checkpoints) == 1 and isinstance(checkpoints[0], RunCheckpoint)
    assert checkpoints[0].dirpath is None or "version_" in str(checkpoints[0].dirpath)
    assert "dirpath" not in (CONFIGS / name).read_text()


def test_readme_commands_name_run_folders():
    readme = (CONFIGS.parent / "README.md").read_text()
    assert "runs/synthetic/checkpoints" not in readme
    assert "runs/synthetic/version_0/checkpoints/last.ckpt" in readme
