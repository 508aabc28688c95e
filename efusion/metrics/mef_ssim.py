"""Quality metrics for exposure fusion: MEF-SSIM (Ma, Zeng and Wang, 2015).

MEF-SSIM scores a fused image against the exposure bracket it was made from, without a ground
truth: for every local patch it builds the patch the bracket "wants" (the strongest contrast
among the frames, with a structure blended from the frames' structures) and compares the fused
patch with it by the contrast-structure part of SSIM.

The implementation follows the authors' published MATLAB code (``mef_ssim.m`` and
``mef_ms_ssim.m``, "MEF image quality model Version 1.0", 2015) in every numerical detail that
changes a score, and is re-expressed with whole-image filters instead of per-patch loops; see
:func:`mef_ssim` for the formula and the origin of every constant.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._util import gaussian_taps, is_positive_number
from ..color import MATLAB_GRAY, rgb_to_gray

__all__ = ["MS_SSIM_WEIGHTS", "RGB_TO_GRAY_WEIGHTS", "MEFSSIMLoss", "mef_ssim"]

#: MATLAB ``rgb2gray`` luminance coefficients at full precision (MATLAB documents them rounded
#: as 0.2989, 0.5870, 0.1140); the reference scores were computed on ``rgb2gray`` images.
#: The same tuple as :data:`efusion.color.MATLAB_GRAY`, under the name this module always had.
RGB_TO_GRAY_WEIGHTS = MATLAB_GRAY

#: Per-scale exponents of MS-SSIM (Wang, Simoncelli and Bovik, "Multiscale structural similarity
#: for image quality assessment", Asilomar 2003); MEF-SSIM uses the first three, normalised.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

#: MATLAB's ``eps`` (2^-52), which the reference code adds in the consistency ratio and to the
#: structure weights; reproduced as a constant whatever the dtype, as MATLAB computes in double.
_MATLAB_EPS = 2.0**-52

#: Added to every frame's signal strength by the reference code ("to avoid instability"); on
#: the 0-255 scale, so it is part of the metric's definition, not a guard.
_STRENGTH_OFFSET = 1e-3

#: The reference code caps the structure exponent p = tan(pi R / 2) at 10 ("equivalent to taking
#: the maximum"). tan is increasing on [0, pi/2), so p > 10 exactly when R exceeds this ratio;
#: testing R instead of tan(.) keeps R = 1 right in float32, where pi/2 rounds past the pole.
_EXPONENT_CAP = 10.0
_RATIO_AT_CAP = 2.0 * math.atan(_EXPONENT_CAP) / math.pi

_REDUCTIONS = ("mean", "sum", "none")


def _check_config(
    scales: int,
    scale_weights,
    window_size: int,
    window_sigma: float,
    k: float,
    data_range: float,
) -> tuple[float, ...]:
    """Validate the metric's settings; return the normalised per-scale weights."""
    if isinstance(scales, bool) or not isinstance(scales, int) or scales < 1:
        raise ValueError(f"scales must be an int >= 1, got {scales!r}")
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1 or not window_size % 2:
        raise ValueError(f"window_size must be an odd int >= 1, got {window_size!r}")
    if not is_positive_number(window_sigma):
        raise ValueError(f"window_sigma must be a finite number > 0, got {window_sigma!r}")
    if not is_positive_number(k):
        raise ValueError(f"k must be a finite number > 0 (C = (k * 255)^2 keeps the ratio defined), got {k!r}")
    if not is_positive_number(data_range):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range!r}")
    if scale_weights is None:
        if scales > len(MS_SSIM_WEIGHTS):
            raise ValueError(
                f"scales={scales} needs explicit scale_weights (defaults exist for at most "
                f"{len(MS_SSIM_WEIGHTS)} scales)"
            )
        scale_weights = MS_SSIM_WEIGHTS[:scales]
    try:
        weights = tuple(float(w) for w in scale_weights)
    except (TypeError, ValueError):
        raise ValueError(f"scale_weights must be a sequence of numbers, got {scale_weights!r}") from None
    if len(weights) != scales:
        raise ValueError(f"scale_weights must have one entry per scale ({scales}), got {len(weights)}: {weights}")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"scale_weights must be finite, >= 0 and not all zero, got {weights}")
    total = sum(weights)
    return tuple(w / total for w in weights)


def _check_inputs(fused: torch.Tensor, stack: torch.Tensor, gray: bool) -> None:
    for name, value in (("fused", fused), ("stack", stack)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor with values in [0, data_range], "
                f"got dtype {value.dtype} (convert integers first, e.g. uint8 / 255)"
            )
    if fused.dtype != stack.dtype:
        raise TypeError(f"fused and stack must share a dtype, got {fused.dtype} and {stack.dtype}")
    if fused.device != stack.device:
        raise ValueError(f"fused and stack must be on one device, got {fused.device} and {stack.device}")
    if stack.ndim not in (4, 5):
        raise ValueError(f"stack must be [B, N, C, H, W] or [N, C, H, W], got shape {tuple(stack.shape)}")
    if fused.ndim != stack.ndim - 1:
        expected = "[B, C, H, W]" if stack.ndim == 5 else "[C, H, W]"
        raise ValueError(
            f"fused must be {expected} for a stack of shape {tuple(stack.shape)}, got shape {tuple(fused.shape)}"
        )
    frames = stack.shape[-4]
    if frames < 2:
        raise ValueError(
            f"stack must hold at least 2 frames (N >= 2), got N = {frames} in shape {tuple(stack.shape)}"
        )
    expected_fused = stack.shape[:-4] + stack.shape[-3:]
    # a batched stack of one burst broadcasts against any number of fused images
    broadcast = stack.ndim == 5 and stack.shape[0] == 1 and fused.shape[1:] == expected_fused[1:]
    if fused.shape != expected_fused and not broadcast:
        raise ValueError(
            f"fused shape {tuple(fused.shape)} does not match stack shape {tuple(stack.shape)}: "
            f"expected fused of shape {tuple(expected_fused)}"
            + (" (or any batch size for a stack of batch 1)" if stack.ndim == 5 else "")
        )
    channels = stack.shape[-3]
    if gray and channels not in (1, 3):
        raise ValueError(f"gray=True needs C = 1 (gray) or C = 3 (RGB) channels, got C = {channels}")


def _filter_valid(images: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Separable correlation with ``taps`` along H and W, 'valid' region only.

    ``[..., H, W]`` -> ``[..., H - K + 1, W - K + 1]``. Accumulates shifted slices in place (into
    a fresh tensor, so autograd is unaffected): on CPU in float64 this is several times faster
    than ``conv2d``, and unit taps keep sums of integer images exact.
    """
    size = len(taps)
    width = images.shape[-1] - size + 1
    rows = images[..., 0:width] * taps[0]
    for i in range(1, size):
        rows.add_(images[..., i : i + width], alpha=taps[i])
    height = images.shape[-2] - size + 1
    out = rows[..., 0:height, :] * taps[0]
    for i in range(1, size):
        out.add_(rows[..., i : i + height, :], alpha=taps[i])
    return out


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(max(x, 0)) with a finite gradient at 0 (double ``where``: no NaN, no value change)."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def _downsample(images: torch.Tensor) -> torch.Tensor:
    """Halve ``[..., H, W]`` as the reference does between scales: ``imfilter(I, ones(2)/4,
    'symmetric', 'same')`` (anchor top-left, so each output averages I(i:i+1, j:j+1)) then keep
    rows and columns 1, 3, 5, ...; odd sizes repeat the last row/column (the symmetric pad) and
    round up: ``[..., ceil(H/2), ceil(W/2)]``.
    """
    height, width = images.shape[-2:]
    flat = images.reshape(-1, 1, height, width)
    if height % 2 or width % 2:
        flat = F.pad(flat, (0, width % 2, 0, height % 2), mode="replicate")
    out = F.avg_pool2d(flat, 2)
    return out.reshape(*images.shape[:-2], *out.shape[-2:])


def _single_scale(
    fused: torch.Tensor, stack: torch.Tensor, window_size: int, taps: list[float], c: float
) -> torch.Tensor:
    """Mean MEF-SSIM map of gray images on the 0-255 scale.

    fused ``[..., H, W]``, stack ``[..., N, H, W]``.
    Leading dimensions broadcast (a stack of batch 1 serves several fused images, and everything
    that depends on the stack alone is computed once); returns their broadcast shape.

    Per patch (reference ``mef_ssim.m``), with x_k the frames' patches under an 11 x 11 *box*
    window, mu_k their means and the statistics of the comparison under the *Gaussian* window:
    the desired patch is r = c_hat * s / ||s||, s = sum_k a_k (x_k - mu_k), a_k = w_k / c_k.
    Its Gaussian statistics are quadratic forms in the a_k, so everything reduces to filtered
    products of whole images (N (N + 1) / 2 frame pairs) instead of a loop over patches.
    """
    area = float(window_size * window_size)
    box = [1.0] * window_size
    frames = stack.shape[-3]
    # Covariances do not change under a constant shift; removing each image's mean keeps the
    # one-pass E[xy] - E[x]E[y] forms well conditioned (it matters in float32). Rounded for the
    # frames, so integer frames (the reference's input) stay integer and flat patches exact.
    stack = stack - stack.mean(dim=(-2, -1), keepdim=True).round().detach()
    fused = fused - fused.mean(dim=(-2, -1), keepdim=True).detach()

    # Signal strength c_k = ||x_k - mu_k|| (+ offset) and consistency ratio
    # R = ||sum_k (x_k - mu_k)|| / sum_k ||x_k - mu_k||, both under the box window.
    box_sum = _filter_valid(stack, box)
    signal = _safe_sqrt(_filter_valid(stack * stack, box) - box_sum * box_sum / area)
    strength = signal + _STRENGTH_OFFSET
    total = stack.sum(dim=-3)
    total_sum = _filter_valid(total, box)
    consistency = _safe_sqrt(_filter_valid(total * total, box) - total_sum * total_sum / area)
    ratio = (consistency + _MATLAB_EPS) / (signal.sum(dim=-3) + _MATLAB_EPS)
    capped = ratio > _RATIO_AT_CAP
    exponent = torch.where(
        capped,
        torch.full_like(ratio, _EXPONENT_CAP),
        torch.tan((math.pi / 2) * torch.clamp(ratio, max=_RATIO_AT_CAP)),
    )

    # Structure weights w_k = (c_k / window)^p + eps, normalised; a_k = w_k / c_k.
    weights = (strength / window_size) ** exponent.unsqueeze(-3) + _MATLAB_EPS
    weights = weights / weights.sum(dim=-3, keepdim=True)
    coef = weights / strength
    desired_strength = strength.amax(dim=-3)

    # ||s||^2 = a^T (window^2 Cov_box) a and Var_gauss(s) = a^T Cov_gauss a, accumulated one frame
    # against the frames after it (each off-diagonal pair stands for (j, l) and (l, j)), with the
    # mean products subtracted once: a^T Cov a = a^T E[x x^T] a - (a^T E[x])^2.
    gauss_mean = _filter_valid(stack, taps)
    energy = torch.zeros_like(desired_strength)
    gauss_power = torch.zeros_like(desired_strength)
    for j in range(frames):
        products = stack[..., j : j + 1, :, :] * stack[..., j:, :, :]
        coef_j = coef[..., j, :, :]
        for accumulated, window in ((energy, box), (gauss_power, taps)):
            filtered = _filter_valid(products, window)
            row = (coef[..., j:, :, :] * filtered).sum(dim=-3)
            accumulated.add_(coef_j * (2.0 * row - coef_j * filtered[..., 0, :, :]))
    energy = energy - (coef * box_sum).sum(dim=-3) ** 2 / area
    gauss_var = gauss_power - (coef * gauss_mean).sum(dim=-3) ** 2

    # The reference rescales s to length c_hat unless s is exactly zero (then r = 0).
    has_structure = energy > 0
    safe_energy = torch.where(has_structure, energy, torch.ones_like(energy))
    # Var_gauss(s) <= max(window) ||s||^2; clamping only tames rounding when ||s|| is ~0.
    peak = taps[window_size // 2] ** 2
    spread = torch.clamp(gauss_var / safe_energy, min=0.0, max=peak)
    zero = torch.zeros_like(energy)
    desired_var = torch.where(has_structure, desired_strength**2 * spread, zero)
    scale = torch.where(has_structure, desired_strength * torch.rsqrt(safe_energy), zero)

    fused_mean = _filter_valid(fused, taps)
    fused_var = _filter_valid(fused * fused, taps) - fused_mean * fused_mean
    cross = _filter_valid(stack * fused.unsqueeze(-3), taps) - gauss_mean * fused_mean.unsqueeze(-3)
    covariance = scale * (coef * cross).sum(dim=-3)

    quality = (2.0 * covariance + c) / (desired_var + fused_var + c)
    return quality.mean(dim=(-2, -1))


def mef_ssim(
    fused: torch.Tensor,
    stack: torch.Tensor,
    *,
    scales: int = 3,
    scale_weights=None,
    window_size: int = 11,
    window_sigma: float = 1.5,
    k: float = 0.03,
    gray: bool = True,
    data_range: float = 1.0,
    return_per_scale: bool = False,
):
    r"""MEF-SSIM: quality of a fused image against its exposure bracket, without a reference image.

    Reproduces the authors' MATLAB ``mef_ms_ssim`` / ``mef_ssim`` (Ma, Zeng, Wang, IEEE TIP 24(11),
    2015; code "MEF image quality model Version 1.0", as redistributed by the MEFB benchmark).

    For each frame patch :math:`x_k` (11 x 11 box window, valid positions only) with mean
    :math:`\mu_k`, signal strength :math:`c_k = \|x_k - \mu_k\| + 0.001` and structure
    :math:`(x_k - \mu_k) / c_k`, the desired patch is

    .. math::

        \hat{x} = \hat{c}\, \frac{\bar{s}}{\|\bar{s}\|}, \quad
        \hat{c} = \max_k c_k, \quad
        \bar{s} = \sum_k w_k \frac{x_k - \mu_k}{c_k}, \quad
        w_k \propto (c_k / 11)^p + \epsilon, \quad
        p = \min\!\big(\tan(\tfrac{\pi}{2} R), 10\big), \quad
        R = \frac{\|\sum_k (x_k - \mu_k)\| + \epsilon}{\sum_k \|x_k - \mu_k\| + \epsilon}

    (:math:`\hat{x} = 0` when :math:`\bar{s} = 0`), and the fused patch :math:`y` scores

    .. math::

        q = \frac{2\sigma_{\hat{x}y} + C}{\sigma_{\hat{x}}^2 + \sigma_y^2 + C}, \quad C = (K \cdot 255)^2,

    with (co)variances under an 11 x 11 Gaussian window (sigma 1.5). A scale's score is the mean
    of :math:`q` over all valid positions; the multi-scale score is
    :math:`\prod_i \max(Q_i, 0)^{\beta_i}` over ``scales`` dyadic scales (2 x 2 mean, keep every
    other pixel), with :math:`\beta` normalised to sum 1. There is no luminance term.

    Constants and their source:

    - gray conversion, 0.298936021293775 R + 0.587043074451121 G + 0.114020904255103 B on the
      0-255 scale: MATLAB ``rgb2gray``, as the MEFB benchmark's wrapper prepares inputs;
    - window 11 and Gaussian sigma 1.5 (``fspecial``), K = 0.03: the reference code's defaults
      (the paper's SSIM settings);
    - the 0.001 added to c_k, epsilon = 2^-52 (MATLAB ``eps``), the cap p <= 10 and the weight
      (c_k / 11)^p (the paper's c_k^p up to a factor common to all frames, which only matters
      next to epsilon): the reference code;
    - scale weights (0.0448, 0.2856, 0.3001): the reference code, taken from the MS-SSIM weights
      of Wang, Simoncelli and Bovik (Asilomar 2003), see :data:`MS_SSIM_WEIGHTS`;
    - image size: like the reference, min(H, W) / 2^(scales - 1) must be at least window_size
      (44 pixels for the defaults).

    Differences from the reference: patch statistics come from filtered products of whole images
    rather than a loop over patches (the 60 reference scores in ``../shared``, stored to 6
    decimals, are matched to 5e-7); a negative per-scale score enters the multi-scale product as
    0 (MATLAB's power would turn complex; the clamp is the usual MS-SSIM convention). With
    ``scales=1`` the score is the single-scale index ``mef_ssim.m`` itself, unclamped. float16
    and bfloat16 inputs are scored in float32 and the result is cast back.

    Args:
        fused: fused image(s), values in [0, data_range] (not checked, to avoid a device sync).
        stack: the exposure bracket(s) that were fused, same range; frame order is irrelevant.
            A batched stack with B = 1 is shared by all fused images (its statistics, the bulk
            of the work, are computed once): useful to compare several fusions of one burst.
        scales: number of dyadic scales; 1 gives the single-scale index (the reference's
            ``mef_ssim``, column ``ss_score`` of the test references).
        scale_weights: one exponent per scale, normalised to sum 1; ``None`` takes the first
            ``scales`` entries of :data:`MS_SSIM_WEIGHTS` (for 3 scales, the reference default).
        window_size: side of the box and Gaussian windows, odd.
        window_sigma: standard deviation of the Gaussian window, in pixels.
        k: SSIM stabilising constant, C = (k * 255)^2.
        gray: if True (default, the paper's metric), C = 3 inputs are converted to gray with
            MATLAB's ``rgb2gray`` weights and C = 1 inputs are taken as gray already. If False,
            every channel is scored as its own gray image and the scores are averaged over
            channels (an extension, not in the paper).
        data_range: value of full white in the inputs; images are scaled by 255 / data_range
            (the constants above live on the 0-255 scale).
            Pass 255 to feed 0-255 values unchanged (e.g. to reproduce the reference exactly on
            integer gray frames, which ``rgb2gray`` rounds to uint8).
        return_per_scale: also return the per-scale scores.

    Returns:
        The score, ``[B]`` (0-dim for an unbatched input), in [-1, 1] (in [0, 1] with several
        scales); 1 means the fused image has the desired structure everywhere. With ``return_per_scale``, a tuple
        ``(score, per_scale)`` with ``per_scale`` of shape ``[B, scales]`` (``[scales]``),
        finest scale first.

    Shape:
        - fused: :math:`(B, C, H, W)` or :math:`(C, H, W)`
        - stack: :math:`(B, N, C, H, W)`, :math:`(1, N, C, H, W)` or :math:`(N, C, H, W)`, N >= 2
        - output: :math:`(B)` or :math:`()`

    Raises:
        TypeError: non-tensor or non-floating inputs, or mismatched dtypes.
        ValueError: bad ranks or shapes, N < 2, images smaller than the minimum size, bad settings.

    Example:
        >>> stack = torch.rand(2, 3, 3, 64, 64)   # 2 bursts of 3 RGB frames in [0, 1]
        >>> fused = stack.mean(dim=1)             # [2, 3, 64, 64]
        >>> mef_ssim(fused, stack).shape
        torch.Size([2])

    Reference:
        K. Ma, K. Zeng, Z. Wang, "Perceptual Quality Assessment for Multi-Exposure Image Fusion",
        IEEE Transactions on Image Processing 24(11):3345-3356, 2015, doi:10.1109/TIP.2015.2442920.
    """
    weights = _check_config(scales, scale_weights, window_size, window_sigma, k, data_range)
    _check_inputs(fused, stack, gray)

    input_dtype = stack.dtype
    if input_dtype in (torch.float16, torch.bfloat16):
        # the weights (c_k / 11)^p reach ~1e21 on the 0-255 scale, far beyond float16's range
        stack, fused = stack.float(), fused.float()
    unbatched = stack.ndim == 4
    if unbatched:
        stack = stack.unsqueeze(0)
        fused = fused.unsqueeze(0)
    height, width = stack.shape[-2:]
    channels = stack.shape[-3]
    min_size = window_size * 2 ** (scales - 1)
    if min(height, width) < min_size:
        raise ValueError(
            f"images of {height} x {width} are too small for {scales} scale(s) with a {window_size}-pixel "
            f"window: min(H, W) must be at least {min_size} (window_size * 2^(scales - 1))"
        )

    to_255 = 255.0 / data_range
    if gray and channels == 3:
        # [B, 1, N, H, W] and [B, 1, H, W]: one gray channel
        stack_gray = rgb_to_gray(stack * to_255).transpose(1, 2)
        fused_gray = rgb_to_gray(fused * to_255)
    else:
        # gray input (C = 1), or every channel scored on its own: [B, C, N, H, W] and [B, C, H, W]
        stack_gray = (stack * to_255).transpose(1, 2)
        fused_gray = fused * to_255

    taps = gaussian_taps(window_size, window_sigma).tolist()  # host numbers: filter weights for add_(alpha=)
    c = (k * 255.0) ** 2
    scores = []
    for level in range(scales):
        if level:
            stack_gray = _downsample(stack_gray)
            fused_gray = _downsample(fused_gray)
        scores.append(_single_scale(fused_gray, stack_gray, window_size, taps, c))
    per_scale = torch.stack(scores, dim=-1)  # [B, 1 or C, scales]

    if scales == 1:
        score = per_scale[..., 0]
    else:
        score = torch.ones_like(per_scale[..., 0])
        for level, weight in enumerate(weights):
            if weight == 0.0:
                continue
            value = per_scale[..., level]
            # double where: x^beta at 0 has an infinite slope for beta < 1
            positive = value > 0
            safe = torch.where(positive, value, torch.ones_like(value))
            score = score * torch.where(positive, safe**weight, torch.zeros_like(value))
    score = score.mean(dim=1)
    per_scale = per_scale.mean(dim=1)
    score, per_scale = score.to(input_dtype), per_scale.to(input_dtype)
    if unbatched:
        score, per_scale = score[0], per_scale[0]
    return (score, per_scale) if return_per_scale else score


class MEFSSIMLoss(nn.Module):
    r"""Loss ``1 - mef_ssim(fused, stack)`` for training fusion networks.

    Ma, Zeng, Wang, IEEE TIP 24(11), 2015 (doi:10.1109/TIP.2015.2442920); see :func:`mef_ssim`
    for the formula, the constants and their sources. Settings are validated here, so a bad
    configuration fails when the loss is built, not at the first step.

    Args:
        scales, scale_weights, window_size, window_sigma, k, gray, data_range: as in :func:`mef_ssim`.
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for one loss per burst.

    Shape:
        - fused: :math:`(B, C, H, W)` or :math:`(C, H, W)`
        - stack: :math:`(B, N, C, H, W)` or :math:`(N, C, H, W)`
        - output: :math:`()`, or :math:`(B)` / :math:`()` with ``reduction="none"``

    Example:
        >>> loss = MEFSSIMLoss()
        >>> stack = torch.rand(2, 3, 3, 64, 64)
        >>> fused = stack.mean(dim=1).requires_grad_()
        >>> loss(fused, stack).backward()
    """

    def __init__(
        self,
        *,
        scales: int = 3,
        scale_weights=None,
        window_size: int = 11,
        window_sigma: float = 1.5,
        k: float = 0.03,
        gray: bool = True,
        data_range: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_config(scales, scale_weights, window_size, window_sigma, k, data_range)
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.scales = scales
        self.scale_weights = None if scale_weights is None else tuple(float(w) for w in scale_weights)
        self.window_size = window_size
        self.window_sigma = float(window_sigma)
        self.k = float(k)
        self.gray = bool(gray)
        self.data_range = float(data_range)
        self.reduction = reduction

    def forward(self, fused: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
        loss = 1.0 - mef_ssim(
            fused,
            stack,
            scales=self.scales,
            scale_weights=self.scale_weights,
            window_size=self.window_size,
            window_sigma=self.window_sigma,
            k=self.k,
            gray=self.gray,
            data_range=self.data_range,
        )
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return (
            f"scales={self.scales}, window_size={self.window_size}, window_sigma={self.window_sigma}, "
            f"k={self.k}, gray={self.gray}, data_range={self.data_range}, reduction={self.reduction!r}"
        )
