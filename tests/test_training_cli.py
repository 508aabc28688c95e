"""``python -m training`` as a new user meets it (issue 16): export, config errors, where runs go."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pl = pytest.importorskip("pytorch_lightning")

from efusion import io as efusion_io  # noqa: E402
from training.cli import main  # noqa: E402
from training.data import FusionDataModule, SyntheticScenes  # noqa: E402
from training.module import FusionModule  # noqa: E402

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
            "accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(tmp_path),
            "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path), "name": "run"}},
            "callbacks": [{"class_path": "training.callbacks.ParameterTrajectories"}],
        },
        "model": {"learnable": ["contrast"], "lr": 0.05, **model},
        "data": {
            "train": {"class_path": "training.data.SyntheticScenes", "init_args": {"length": 2, "size": 24}},
            "val": {"class_path": "training.data.SyntheticScenes", "init_args": {"length": 2, "size": 24, "seed": 99}},
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
