"""Joint augmentation of a training item: one random crop and flip for frames, target and mask."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["augment"]


def augment(item: dict[str, Any], rng: torch.Generator, crop: tuple[int, int] | None, flip: bool) -> dict[str, Any]:
    """The same random crop (size ``crop``, ``[h, w]``) and horizontal flip (with probability 1/2
    when ``flip``) of every tensor of ``item`` (frames ``[N, C, H, W]``, target ``[C, H, W]``,
    mask ``[N, 1, H, W]``), with torchvision transforms v2; other entries pass through. The draw
    depends on ``rng`` alone (the global generator is left as it was)."""
    if crop is None and not flip:
        return item
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    transforms = []
    if crop is not None:
        transforms.append(v2.RandomCrop(crop))
    if flip:
        transforms.append(v2.RandomHorizontalFlip(0.5))
    wrapped = {}
    for key, value in item.items():
        if key == "mask":
            wrapped[key] = tv_tensors.Mask(value)
        elif isinstance(value, Tensor):
            wrapped[key] = tv_tensors.Image(value)
        else:
            wrapped[key] = value
    # v2 draws its parameters from the global generator: seed a private copy of it from the
    # item's key so crops depend on (seed, epoch, index) alone, and leave the global RNG as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (), generator=rng)))
        out = v2.Compose(transforms)(wrapped)
    return {k: v.as_subclass(Tensor) if isinstance(v, Tensor) else v for k, v in out.items()}
