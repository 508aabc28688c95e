"""Export a :class:`~efusion.Fusion` as a graph of standard operators: an ONNX model or a
``torch.export`` program that runs at any batch size, frame count, height and width, without efusion.

The graph is the reference code (:mod:`efusion.reference`, Mertens, Kautz & Van Reeth, Pacific
Graphics 2007) traced with symbolic sizes: border samples are gathered by indices computed in the
graph, the pyramid is unrolled to :data:`efusion.depth.TRACED_LEVELS` levels and the automatic
depth is computed inside the graph from the input's shape by the preset's own rule (see
:func:`efusion.depth.traced_depth_plan`); an explicit ``levels`` (absolute or relative to that
maximum, fractional or learned) is applied to it as in eager mode. The frames are summed with one
reduction per level instead of one addition per frame, so results equal eager efusion to float32
rounding, not bit for bit.

>>> import torch, efusion, efusion.export
>>> program = efusion.export.to_exported_program(efusion.Fusion(), unrolled=4)  # 4 levels: quick to trace
>>> program.module()(torch.rand(2, 4, 3, 12, 15)).shape     # any B, N, H, W
torch.Size([2, 3, 12, 15])
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import Tensor, nn
from torch._dynamo import config as dynamo_config
from torch.export import Dim, ExportedProgram
from torch.fx.experimental import _config as fx_config

from . import backends
from .depth import traced_levels
from .layers import Fusion

__all__ = ["dynamic_shapes", "example_stack", "to_exported_program", "to_onnx"]

#: the default example: its sizes only need to be distinct and above 2 (one reaches the others)
_EXAMPLE_SHAPE = (2, 3, 3, 24, 32)


def example_stack(layer: Fusion | None = None) -> Tensor:
    """A ``[2, 3, 3, 24, 32]`` example stack (values in [0, 1]) on the layer's device and dtype."""
    reference = None if layer is None else next(iter(layer.buffers()), next(iter(layer.parameters()), None))
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.get_default_dtype()
    generator = torch.Generator().manual_seed(0)
    return torch.rand(_EXAMPLE_SHAPE, generator=generator).to(device=device, dtype=dtype)


def dynamic_shapes() -> tuple[dict[int, Any]]:
    """The dynamic dimensions of a ``[B, N, C, H, W]`` stack: all but the channels."""
    return ({0: Dim("batch", min=1), 1: Dim("frames", min=1), 3: Dim("height", min=1), 4: Dim("width", min=1)},)


class _Exported(nn.Module):
    """``layer`` on a ``[B, N, C, H, W]`` stack by the reference code (what the graph holds)."""

    def __init__(self, layer: Fusion) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, stack: Tensor) -> Tensor:
        with backends.use("reference"):
            return self.layer(stack)


def _check(layer: Fusion, example: Tensor | None) -> Tensor:
    if not isinstance(layer, Fusion):
        raise TypeError(f"layer must be an efusion.Fusion, got {type(layer).__name__}")
    if example is None:
        return example_stack(layer)
    if not isinstance(example, Tensor) or example.dim() != 5:
        shape = tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__
        raise ValueError(f"example must be a [B, N, C, H, W] tensor, got {shape}")
    if min(example.shape[0], example.shape[1], example.shape[3], example.shape[4]) < 2:
        raise ValueError(
            f"example sizes B, N, H and W must be >= 2 (a size of 1 would be fixed in the graph), got {tuple(example.shape)}"
        )
    return example


def to_exported_program(layer: Fusion, example: Tensor | None = None, *, unrolled: int | None = None) -> ExportedProgram:
    """``torch.export`` program of ``layer`` with dynamic batch, frames, height and width.

    The program holds core ATen operators only, so ``torch.export.load`` runs it without efusion;
    save it with ``torch.export.save``. The layer's values are captured as they are (learnable
    ones as parameters of the program).

    Args:
        layer: a :class:`~efusion.Fusion`.
        example: a ``[B, N, C, H, W]`` stack fixing C, the dtype and the device (default
            :func:`example_stack`); B, N, H and W stay dynamic (>= 1 at run time).
        unrolled: pyramid levels the graph holds (default :data:`efusion.depth.TRACED_LEVELS`,
            16, or :func:`efusion.depth.traced_levels`'s around the call): images whose automatic depth would be larger get this depth. Export time grows
            about linearly with it (see the README, "Deploy and save").

    Returns:
        ``torch.export.ExportedProgram`` taking one ``[B, N, C, H, W]`` stack -> ``[B, C, H, W]``.
    """
    example = _check(layer, example)
    # The coarse pyramid levels of any example are 1 sample wide; size-oblivious reasoning keeps
    # the tracer from fixing those sizes to 1 (the graph gathers by index, valid for any size).
    oblivious = fx_config.patch(backed_size_oblivious=True)  # type: ignore[attr-defined]
    # Fake-tensor dispatch caching costs more symbolic arithmetic than it saves on this graph, whose
    # operations rarely repeat with the same sizes (one level after another): a quarter of the time.
    uncached = dynamo_config.patch(fake_tensor_cache_enabled=False)
    with oblivious, uncached, contextlib.nullcontext() if unrolled is None else traced_levels(unrolled):
        return torch.export.export(_Exported(layer), (example,), dynamic_shapes=dynamic_shapes())


def to_onnx(layer: Fusion, path: str | os.PathLike, *, example: Tensor | None = None, opset: int | None = None,
            unrolled: int | None = None, optimize: bool = True):
    """Write ``layer`` as an ONNX model with dynamic batch, frames, height and width.

    Exported through ``torch.onnx.export(..., dynamo=True)`` from :func:`to_exported_program`'s
    graph; ONNX Runtime runs it at any size. Input ``"stack"`` ``[B, N, C, H, W]``, output
    ``"fused"`` ``[B, C, H, W]``, in the example's dtype (float32 by default).

    Args:
        layer: a :class:`~efusion.Fusion`.
        path: the ``.onnx`` file to write.
        example: as in :func:`to_exported_program`.
        opset: ONNX opset version (default: the exporter's).
        unrolled: as in :func:`to_exported_program`.
        optimize: run the ONNX exporter's graph optimiser (constant folding, dead-code removal).
            ``False`` writes the same computation unoptimised, in about two thirds of the time;
            ONNX Runtime then folds the constants when it loads the model (and logs that it cannot
            fold the ``CastLike`` nodes, which is harmless).

    Returns:
        the ``torch.onnx.ONNXProgram`` (also written to ``path``).
    """
    program = to_exported_program(layer, example, unrolled=unrolled)
    onnx_program = torch.onnx.export(
        program, input_names=["stack"], output_names=["fused"], dynamo=True, verbose=False,
        opset_version=None if opset is None else int(opset), optimize=bool(optimize),
    )
    if onnx_program is None:  # only the legacy TorchScript exporter returns nothing
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    onnx_program.save(os.fspath(path))
    return onnx_program
