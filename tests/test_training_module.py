"""The Lightning module, losses, export, prediction writer and command line (training.*)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

import efusion
import efusion.quality
from efusion import cli as efusion_cli
from efusion import io as efusion_io
from efusion import synthetic
from training import losses
from training.callbacks import FusedImageWriter
from training.cli import main
from training.data import FusionDataModule, SceneFolders, SyntheticScenes
from training.module import FusionModule, export, export_checkpoint

pl = pytest.importorskip("pytorch_lightning")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: configs that only make sense on top of another (or, predict.yaml, for another subcommand)
OVERLAYS = ("debug.yaml", "ddp.yaml", "learn-depth.yaml", "mef-ssim.yaml", "predict.yaml")


def _trainer(**kwargs) -> pl.Trainer:
    options = {
        "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


class TestLosses:
    def test_psnr(self):
        a = torch.zeros(2, 3, 8, 8)
        b = a + 0.1
        torch.testing.assert_close(losses.psnr(a, b), torch.full((2,), 20.0))

    def test_ssim(self):
        x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(losses.ssim(x, x), torch.ones(2))
        noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        assert float(losses.ssim(noisy, x).max()) < 0.9

    def test_ssim_is_efusion_quality_and_ignores_invalid_pixels(self):
        g = torch.Generator().manual_seed(2)
        x, y = torch.rand(2, 3, 16, 24, generator=g), torch.rand(2, 3, 16, 24, generator=g)
        torch.testing.assert_close(losses.ssim(x, y), efusion.quality.ssim(x, y))
        valid = torch.zeros(2, 1, 16, 24)
        valid[..., :, :12] = 1
        z = y.clone()
        z[..., :12] = x[..., :12]  # equal to x wherever x is valid
        torch.testing.assert_close(losses.ssim(x, z, valid), torch.ones(2))
        torch.testing.assert_close(losses.psnr(x, z, valid), torch.full((2,), 120.0))

    def test_masked_loss_ignores_invalid_pixels(self):
        fused, target = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
        target[..., 0, 0] = 1.0
        valid = torch.ones(1, 1, 4, 4)
        valid[..., 0, 0] = 0
        loss = losses.FusionLoss("l1")
        assert float(loss(fused, target, None, valid)) == 0.0
        assert float(loss(fused, target, None)) > 0

    @pytest.mark.parametrize("name", losses.LOSSES)
    def test_every_loss_has_gradients(self, name):
        frames = synthetic.bracket(48, 48, seed=1)[None]
        target = frames.mean(1)
        layer = efusion.Fusion(learnable=True)
        value = losses.FusionLoss(name)(layer(frames), target, frames)
        value.backward()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())

    def test_mef_ssim_ignores_padding_frames(self):
        # a batch of brackets of different lengths is padded with masked-out frames (collate);
        # MEF-SSIM, which has no mask, must score each image against its own frames only
        short, long = synthetic.bracket(48, 48, n_frames=2, seed=1), synthetic.bracket(48, 48, n_frames=3, seed=2)
        frames = torch.stack([torch.cat([short, torch.zeros_like(short[:1])]), long])
        mask = torch.ones(2, 3, 1, 48, 48)
        mask[0, 2] = 0
        fused = efusion.exposure_fusion(frames, mask=mask)
        from efusion.metrics import mef_ssim

        expected = 1 - (mef_ssim(fused[:1], short[None]) + mef_ssim(fused[1:], long[None])) / 2
        value = losses.FusionLoss("mef_ssim")(fused, None, frames, mask.amax(dim=1), frame_mask=mask)
        torch.testing.assert_close(value, expected.squeeze(), rtol=0, atol=1e-6)

    def test_exception(self):
        with pytest.raises(ValueError, match="loss must be one of"):
            losses.FusionLoss("l3")
        with pytest.raises(ValueError, match="alpha"):
            losses.FusionLoss("mix", alpha=2)
        with pytest.raises(ValueError, match="needs a target"):
            losses.FusionLoss("l1")(torch.rand(1, 3, 4, 4), None, torch.rand(1, 2, 3, 4, 4))


class TestModule:
    def test_smoke(self):
        module = FusionModule(learnable=["contrast", "mu"])
        frames = SyntheticScenes(length=1, size=24)[0]["frames"][None]
        torch.testing.assert_close(module(frames), efusion.exposure_fusion(frames))
        assert set(module.parameter_values()) == {"contrast", "mu"}
        assert module.hparams.learnable == ["contrast", "mu"]

    def test_exception(self):
        with pytest.raises(ValueError, match="optimizer"):
            FusionModule(optimizer="adagrad")
        with pytest.raises(ValueError, match="first-order"):
            FusionModule(optimizer="lbfgs", nonfinite="skip")
        with pytest.raises(ValueError, match="lr_scale"):
            FusionModule(lr_scale={"gamma": 2.0})
        with pytest.raises(ValueError, match="nonfinite"):
            FusionModule(nonfinite="ignore")
        with pytest.raises(ValueError, match="loss"):
            FusionModule(loss="l3")

    def test_init_params(self, tmp_path):
        efusion_io.write_params(tmp_path / "p.yaml", {"contrast": 0.3, "mu": 0.6, "levels": -2})
        module = FusionModule(init_params=str(tmp_path / "p.yaml"))
        assert module.fusion.contrast.item() == pytest.approx(0.3)
        assert module.fusion.mu.item() == pytest.approx(0.6)
        assert module.fusion.relative_levels and module.fusion.levels.item() == -2

    def test_fit_improves_and_logs(self):
        module = FusionModule(learnable=["contrast", "saturation", "exposure", "mu"], lr=0.05, export_path=None)
        params = {"contrast": 0.5, "saturation": 1.5, "exposure": 2.0, "mu": 0.55}
        dm = FusionDataModule(
            train=SyntheticScenes(length=4, size=32, target_params=params),
            val=SyntheticScenes(length=2, size=32, target_params=params, seed=50),
            batch_size=4,
        )
        trainer = _trainer(max_steps=12, limit_val_batches=1)
        before = trainer.validate(module, dm, verbose=False)[0]["val/loss"]
        trainer.fit(module, dm)
        assert {"param/contrast", "param/mu", "train/loss", "train/psnr", "train/ssim"} <= set(trainer.logged_metrics)
        metrics = trainer.validate(module, dm, verbose=False)[0]
        assert metrics["val/loss"] < before
        assert {"val/psnr", "val/ssim", "val/psnr_mertens", "val/ssim_mertens"} <= set(metrics)


class _PoisonedScenes(SyntheticScenes):
    """Scenes whose item ``poisoned`` has a NaN pixel in its first frame."""

    def __init__(self, poisoned: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.poisoned = poisoned

    def _load(self, index, rng):
        item = super()._load(index, rng)
        if index == self.poisoned:
            item["frames"] = item["frames"].clone()
            item["frames"][0, :, 3, 3] = float("nan")
        return item


class TestNonFinite:
    def _data(self):
        return FusionDataModule(train=_PoisonedScenes(poisoned=1, length=4, size=24), batch_size=1, seed=0)

    def test_raise_names_the_step_and_scene(self):
        module = FusionModule(lr=0.05, export_path=None)
        with pytest.raises(FloatingPointError, match=r"non-finite value in the loss and the gradient of .*scene1.*nonfinite=skip"):
            _trainer(max_epochs=1).fit(module, self._data())
        assert all(math.isfinite(v) for v in module.parameter_values().values())

    def test_skip_leaves_parameters_and_optimiser_state_alone(self):
        module = FusionModule(lr=0.05, nonfinite="skip", export_path=None)
        history = []

        class Watch(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                history.append((batch["name"][0], dict(pl_module.parameter_values())))

        _trainer(max_epochs=1, callbacks=[Watch()]).fit(module, self._data())
        assert module.skipped_steps == 1
        names = [name for name, _ in history]
        poisoned = names.index("scene1")
        before = history[poisoned - 1][1] if poisoned else FusionModule(export_path=None).parameter_values()
        assert history[poisoned][1] == before  # the skipped step changed nothing
        assert history[-1][1] != before  # the others still trained
        assert all(math.isfinite(v) for v in history[-1][1].values())


class TestExport:
    def test_export_is_read_by_efusion_fuse(self, tmp_path):
        module = FusionModule(contrast=0.7, saturation=1.3, exposure=2.0, mu=0.45, levels=-2.5)
        path = tmp_path / "tuned.yaml"
        export(module, path)
        params = efusion_io.read_params(path)
        assert params["contrast"] == pytest.approx(0.7) and params["levels"] == pytest.approx(-2.5)
        frames = synthetic.bracket(24, 32, seed=2)
        for n, frame in enumerate(frames):
            efusion_io.write_image(tmp_path / f"{n}.png", frame)
        assert efusion_cli.main(["fuse", str(tmp_path / "0.png"), str(tmp_path / "1.png"), str(tmp_path / "2.png"),
                                 "-o", str(tmp_path / "fused.png"), "--params", str(path), "--quiet"]) == 0

    def test_depth_is_kept_in_range(self):
        module = FusionModule(levels=None)
        with torch.no_grad():
            module.fusion.levels.fill_(-0.4)  # past the full depth
        assert module.exported_params()["levels"] == -1.0
        module = FusionModule(levels=3.0)
        with torch.no_grad():
            module.fusion.levels.fill_(0.6)
        assert module.exported_params()["levels"] == 1.0

    def test_from_checkpoint(self, tmp_path):
        module = FusionModule(learnable=["contrast"], export_path=None)
        dm = FusionDataModule(train=SyntheticScenes(length=2, size=24, target_params={"contrast": 0.5}), batch_size=2)
        trainer = _trainer(max_steps=2, enable_checkpointing=True, default_root_dir=str(tmp_path))
        trainer.fit(module, dm)
        ckpt = next(tmp_path.rglob("*.ckpt"))
        params = export_checkpoint(ckpt, tmp_path / "p.json")
        assert params["contrast"] == pytest.approx(module.fusion.contrast.item())
        assert efusion_io.read_params(tmp_path / "p.json")["contrast"] == pytest.approx(params["contrast"])
        assert main(["export", str(ckpt), "-o", str(tmp_path / "q.yaml")]) == 0
        assert main(["export", str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "r.yaml")]) == 1

    def test_another_runs_checkpoint_is_refused(self, tmp_path):
        # `--ckpt_path last` of a base config finds an overlay's run there (same checkpoint folder)
        dm = FusionDataModule(train=SyntheticScenes(length=2, size=48), test=SyntheticScenes(length=2, size=48, seed=9),
                              batch_size=2)
        # the same checkpoint callback in every trainer, as the CLI's configs have (else Lightning warns
        # that the callbacks which wrote the checkpoint are missing)
        checkpointing = {"enable_checkpointing": True, "default_root_dir": str(tmp_path)}
        _trainer(max_steps=1, **checkpointing).fit(
            FusionModule(learnable=["contrast", "mu"], loss="mef_ssim", export_path=None), dm)
        ckpt = next(tmp_path.rglob("*.ckpt"))
        for other, named in (({"learnable": ["contrast", "mu"], "loss": "l1"}, "loss='mef_ssim' there, 'l1' here"),
                             ({"learnable": ["contrast"], "loss": "mef_ssim"}, "learnable=['contrast', 'mu'] there"),
                             ({"learnable": ["contrast", "mu"], "loss": "mef_ssim", "preset": "opencv"}, "preset=")):
            with pytest.raises(ValueError, match="belongs to another run") as error:
                _trainer(**checkpointing).test(FusionModule(export_path=None, **other), dm, ckpt_path=ckpt,
                                               verbose=False)
            assert named in str(error.value)
        # the same run (learnable in another order) resumes
        results = _trainer(**checkpointing).test(
            FusionModule(learnable=["mu", "contrast"], loss="mef_ssim", export_path=None), dm, ckpt_path=ckpt,
            verbose=False)
        assert math.isfinite(results[0]["test/psnr"])

    def test_export_of_a_file_that_is_not_a_checkpoint_names_it(self, tmp_path, capsys):
        (tmp_path / "text.ckpt").write_text("not a checkpoint")
        torch.save({"state_dict": {"weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
        torch.save({"pytorch-lightning_version": pl.__version__, "state_dict": {"net.weight": torch.zeros(2)},
                    "hyper_parameters": {}}, tmp_path / "network.ckpt")
        for name in ("text.ckpt", "other.ckpt", "network.ckpt"):
            assert main(["export", str(tmp_path / name), "-o", str(tmp_path / "p.yaml")]) == 1
            error = capsys.readouterr().err
            assert f"{tmp_path / name}: " in error and "FusionModule" in error, error
        assert not (tmp_path / "p.yaml").exists()

    def test_checkpoint_does_not_need_the_init_params_file(self, tmp_path):
        # a run started from a params file (per-channel mu/sigma, a depth, another preset): its
        # checkpoint must rebuild the same layer after the file is gone (moved, another machine)
        start = tmp_path / "start.yaml"
        efusion_io.write_params(start, {"mu": [0.45, 0.5, 0.55], "sigma": [0.2, 0.25, 0.2], "levels": -2,
                                        "preset": "opencv", "contrast": 0.8})
        module = FusionModule(init_params=str(start), learnable=["contrast", "mu"], export_path=None)
        dm = FusionDataModule(train=SyntheticScenes(length=2, size=24), batch_size=2)
        trainer = _trainer(max_steps=2, enable_checkpointing=True, default_root_dir=str(tmp_path))
        trainer.fit(module, dm)
        expected = module.exported_params()
        assert expected["preset"] == "opencv" and expected["levels"] == -2 and len(expected["mu"]) == 3
        start.unlink()
        ckpt = next(tmp_path.rglob("*.ckpt"))
        assert export_checkpoint(ckpt, tmp_path / "p.yaml") == expected
        assert FusionModule.load_from_checkpoint(ckpt).exported_params() == expected


def _write_scene(folder: Path, seed: int) -> torch.Tensor:
    folder.mkdir(parents=True)
    frames = synthetic.bracket(20, 28, seed=seed)
    for n, frame in enumerate(frames):
        efusion_io.write_image(folder / f"{n}.png", frame)
    return frames


class TestPredict:
    def test_writes_each_bracket_once_and_resumes(self, tmp_path):
        for seed in range(3):
            _write_scene(tmp_path / "in" / f"scene{seed}", seed)
        efusion_io.write_params(tmp_path / "p.yaml", {"contrast": 0.5, "exposure": 1.5})
        module = FusionModule(init_params=str(tmp_path / "p.yaml"))
        dm = FusionDataModule(predict=SceneFolders(root=str(tmp_path / "in"), require_target=False, cache=False))
        writer = FusedImageWriter(str(tmp_path / "out"))
        _trainer(callbacks=[writer]).predict(module, dm, return_predictions=False)
        written = sorted(p.name for p in (tmp_path / "out").iterdir())
        assert written == ["scene0.png", "scene1.png", "scene2.png"]
        fused, _ = efusion_io.read_image(tmp_path / "out" / "scene1.png")
        stack = efusion_io.read_bracket(sorted((tmp_path / "in" / "scene1").iterdir())).frames
        expected = efusion.exposure_fusion(stack, contrast=0.5, exposure=1.5).clamp(0, 1)
        torch.testing.assert_close(fused, expected, atol=0.5 / 255 + 1e-6, rtol=0)
        # a second run skips what exists
        writer = FusedImageWriter(str(tmp_path / "out"))
        _trainer(callbacks=[writer]).predict(module, dm, return_predictions=False)
        assert writer.written == [] and len(writer.skipped) == 3


class TestCLI:
    def _config(self, tmp_path: Path, **model) -> Path:
        config = {
            "seed_everything": 0,
            "trainer": {
                "accelerator": "cpu", "devices": 1, "max_epochs": 2, "enable_progress_bar": False, "log_every_n_steps": 1,
                "enable_model_summary": False, "default_root_dir": str(tmp_path),
                "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path), "name": "run"}},
                "callbacks": [{"class_path": "training.callbacks.ParameterTrajectories"}],
            },
            "model": {"learnable": ["contrast", "exposure"], "lr": 0.05, **model},
            "data": {
                "train": {"class_path": "training.data.SyntheticScenes", "init_args": {"length": 4, "size": 32, "crop": 24}},
                "val": {"class_path": "training.data.SyntheticScenes", "init_args": {"length": 2, "size": 24, "seed": 99}},
                "test": {"class_path": "training.data.SyntheticScenes", "init_args": {"length": 2, "size": 24, "seed": 199}},
                "batch_size": 2,
            },
        }
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def test_fit_saves_config_params_and_trajectories(self, tmp_path):
        config = self._config(tmp_path)
        cli = main(["fit", "--config", str(config), "--model.lr", "0.02"])
        run = Path(cli.trainer.log_dir)
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["model"]["lr"] == 0.02  # later flags override files, and the resolved config is saved
        params = efusion_io.read_params(run / "params.yaml")
        assert params["contrast"] == pytest.approx(cli.model.fusion.contrast.item())
        assert (run / "trajectories.png").stat().st_size > 0
        assert (run / "trajectories.csv").read_text().startswith("step,contrast,exposure")
        results = main(["test", "--config", str(config), "--ckpt_path", str(next((run / "checkpoints").glob("*.ckpt")))])
        assert "test/psnr_mertens" in results.trainer.callback_metrics

    @pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in OVERLAYS))
    def test_configs_parse(self, name):
        cli = main(["--config", str(CONFIGS / name), "--config", str(CONFIGS / "learn-depth.yaml"),
                    "--config", str(CONFIGS / "debug.yaml")], run=False)
        assert isinstance(cli.model, FusionModule) and "levels" in cli.model.fusion.learnable
        assert cli.trainer.fast_dev_run

    def test_per_channel_mu_and_sigma_in_a_config(self):
        # efusion.Fusion, params files and init_params take one mu / sigma per channel; so must
        # the config's model.mu / model.sigma
        cli = main(["--config", str(CONFIGS / "synthetic.yaml"), "--config", str(CONFIGS / "debug.yaml"),
                    "--model.mu", "[0.45, 0.5, 0.55]", "--model.sigma", "[0.2, 0.25, 0.2]"], run=False)
        assert cli.model.fusion.mu.tolist() == pytest.approx([0.45, 0.5, 0.55])
        assert cli.model.fusion.sigma.tolist() == pytest.approx([0.2, 0.25, 0.2])

    def test_debug_overlay_runs(self, tmp_path):
        config = self._config(tmp_path)
        cli = main(["fit", "--config", str(config), "--config", str(CONFIGS / "debug.yaml")])
        assert cli.trainer.global_step == 1
        assert not any(tmp_path.rglob("params.yaml"))  # a smoke run writes nothing

    def test_bad_data_fails_at_setup_naming_the_folder(self, tmp_path, capsys):
        config = self._config(tmp_path)
        _write_scene(tmp_path / "scenes" / "s1", 0)  # frames but no reference
        status = main(["fit", "--config", str(config), "--data.train", "training.data.SceneFolders",
                       "--data.train.root", str(tmp_path / "scenes")])
        assert status == 2  # one line, no traceback (test_training_cli)
        assert "s1: no reference image" in capsys.readouterr().err

    def test_predict_subcommand(self, tmp_path):
        for seed in range(2):
            _write_scene(tmp_path / "in" / f"b{seed}", seed)
        efusion_io.write_params(tmp_path / "p.yaml", {"contrast": 0.5})
        main(["predict", "--config", str(CONFIGS / "predict.yaml"), "--model.init_params", str(tmp_path / "p.yaml"),
              "--data.predict.init_args.root", str(tmp_path / "in"), "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", str(tmp_path),
              "--trainer.callbacks.init_args.output_dir", str(tmp_path / "out")])
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b0.png", "b1.png"]
