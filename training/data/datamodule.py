"""The Lightning data module: :class:`FusionDataModule`, datasets per stage and their loaders."""
from __future__ import annotations

from typing import ClassVar

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from .base import SceneDataset
from .batching import collate
from .errors import DatasetError
from .sampler import EpochSampler

__all__ = ["FusionDataModule"]


class FusionDataModule(pl.LightningDataModule):
    """Train / val / test / predict datasets for :class:`training.module.FusionModule`.

    Each stage's dataset is any :class:`SceneDataset` (in a config: ``class_path`` and
    ``init_args``). ``setup`` reads and checks the datasets the stage needs, so bad data fails
    before the first step. Training uses an :class:`EpochSampler` over this rank's share.

    Args:
        train, val, test, predict: datasets per stage (``None``: the stage has no data).
        batch_size: training batch size per process.
        eval_batch_size: batch size for validation and test (default ``batch_size``); predict
            always uses 1 (brackets can differ in size).
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle.
    """

    def __init__(
        self,
        train: SceneDataset | None = None,
        val: SceneDataset | None = None,
        test: SceneDataset | None = None,
        predict: SceneDataset | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.datasets = {"train": train, "val": val, "test": test, "predict": predict}
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"data.{name} must be a whole number >= 1, got {value!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers must be a whole number >= 0, got {num_workers!r}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)

    #: the datasets each Lightning stage reads (a class constant, never mutated)
    _STAGES: ClassVar[dict[str, tuple[str, ...]]] = {
        "fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)
    }

    def setup(self, stage: str | None = None) -> None:
        stage = str(getattr(stage, "value", stage) or "fit")  # Lightning passes a str enum
        names = self._STAGES.get(stage, ("train", "val", "test", "predict"))
        required = names[0]
        if self.datasets[required] is None:
            raise DatasetError(f"the {stage} stage needs data: set data.{required} in the config")
        for name in names:
            dataset = self.datasets[name]
            if dataset is not None:
                dataset.setup()
                if len(dataset) == 0:
                    raise DatasetError(f"data.{name} ({type(dataset).__name__}) is empty")

    def _loader(self, name: str, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(
            self.datasets[name],
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=False,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(self.datasets["train"], num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed)
        return self._loader("train", self.batch_size, sampler=sampler)

    def val_dataloader(self):
        return [] if self.datasets["val"] is None else self._loader("val", self.eval_batch_size)

    def test_dataloader(self):
        return [] if self.datasets["test"] is None else self._loader("test", self.eval_batch_size)

    def predict_dataloader(self):
        return self._loader("predict", 1)
