"""Mertens' per-pixel quality measures and the normalised fusion weights.

Kept for compatibility: the measures live in :mod:`efusion.reference.measures` and
:func:`mertens_weights` in :mod:`efusion.functional`.
"""
from .functional import mertens_weights
from .reference.measures import WEIGHT_FLOOR, contrast, luma, saturation, well_exposedness

__all__ = ["WEIGHT_FLOOR", "contrast", "luma", "mertens_weights", "saturation", "well_exposedness"]
