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
from collections.abc import Iterator
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

    The program holds core ATen operators only (``torch.export``'s program, then
    ``run_decompositions()`` to the core ATen set: a second trace, about as long as the first), so
    ``torch.export.load`` runs it without efusion, and backends that take core ATen take it; save it
    with ``torch.export.save``. The layer's values are captured as they are (learnable ones as
    parameters of the program).

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
    with _tracing(unrolled):
        return _export(layer, example).run_decompositions()


def _export(layer: Fusion, example: Tensor | None) -> ExportedProgram:
    """``torch.export``'s program of ``layer`` (ATen operators, not decomposed to the core set)."""
    return torch.export.export(_Exported(layer), (_check(layer, example),), dynamic_shapes=dynamic_shapes())


@contextlib.contextmanager
def _tracing(unrolled: int | None) -> Iterator[None]:
    """The settings export traces under (and the unrolled depth, when given)."""
    # The coarse pyramid levels of any example are 1 sample wide; size-oblivious reasoning keeps
    # the tracer from fixing those sizes to 1 (the graph gathers by index, valid for any size).
    oblivious = fx_config.patch(backed_size_oblivious=True)  # type: ignore[attr-defined]
    # Fake-tensor dispatch caching costs more symbolic arithmetic than it saves on this graph, whose
    # operations rarely repeat with the same sizes (one level after another): a quarter of the time.
    uncached = dynamo_config.patch(fake_tensor_cache_enabled=False)
    with oblivious, uncached, contextlib.nullcontext() if unrolled is None else traced_levels(unrolled):
        yield


def to_onnx(layer: Fusion, path: str | os.PathLike, *, example: Tensor | None = None, opset: int | None = None,
            unrolled: int | None = None, optimize: bool = True):
    """Write ``layer`` as an ONNX model with dynamic batch, frames, height and width.

    ``torch.export``'s graph of the layer (:func:`to_exported_program`'s before its decomposition)
    translated by PyTorch's ONNX exporter (the one behind
    ``torch.onnx.export(..., dynamo=True)``); ONNX Runtime runs it at any size. Input ``"stack"``
    ``[B, N, C, H, W]``, output ``"fused"`` ``[B, C, H, W]``, in the example's dtype (float32 by
    default). The graph is traced once: its operators all have ONNX translations, so the exporter's
    own decomposition pass, a second trace of the whole graph, is skipped (see the README, "Deploy
    and save"; where this PyTorch lacks the entry points used, ``torch.onnx.export`` does it all).

    Args:
        layer: a :class:`~efusion.Fusion`.
        path: the ``.onnx`` file to write.
        example: as in :func:`to_exported_program`.
        opset: ONNX opset version (default: the exporter's).
        unrolled: as in :func:`to_exported_program`.
        optimize: fold constants, remove unused nodes and common subexpressions (onnxscript's
            constant folding and ``onnx_ir``'s passes: a second or two). ``False`` writes the graph
            as translated; ONNX Runtime then folds it when it loads the model, and logs warnings
            (unused initializers, ``CastLike`` nodes it cannot fold). The exporter's full
            optimiser (pattern rewrites) is not run: it took longer than the export itself and
            ONNX Runtime runs the result no faster; call ``.optimize()`` on the returned program
            for it.

    Returns:
        the ``torch.onnx.ONNXProgram`` (also written to ``path``).
    """
    with _tracing(unrolled):  # the exporter translates ATen: no core decomposition needed first
        program = _export(layer, example)
    onnx_program = _translate(program, opset)
    if onnx_program is None:  # this PyTorch's exporter lacks the entry points: the public route
        onnx_program = torch.onnx.export(
            program, input_names=["stack"], output_names=["fused"], dynamo=True, verbose=False,
            opset_version=None if opset is None else int(opset), optimize=False,
        )
    if onnx_program is None:  # only the legacy TorchScript exporter returns nothing
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    if optimize:
        _optimize(onnx_program.model)
    onnx_program.save(os.fspath(path))
    return onnx_program


def _optimize(model) -> None:
    """Constant folding and clean-up passes on an ``onnx_ir`` model, in place: what makes the model
    load in ONNX Runtime without warnings, without the exporter's pattern rewrites (whose matcher
    walks the graph again and again: 15 s for a 7-level graph, against 0.7 s for these)."""
    import onnx_ir.passes.common as passes
    import onnxscript.optimizer

    onnxscript.optimizer.fold_constants(model)
    for cleanup in (
        passes.RemoveUnusedNodesPass(),
        passes.CommonSubexpressionEliminationPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.DeduplicateInitializersPass(),
        passes.RemoveUnusedNodesPass(),
    ):
        cleanup(model)


def _translate(program: ExportedProgram, opset: int | None):
    """``program`` as a ``torch.onnx.ONNXProgram`` (inputs named ``stack``, outputs ``fused``) by
    the ONNX exporter's translator, without its decomposition pass; ``None`` where this PyTorch
    lacks the (private) entry points, or the graph holds an operator without an ONNX translation.

    ``torch.onnx.export`` of an ``ExportedProgram`` first calls ``run_decompositions`` with a table
    that only decomposes operators lacking an ONNX translation, which retraces the whole graph with
    symbolic shapes: more time than ``torch.export`` took (for the default layer 2/3 of the exporter's
    time). This graph needs none of it: the handful of operators without a translation are rewritten
    below in place to translated equivalents, then the exporter's own FX passes (type promotion,
    assertions removed) and translator run as ``torch.onnx.export`` runs them (the type promotion
    reading each node's traced value instead of recomputing it: :func:`_promotion_from_metadata`).
    Private API of torch 2.14 (``torch.onnx._internal``), looked up here and there only: if it
    moves, the caller takes the public route (same model, slower).
    """
    try:
        from torch.onnx._constants import ONNX_DEFAULT_OPSET
        from torch.onnx._internal.exporter import _constants, _core, _fx_passes, _ir_passes, _registration

        torchlib_opset = _constants.TORCHLIB_OPSET
        from_torchlib = _registration.ONNXRegistry.from_torchlib
        strip_assertions = _fx_passes.remove_assertion_nodes
        promote = _promotion_from_metadata() or _fx_passes.insert_type_promotion_nodes
        translate, rename_inputs, rename_outputs = (
            _core._exported_program_to_onnx_program, _ir_passes.rename_inputs, _ir_passes.rename_outputs,
        )
        import onnxscript.version_converter
    except (ImportError, AttributeError):
        return None
    target = ONNX_DEFAULT_OPSET if opset is None else int(opset)
    if target < torchlib_opset:  # the public route converts down (or warns)
        return None
    registry = from_torchlib(opset_version=target)
    graph_module = program.graph_module
    _rewrite_untranslated(graph_module)
    untranslated = {
        node.target for node in graph_module.graph.nodes
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
        and node.target not in _ASSERTIONS and not registry.is_registered(node.target)
    }
    if untranslated:
        return None
    graph_module = strip_assertions(graph_module)
    promote(graph_module)
    program._graph_module = graph_module  # what the exporter does with the graph it prepared
    onnx_program = translate(program, registry=registry)
    onnxscript.version_converter.convert_version(onnx_program.model, target, fallback=True)
    rename_inputs(onnx_program.model, ["stack"])
    rename_outputs(onnx_program.model, ["fused"])
    return onnx_program


_aten = torch.ops.aten
#: checks that the exporter removes (``remove_assertion_nodes``), not translates
_ASSERTIONS = frozenset({
    _aten._assert_tensor_metadata.default, _aten._assert_scalar.default, _aten._assert_async.default,
    _aten._assert_async.msg, _aten.sym_constrain_range_for_size.default,
})


def _rewrite_untranslated(graph_module: torch.fx.GraphModule) -> None:
    """Replace the operators of a ``torch.export`` graph that have no ONNX translation by ones
    that have (the same values; what the exporter's decompositions make of them), in place."""
    graph = graph_module.graph

    def same_dtype(node) -> bool:  # the rewritten nodes take the value's metadata: keep it exact
        return node.args[0].meta["val"].dtype == node.meta["val"].dtype

    def replace(node, target, args, kwargs=None) -> None:
        with graph.inserting_before(node):
            new = graph.call_function(target, args, kwargs or {})
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)

    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is _aten.detach_.default:  # of a fresh constant copy: no effect on values
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        elif node.target in (_aten.to.dtype, _aten.to.device):
            source, value = node.args[0].meta["val"], node.meta["val"]
            if (source.dtype, source.device) == (value.dtype, value.device):  # ``to`` returns its input
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
            else:
                replace(node, _aten._to_copy.default, (node.args[0],), {"dtype": value.dtype, "device": value.device})
        elif node.target is _aten.square.default and same_dtype(node):
            replace(node, _aten.mul.Tensor, (node.args[0], node.args[0]))
        elif node.target is _aten.rsub.Scalar and len(node.args) == 2 and not node.kwargs and same_dtype(node):
            # other - self
            with graph.inserting_before(node):
                negated = graph.call_function(_aten.neg.default, (node.args[0],))
            negated.meta.update(node.meta)
            replace(node, _aten.add.Tensor, (negated, node.args[1]))
        elif node.target is _aten.__or__.Tensor:
            replace(node, _aten.bitwise_or.Tensor, node.args)
    graph_module.recompile()


def _promotion_from_metadata():
    """The ONNX exporter's type-promotion pass (explicit casts where ATen promotes implicitly), run
    on the traced values that ``torch.export`` stored on each node (``node.meta["val"]``) instead of
    re-executing every node with fake tensors, which costs about as much symbolic-shape reasoning
    as the trace (2/3 of the translation's time here). Nodes the pass changes or inserts are still
    re-executed by it, so their metadata is fresh; the rules and casts are the exporter's own.
    ``None`` where this PyTorch lacks the private classes (the caller runs the exporter's pass)."""
    try:
        from torch.onnx._internal.fx.passes import type_promotion
        interpreter_class = type_promotion._TypePromotionInterpreter
        rule_for, table, transform_class = (
            type_promotion.get_type_promotion_rule, type_promotion.TypePromotionTable, type_promotion.InsertTypePromotion,
        )
    except (ImportError, AttributeError):
        return None

    class FromMetadata(interpreter_class):  # type: ignore[misc, valid-type]
        def run_node(self, node):
            if node.op != "call_function" or "val" not in node.meta:
                return super().run_node(node)
            with self._set_current_node(node):
                if rule := rule_for(node, self.type_promotion_table):
                    self._maybe_promote_node(node, rule)  # re-executes the node if it changed it
            return node.meta["val"]

    def promote(graph_module: torch.fx.GraphModule) -> None:
        for module in graph_module.modules():
            if isinstance(module, torch.fx.GraphModule):
                transform = transform_class(module)
                transform.interpreter = FromMetadata(module, table())
                transform.run()

    return promote
