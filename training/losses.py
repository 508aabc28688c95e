"""Losses and image-quality scores for tuning the fusion against target images.

- :func:`psnr`: peak signal-to-noise ratio for a peak of 1.
- :func:`ssim`: structural similarity, Wang, Bovik, Sheikh & Simoncelli, "Image Quality
  Assessment: From Error Visibility to Structural Similarity", IEEE TIP 13(4), 2004,
  doi:10.1109/TIP.2003.819861 (Gaussian window 11 x 11, sigma 1.5, K1 = 0.01, K2 = 0.03, the
  paper's settings), per channel and averaged.
- :class:`FusionLoss`: ``l1``, ``mse``, ``ssim`` (1 - SSIM), ``mix`` (Zhao, Gallo, Frosio &
  Kautz, "Loss Functions for Image Restoration with Neural Networks", IEEE TCI 3(1), 2017,
  doi:10.1109/TCI.2016.2644865: ``alpha (1 - SSIM) + (1 - alpha) L1`` with alpha = 0.84) or
  ``mef_ssim`` (1 - MEF-SSIM of the fused image against its own bracket, no target needed; Ma,
  Zeng & Wang, IEEE TIP 24(11), 2015, via :mod:`efusion.metrics`).

Every function takes batches ``[B, C, H, W]`` and an optional validity map ``[B, 1, H, W]``
(1 where a pixel counts, e.g. not a frame's padded border) and returns per-image values ``[B]``
unless it says otherwise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOSSES", "FusionLoss", "psnr", "ssim", "ssim_map"]

#: names accepted by :class:`FusionLoss`
LOSSES = ("l1", "mse", "ssim", "mix", "mef_ssim")

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _masked_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``[B, C, H, W]`` over C, H, W per image, counting only valid pixels."""
    if valid is None:
        return values.mean(dim=(1, 2, 3))
    valid = valid.to(values.dtype).expand_as(values)
    return (values * valid).sum(dim=(1, 2, 3)) / valid.sum(dim=(1, 2, 3)).clamp(min=1.0)


def psnr(image: Tensor, target: Tensor, valid: Tensor | None = None, *, eps: float = 1e-12) -> Tensor:
    """PSNR in dB for a peak value of 1: ``10 log10(1 / MSE)`` per image, ``[B]``."""
    mse = _masked_mean((image - target).square(), valid)
    return 10.0 * torch.log10(1.0 / mse.clamp(min=eps))


def _gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    taps = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    window = torch.exp(-0.5 * (taps / sigma) ** 2)
    return window / window.sum()


def _filter(x: Tensor, window: Tensor) -> Tensor:
    """Separable 'valid' filtering of every channel of ``[B, C, H, W]``."""
    channels = x.shape[1]
    x = F.conv2d(x, window.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, window.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def ssim_map(image: Tensor, target: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Local SSIM index ``[B, C, H - w + 1, W - w + 1]`` (Wang et al. 2004, Eq. 13).

    The window is 11 pixels, or the largest odd size that fits smaller images.
    """
    size = min(_SSIM_WINDOW, image.shape[-2], image.shape[-1])
    size -= 1 - size % 2
    window = _gaussian_window(size, _SSIM_SIGMA, image)
    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _filter(image, window), _filter(target, window)
    var_x = _filter(image * image, window) - mu_x.square()
    var_y = _filter(target * target, window) - mu_y.square()
    cov = _filter(image * target, window) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))


def ssim(image: Tensor, target: Tensor, valid: Tensor | None = None, *, data_range: float = 1.0) -> Tensor:
    """Mean SSIM per image, ``[B]``; with ``valid``, windows centred on invalid pixels are left out."""
    index = ssim_map(image, target, data_range=data_range)
    if valid is not None:
        crop_h = (valid.shape[-2] - index.shape[-2]) // 2
        crop_w = (valid.shape[-1] - index.shape[-1]) // 2
        valid = valid[..., crop_h : crop_h + index.shape[-2], crop_w : crop_w + index.shape[-1]]
    return _masked_mean(index, valid)


class FusionLoss(nn.Module):
    """Loss between a fused batch and its targets (or its brackets, for ``mef_ssim``).

    Args:
        name: one of :data:`LOSSES`.
        alpha: weight of ``1 - SSIM`` in ``mix`` (Zhao et al. 2017 use 0.84).

    ``forward(fused [B, C, H, W], target [B, C, H, W] or None, frames [B, N, C, H, W],
    valid [B, 1, H, W] or None)`` returns the batch mean, a 0-dim tensor.
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

    def forward(self, fused: Tensor, target: Tensor | None, frames: Tensor, valid: Tensor | None = None) -> Tensor:
        if self.mef_ssim is not None:
            return self.mef_ssim(fused, frames).mean()
        if target is None:
            raise ValueError(f"loss {self.name!r} needs a target image; the batch has none (use loss: mef_ssim)")
        if self.name == "l1":
            per_image = _masked_mean((fused - target).abs(), valid)
        elif self.name == "mse":
            per_image = _masked_mean((fused - target).square(), valid)
        elif self.name == "ssim":
            per_image = 1.0 - ssim(fused, target, valid)
        else:
            l1 = _masked_mean((fused - target).abs(), valid)
            per_image = self.alpha * (1.0 - ssim(fused, target, valid)) + (1.0 - self.alpha) * l1
        return per_image.mean()

    def extra_repr(self) -> str:
        return f"name={self.name!r}" + (f", alpha={self.alpha}" if self.name == "mix" else "")
