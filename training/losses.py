"""Losses and image-quality scores for tuning the fusion against target images.

- :func:`psnr`: :func:`efusion.metrics.psnr` for a peak of 1 over valid pixels, with the MSE
  floored so identical images score a finite 120 dB.
- :func:`ssim`: :func:`efusion.metrics.ssim` (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 13(4),
  2004, doi:10.1109/TIP.2003.819861; 11 x 11 Gaussian window, sigma 1.5), with invalid pixels
  taken from the target so they count as matching.
- :class:`FusionLoss`: ``l1``, ``mse``, ``ssim`` (1 - SSIM), ``mix`` (Zhao, Gallo, Frosio &
  Kautz, "Loss Functions for Image Restoration with Neural Networks", IEEE TCI 3(1), 2017,
  doi:10.1109/TCI.2016.2644865: ``alpha (1 - SSIM) + (1 - alpha) L1`` with alpha = 0.84) or
  ``mef_ssim`` (1 - MEF-SSIM of the fused image against its own bracket, no target needed; Ma,
  Zeng & Wang, IEEE TIP 24(11), 2015, via :mod:`efusion.metrics`).

Every function takes batches ``[B, C, H, W]`` (at least 11 x 11 pixels for SSIM) and an optional
validity map ``[B, 1, H, W]`` (1 where a pixel counts, e.g. not a frame's padded border) and
returns per-image values ``[B]`` unless it says otherwise.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from efusion import metrics
from efusion._util import masked_mean

__all__ = ["LOSSES", "FusionLoss", "psnr", "ssim"]

#: names accepted by :class:`FusionLoss`
LOSSES = ("l1", "mse", "ssim", "mix", "mef_ssim")


def psnr(image: Tensor, target: Tensor, valid: Tensor | None = None, *, eps: float = 1e-12) -> Tensor:
    """PSNR in dB for a peak value of 1, ``10 log10(1 / MSE)`` per image (``[B]``): :func:`efusion.metrics.psnr`
    over the valid pixels, with the MSE floored at ``eps`` (120 dB), so identical images give a
    finite score that averages."""
    return metrics.psnr(image, target, valid=valid, mse_floor=eps)


def ssim(image: Tensor, target: Tensor, valid: Tensor | None = None, *, gray: bool = True) -> Tensor:
    """SSIM per image, ``[B]``: :func:`efusion.metrics.ssim` (on luma with ``gray=True``, its
    default and ``efusion eval``'s; each channel averaged with ``gray=False``). Invalid pixels
    are replaced by the target's, so windows over them count as matching there."""
    if valid is not None:
        image = torch.where(valid > 0, image, target)
    return metrics.ssim(image, target, gray=gray)


class FusionLoss(nn.Module):
    """Loss between a fused batch and its targets (or its brackets, for ``mef_ssim``).

    Args:
        name: one of :data:`LOSSES`.
        alpha: weight of ``1 - SSIM`` in ``mix`` (Zhao et al. 2017 use 0.84).

    ``forward(fused [B, C, H, W], target [B, C, H, W] or None, frames [B, N, C, H, W],
    valid [B, 1, H, W] or None, frame_mask [B, N, 1, H, W] or None)`` returns the batch mean, a
    0-dim tensor. The SSIM terms score every colour channel (``gray=False``), so colour errors
    count. ``mef_ssim`` scores each image against the frames ``frame_mask`` does not remove
    entirely (a batch of brackets of different lengths is padded with such frames).
    """

    def __init__(self, name: str = "l1", alpha: float = 0.84) -> None:
        super().__init__()
        if name not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")
        if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        self.name = name
        self.alpha = float(alpha)
        self.mef_ssim = None
        if name == "mef_ssim":
            from efusion.metrics import MEFSSIMLoss

            self.mef_ssim = MEFSSIMLoss(reduction="none")

    @property
    def needs_target(self) -> bool:
        return self.name != "mef_ssim"

    def forward(
        self, fused: Tensor, target: Tensor | None, frames: Tensor, valid: Tensor | None = None,
        frame_mask: Tensor | None = None,
    ) -> Tensor:
        if self.mef_ssim is not None:
            if frame_mask is not None:
                present = frame_mask.flatten(2).amax(dim=2) > 0  # [B, N]
                if not bool(present.all()):
                    scores = [self.mef_ssim(fused[i : i + 1], frames[i : i + 1, present[i]]) for i in range(len(fused))]
                    return torch.cat(scores).mean()
            return self.mef_ssim(fused, frames).mean()
        if target is None:
            raise ValueError(f"loss {self.name!r} needs a target image; the batch has none (use loss: mef_ssim)")
        if self.name == "l1":
            per_image = masked_mean((fused - target).abs(), valid)
        elif self.name == "mse":
            per_image = masked_mean((fused - target).square(), valid)
        elif self.name == "ssim":
            per_image = 1.0 - ssim(fused, target, valid, gray=False)
        else:
            l1 = masked_mean((fused - target).abs(), valid)
            per_image = self.alpha * (1.0 - ssim(fused, target, valid, gray=False)) + (1.0 - self.alpha) * l1
        return per_image.mean()

    def extra_repr(self) -> str:
        return f"name={self.name!r}" + (f", alpha={self.alpha}" if self.name == "mix" else "")
