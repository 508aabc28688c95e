"""The training sampler: :class:`EpochSampler` hands the epoch to the dataset with every index."""
from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler

__all__ = ["EpochSampler"]


class EpochSampler(DistributedSampler):
    """A :class:`~torch.utils.data.DistributedSampler` that yields ``(index, epoch)`` pairs.

    Shuffling depends on ``(seed, epoch)`` only (as in ``DistributedSampler``), and the epoch
    travels with each index so a :class:`SceneDataset` draws its crops from ``(seed, epoch,
    index)``. Lightning calls :meth:`set_epoch` before every epoch, restores the epoch when it
    resumes, and keeps a ``DistributedSampler`` it is given instead of replacing it; with one
    process use ``num_replicas=1, rank=0``.
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        for index in super().__iter__():
            yield (index, epoch)
