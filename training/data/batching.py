"""Batching training items: :func:`collate` pads brackets of different lengths with masked frames."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate

from efusion.io.errors import one_line

from .errors import DatasetError

__all__ = ["collate"]


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch items; when only some carry a ``mask``, the others get a mask of ones.

    Brackets with fewer frames than the longest of the batch are padded with black frames whose
    mask is 0 everywhere, which the fusion leaves out exactly (the result is that of the
    bracket's own frames). When only some scenes have a ``target`` (``require_target=False``),
    the batch has none: the target-free ``mef_ssim`` loss trains on it, without scores.
    """
    if any("target" in item for item in items) and not all("target" in item for item in items):
        items = [{k: v for k, v in item.items() if k != "target"} for item in items]
    counts = [item["frames"].shape[0] for item in items]
    longest = max(counts)
    if any("mask" in item for item in items) or min(counts) != longest:
        items = [dict(item) for item in items]  # the dataset may hand out cached dictionaries
        for item in items:
            frames = item["frames"]
            if "mask" not in item:
                item["mask"] = frames.new_ones((frames.shape[0], 1, *frames.shape[-2:]))
            missing = longest - frames.shape[0]
            if missing:
                item["frames"] = torch.cat([frames, frames.new_zeros((missing, *frames.shape[1:]))])
                item["mask"] = torch.cat([item["mask"], item["mask"].new_zeros((missing, *item["mask"].shape[1:]))])
    keys = set(items[0])
    for item in items[1:]:
        if set(item) != keys:
            raise DatasetError(f"items of one batch differ in keys: {sorted(keys)} vs {sorted(item)} ({item.get('name')})")
    try:
        return default_collate(items)
    except RuntimeError as error:
        names = [item.get("name") for item in items]
        raise DatasetError(
            f"cannot batch scenes {names}: {one_line(error)} (frames of different sizes need a crop, gray and colour "
            "scenes batch_size 1)"
        ) from None
