"""Synthetic high-dynamic-range scenes and the exposure brackets a camera would take of them.

Everything here is procedural and deterministic from a seed, so the README picture, ``efusion demo``,
the benchmark and training can make their own test data without shipping photographs:

- :func:`hdr_scene` draws a scene-linear radiance map: a room lit by a window, with a sky, the sun,
  a lamp, textured walls and floor, and saturated objects, spanning about ``dynamic_range_ev`` stops.
- :func:`render_exposures` simulates a camera: exposure, noise, clipping, tone response, quantisation.
- :func:`bracket` chains the two for the common case.

The scene is defined in continuous coordinates in units of the image height (``y`` in ``[-0.5, 0.5]``
downwards, ``x`` centred on the frame), so one seed gives the same scene at any resolution (a wider
frame sees more of it) and a 24 MP benchmark frame and a 64 px test crop come from one generator.
Smooth fields (illumination, noise, sky) are evaluated on a coarse grid (``raster._SMOOTH_DENSITY``
samples per unit) and upsampled bilinearly; edges (walls, planks, window bars, objects) are evaluated
per pixel with one-pixel anti-aliasing.

Example:
    >>> frames = bracket(48, 64, n_frames=3, seed=1)
    >>> frames.shape, frames.dtype
    (torch.Size([3, 3, 48, 64]), torch.float32)
    >>> bool((frames >= 0).all() and (frames <= 1).all())
    True

The package is split by job: :mod:`~efusion.synthetic.scene` (the scene and :func:`hdr_scene`),
:mod:`~efusion.synthetic.camera` (:func:`render_exposures`, :func:`bracket`) and
:mod:`~efusion.synthetic.raster` (sampling grids, noise and shading helpers); every public name is
re-exported here.
"""
from __future__ import annotations

from .camera import RESPONSES, bracket, render_exposures
from .scene import DYNAMIC_RANGE_PERCENTILES, MID_GREY, hdr_scene

__all__ = ["DYNAMIC_RANGE_PERCENTILES", "MID_GREY", "RESPONSES", "bracket", "hdr_scene", "render_exposures"]
