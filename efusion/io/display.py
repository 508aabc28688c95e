"""Display mapping: bringing a fused image, whose values Mertens fusion lets stray outside [0, 1],
into the range an integer image file holds.
"""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

__all__ = ["RANGES", "robust_normalize", "to_display"]

#: how :func:`to_display` brings a result into [0, 1]
RANGES = ("clip", "robust")


def to_display(image: Tensor, mode: str | None = None, *, black: float = 1.0, white: float = 1.0, bit_depth: int = 8) -> Tensor:
    """A result as it will be stored: clipped to [0, 1], robustly normalised, or left as it is.

    Args:
        image: ``[C, H, W]`` float, any range.
        mode: ``"clip"``, ``"robust"`` (:func:`robust_normalize` with ``black`` and ``white``), or
            ``None``: clip, except for float32 output (``bit_depth`` 32), which keeps Mertens
            fusion's out-of-range values for HDR pipelines.
        black, white: percent of pixels :func:`robust_normalize` saturates.
        bit_depth: of the file the image goes to (8, 16, or 32 for float32).

    Returns:
        ``[C, H, W]``, same dtype as the input.
    """
    if mode not in (None, *RANGES):
        raise ValueError(f"mode must be one of {', '.join(RANGES)} or None, got {mode!r}")
    if mode == "robust":
        return robust_normalize(image, black=black, white=white)
    if mode is None and bit_depth == 32:
        return image
    return image.clamp(0, 1)


def robust_normalize(image: Tensor, *, black: float = 1.0, white: float = 1.0) -> Tensor:
    """Map an image into [0, 1] by one affine map for all channels, saturating a few pixels.

    The simplest colour balance (Limare, Lisani, Morel, Petro, Sbert, "Simplest Color Balance",
    IPOL 1, 2011, doi:10.5201/ipol.2011.llmps-scb) in the form C. Hessel uses against Mertens
    fusion's out-of-range values ("An Implementation of the Exposure Fusion Algorithm", IPOL 8,
    2018, pp. 369-387, doi:10.5201/ipol.2018.230, ``robustNormalization.m``): ``v_min`` is the
    ``black`` percentile of the per-pixel minimum channel, ``v_max`` the ``100 - white``
    percentile of the per-pixel maximum channel, and ``(u - v_min) / (v_max - v_min)`` is
    clipped to [0, 1], so a pixel saturates when any of its channels does and hues are kept.
    A flat image (``v_max <= v_min``) becomes the constant ``v_max``, clipped.

    Args:
        image: ``[C, H, W]`` float, any range.
        black, white: percent of pixels allowed to saturate to 0 and to 1 (0 <= each < 100,
            sum < 100).

    Returns:
        ``[C, H, W]`` in [0, 1], same dtype as the input.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be [C, H, W], got shape {list(image.shape)}")
    for name, value in (("black", black), ("white", white)):
        if not (isinstance(value, Real) and 0 <= value < 100):
            raise ValueError(f"{name} must be a percentage in [0, 100), got {value!r}")
    if black + white >= 100:
        raise ValueError(f"black + white must be below 100 percent, got {black} + {white}")
    work = image if image.dtype in (torch.float32, torch.float64) else image.float()
    n = work.shape[-1] * work.shape[-2]
    if work.shape[0] > 1:  # 1-based ranks as in robustNormalization.m
        high_rank = math.ceil(n - white * n / 100)
        low_rank = math.floor(1 + black * n / 100)
    else:
        high_rank = math.floor(n - white * n / 100 + 0.5)
        low_rank = math.floor(1 + black * n / 100 + 0.5)
    high_rank, low_rank = min(max(high_rank, 1), n), min(max(low_rank, 1), n)
    v_max = work.amax(0).flatten().kthvalue(high_rank).values
    v_min = work.amin(0).flatten().kthvalue(low_rank).values
    if v_max <= v_min:
        out = torch.full_like(work, float(v_max)).clamp_(0, 1)
    else:
        out = ((work - v_min) / (v_max - v_min)).clamp_(0, 1)
    return out.to(image.dtype)
