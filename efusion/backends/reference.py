"""The ``"reference"`` backend: :mod:`efusion.reference`, plain tensor operations, differentiable by
autograd to any order; it runs whatever no other backend accepts."""
from __future__ import annotations

from torch import Tensor

from .._util import WeightParams
from ..presets import Preset
from ..reference.blend import blend as reference_blend
from ..reference.masks import fill_masked
from ..reference.measures import fusion_weights

__all__ = ["ReferenceBackend", "BACKEND"]


class ReferenceBackend:
    """The ops on validated inputs: stacks ``[B, N, C, H, W]``, masks and weights ``[B, N, 1, H, W]``,
    ``params`` the five weight parameters (contrast, saturation, exposure, mu, sigma)."""

    name = "reference"

    def accepts(self, op: str, stack: Tensor, inputs: tuple, *, preset, mask: Tensor | None = None) -> bool:
        return True

    def weights(self, stack: Tensor, mask: Tensor | None, params: WeightParams, preset: Preset) -> Tensor:
        """:func:`efusion.reference.measures.fusion_weights`."""
        return fusion_weights(stack, mask, *params, preset)

    def blend(self, stack: Tensor, weights: Tensor, levels, preset: Preset, relative: bool | None) -> Tensor:
        """:func:`efusion.reference.blend.blend`."""
        return reference_blend(stack, weights, levels, preset, relative)

    def fuse(self, stack: Tensor, mask: Tensor | None, params: WeightParams, levels, preset: Preset,
             relative: bool | None) -> Tensor:
        """The weights, then the blend, both of :func:`~efusion.reference.masks.fill_masked`'s stack."""
        if mask is not None:
            stack = fill_masked(stack, mask, preset)
        return reference_blend(stack, fusion_weights(stack, mask, *params, preset, filled=True), levels, preset, relative)

    def fuse_frames(self, *args, **kwargs) -> None:
        """``None``: :func:`efusion.fuse_frames` stacks the frames and calls :meth:`fuse`."""
        return None


BACKEND: ReferenceBackend = ReferenceBackend()
