"""Gaussian and Laplacian pyramids with the 5-tap binomial filter (Burt & Adelson, 1983).

Kept for compatibility: the functions live in :mod:`efusion.reference.pyramid` (the kernels of
the ``"cpu"`` backend in :mod:`efusion.backends.cpu.pyramid`).
"""
from .reference.pyramid import collapse_laplacian_pyramid, gaussian_pyramid, laplacian_pyramid, pyr_down, pyr_up

__all__ = ["collapse_laplacian_pyramid", "gaussian_pyramid", "laplacian_pyramid", "pyr_down", "pyr_up"]
