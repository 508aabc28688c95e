"""Full-reference image quality: PSNR and SSIM of an image against a reference image.

Where a ground truth exists (a synthetic scene, a reference rendering), these say how close a
fusion comes to it; :func:`efusion.metrics.mef_ssim` is the no-reference measure for everything
else. ``efusion eval --reference`` prints both.

:func:`ssim` is the standard index of Wang et al. (2004) as their reference code ``ssim_index.m``
computes it (11 x 11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, mean over the valid
region, no downsampling), on luma by default.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._util import gaussian_taps, is_positive_number, masked_mean
from ..color import rgb_to_gray

__all__ = ["psnr", "ssim"]


def _check_pair(image: Tensor, reference: Tensor, data_range: float) -> None:
    for name, value in (("image", image), ("reference", reference)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor in [0, data_range], got dtype {value.dtype}")
    if image.dtype != reference.dtype or image.device != reference.device:
        raise TypeError(
            f"image and reference must share dtype and device, got {image.dtype} on {image.device} "
            f"and {reference.dtype} on {reference.device}"
        )
    if image.ndim not in (3, 4):
        raise ValueError(f"image must be [B, C, H, W] or [C, H, W], got shape {tuple(image.shape)}")
    if image.shape != reference.shape:
        raise ValueError(f"image and reference must have the same shape, got {tuple(image.shape)} and {tuple(reference.shape)}")
    if not is_positive_number(data_range):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range!r}")


def psnr(
    image: Tensor,
    reference: Tensor,
    *,
    data_range: float = 1.0,
    valid: Tensor | None = None,
    mse_floor: float = 0.0,
) -> Tensor:
    r"""Peak signal-to-noise ratio in dB, over all channels and pixels (the one PSNR of efusion).

    :math:`10 \log_{10}(L^2 / \max(\mathrm{MSE}, \text{mse\_floor}))` with :math:`L` =
    ``data_range`` (the textbook definition, e.g. Wang & Bovik, "Mean squared error: love it or
    leave it?", IEEE Signal Processing Magazine 26(1), 2009, doi:10.1109/MSP.2008.930649).
    With the default ``mse_floor=0`` identical images give ``inf``; a floor > 0 caps the score
    at :math:`10 \log_{10}(L^2 / \text{mse\_floor})` so that scores of identical images stay
    finite and can be averaged (training logs PSNR with ``mse_floor=1e-12``, i.e. at most 120 dB).

    Args:
        image: the image to score, values in [0, data_range].
        reference: the ground truth, same shape.
        data_range: value of full white.
        valid: optional validity map, ``[B, 1, H, W]`` (or the images' shape): only pixels where
            it is non-zero enter the MSE (an image without valid pixels has MSE 0).
        mse_floor: lower bound of the MSE, >= 0.

    Returns:
        ``[B]`` (0-dim for an unbatched input), in the input's dtype.

    Shape:
        - image, reference: :math:`(B, C, H, W)` or :math:`(C, H, W)`
        - valid: :math:`(B, 1, H, W)` or :math:`(1, H, W)`, or the images' shape
        - output: :math:`(B)` or :math:`()`

    Example:
        >>> reference = torch.rand(3, 32, 32)
        >>> psnr(reference, reference)
        tensor(inf)
    """
    _check_pair(image, reference, data_range)
    if isinstance(mse_floor, bool) or not isinstance(mse_floor, (int, float)) or not math.isfinite(mse_floor) or mse_floor < 0:
        raise ValueError(f"mse_floor must be a finite number >= 0, got {mse_floor!r}")
    squared_error = (image - reference).square()
    if valid is None:
        mse = squared_error.mean(dim=(-3, -2, -1))
    else:
        if not isinstance(valid, Tensor):
            raise TypeError(f"valid must be a torch.Tensor or None, got {type(valid).__name__}")
        if valid.ndim != image.ndim or valid.shape[-3] not in (1, image.shape[-3]) or valid.shape[-2:] != image.shape[-2:] or valid.shape[:-3] != image.shape[:-3]:
            raise ValueError(
                f"valid must have shape {tuple(image.shape[:-3]) + (1,) + tuple(image.shape[-2:])} "
                f"or {tuple(image.shape)}, got {tuple(valid.shape)}"
            )
        if image.ndim == 3:
            mse = masked_mean(squared_error.unsqueeze(0), valid.unsqueeze(0))[0]
        else:
            mse = masked_mean(squared_error, valid)
    if mse_floor > 0:
        mse = mse.clamp(min=mse_floor)
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim(
    image: Tensor,
    reference: Tensor,
    *,
    data_range: float = 1.0,
    window_size: int = 11,
    window_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    gray: bool = True,
) -> Tensor:
    r"""Structural similarity index (SSIM) of an image against a reference (Wang et al. 2004).

    .. math::

        \mathrm{SSIM}(x, y) = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
        {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)}, \quad
        C_1 = (K_1 L)^2, \; C_2 = (K_2 L)^2,

    with means and (co)variances under a ``window_size`` x ``window_size`` Gaussian window
    (standard deviation ``window_sigma``, normalised), averaged over the positions where the
    window fits inside the image ("valid" region). These are the defaults of the authors'
    ``ssim_index.m`` (2003/2004 version, which does not downsample large images).

    Args:
        image: the image to score, values in [0, data_range].
        reference: the ground truth, same shape.
        data_range: value of full white, :math:`L`.
        window_size: side of the Gaussian window, odd.
        window_sigma: standard deviation of the window, in pixels.
        k1, k2: stabilising constants.
        gray: if True (default), C = 3 images are converted to luma with MATLAB's ``rgb2gray``
            weights (:data:`efusion.color.MATLAB_GRAY`) and scored once, as the
            reference code scores gray images; if False, each channel is scored on its own and
            the scores are averaged. C = 1 images are scored as they are.

    Returns:
        ``[B]`` (0-dim for an unbatched input), in [-1, 1]; 1 for identical images. float16 and
        bfloat16 inputs are scored in float32 and the result is cast back.

    Shape:
        - image, reference: :math:`(B, C, H, W)` or :math:`(C, H, W)`, H and W >= ``window_size``
        - output: :math:`(B)` or :math:`()`

    Raises:
        TypeError: non-tensor or non-floating inputs, or mismatched dtypes or devices.
        ValueError: bad shapes, images smaller than the window, bad settings.

    Example:
        >>> reference = torch.rand(2, 3, 32, 32)
        >>> ssim(reference, reference)
        tensor([1., 1.])

    Reference:
        Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image Quality Assessment: From
        Error Visibility to Structural Similarity", IEEE Transactions on Image Processing
        13(4):600-612, 2004, doi:10.1109/TIP.2003.819861.
    """
    _check_pair(image, reference, data_range)
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1 or not window_size % 2:
        raise ValueError(f"window_size must be an odd int >= 1, got {window_size!r}")
    for name, value in (("window_sigma", window_sigma), ("k1", k1), ("k2", k2)):
        if not is_positive_number(value):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    height, width = image.shape[-2:]
    if min(height, width) < window_size:
        raise ValueError(f"images of {height} x {width} are smaller than the {window_size} x {window_size} SSIM window")
    channels = image.shape[-3]
    if gray and channels not in (1, 3):
        raise ValueError(f"gray=True needs C = 1 or C = 3 channels, got C = {channels}")

    input_dtype = image.dtype
    if input_dtype in (torch.float16, torch.bfloat16):
        image, reference = image.float(), reference.float()
    unbatched = image.ndim == 3
    if unbatched:
        image, reference = image.unsqueeze(0), reference.unsqueeze(0)
    if gray and channels == 3:
        image, reference = rgb_to_gray(image), rgb_to_gray(reference)
    batch, planes = image.shape[:2]

    # the five filtered maps of every plane in one depthwise separable convolution
    maps = torch.stack([image, reference, image * image, reference * reference, image * reference], dim=2)
    maps = maps.reshape(batch * planes * 5, 1, height, width)
    taps = gaussian_taps(window_size, float(window_sigma), dtype=maps.dtype, device=maps.device)
    maps = F.conv2d(F.conv2d(maps, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
    mean_x, mean_y, power_x, power_y, product = maps.reshape(batch, planes, 5, *maps.shape[-2:]).unbind(dim=2)
    var_x = power_x - mean_x * mean_x
    var_y = power_y - mean_y * mean_y
    covariance = product - mean_x * mean_y

    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    index = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / (
        (mean_x * mean_x + mean_y * mean_y + c1) * (var_x + var_y + c2)
    )
    score = index.mean(dim=(-2, -1)).mean(dim=1).to(input_dtype)
    return score[0] if unbatched else score
