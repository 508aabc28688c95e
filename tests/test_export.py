"""efusion.export: ONNX and torch.export graphs that run at sizes other than the example's.

The references are eager efusion (its default backend, the band kernels, which the conformance
suite ties to the paper's reference code) and, for the saved program, a fresh Python process in
which efusion cannot be imported.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import torch

import efusion
from efusion.export import example_stack, to_exported_program, to_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

#: sizes never seen at export (the example is [2, 3, 3, 24, 32], automatic depth 4): other B and
#: N, odd and even sides, depths 3, 4 and 6, and a side of 1
UNSEEN = [(1, 2, 3, 17, 23), (3, 5, 3, 45, 9), (2, 4, 3, 70, 66), (1, 2, 3, 1, 40)]
#: levels the test graphs hold: automatic depths up to 7 (sides < 256) are exact, and the export
#: takes under half as long as with the default 16 (the default's graph is the same code unrolled further)
UNROLLED = 7


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).square().mean().item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(1.0 / mse)).item()


def assert_close_to_eager(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert got.dtype == torch.float32
    assert (got - want).abs().max().item() <= 1e-3
    assert psnr(got, want) >= 80.0


def bursts(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    # smooth scenes under three exposures, so every measure and pyramid level has work to do
    for shape in UNSEEN:
        b, n, c, h, w = shape
        base = torch.rand(b, 1, c, h, w, generator=generator)
        gains = torch.linspace(0.3, 1.6, n).reshape(1, n, 1, 1, 1)
        yield (base * gains).clamp(0, 1)


PRESETS = ("mertens", "opencv")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One ONNX export per preset, shared by the tests of this module: ``{preset: (layer, path, program)}``."""
    folder = tmp_path_factory.mktemp("onnx")
    made = {}
    for preset in PRESETS:
        layer = efusion.Fusion(preset=preset)
        path = folder / f"{preset}.onnx"
        # both settings of the ONNX optimiser are tested, one per preset; the graph is translated
        # directly (torch.onnx.export, which would retrace it, is not called)
        with mock.patch.object(torch.onnx, "export", side_effect=AssertionError("to_onnx took the public route")):
            program = to_onnx(layer, path, unrolled=UNROLLED, optimize=preset == "opencv")
        made[preset] = layer, path, program
    return made


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_onnx_runs_unseen_sizes(exports, preset):
    layer, path, _ = exports[preset]
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["stack"]
    for stack in bursts():
        got = torch.from_numpy(session.run(None, {"stack": stack.numpy()})[0])
        assert_close_to_eager(got, layer(stack))


@pytest.mark.slow
def test_exported_program_runs_without_efusion(exports, core_program, tmp_path):
    # both presets' programs in one fresh process (its start and torch's import are paid once)
    # the core ATen program of the default layer, and the ONNX export's program of the opencv preset
    torch.export.save(core_program, tmp_path / "mertens.pt2")
    torch.export.save(exports["opencv"][2].exported_program, tmp_path / "opencv.pt2")
    inputs = list(bursts(seed=2))
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class NoEfusion(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "efusion" or name.startswith("efusion."):
                    raise ImportError("efusion is blocked in this process")
                return None

        sys.meta_path.insert(0, NoEfusion())
        import torch
        inputs = torch.load("inputs.pt")
        for preset in {PRESETS!r}:
            fusion = torch.export.load(f"{{preset}}.pt2").module()
            torch.save([fusion(x) for x in inputs], f"{{preset}}-outputs.pt")
        assert "efusion" not in sys.modules
        try:
            import efusion  # noqa: F401
        except ImportError:
            print("efusion not importable")
        """
    )
    # -I: isolated mode (no PYTHONPATH, no user site, no script directory on sys.path)
    done = subprocess.run([sys.executable, "-I", "-c", script], check=False, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "efusion not importable" in done.stdout
    for preset in PRESETS:
        layer = exports[preset][0]
        outputs = torch.load(tmp_path / f"{preset}-outputs.pt")
        assert len(outputs) == len(inputs)
        for stack, got in zip(inputs, outputs):
            assert_close_to_eager(got, layer(stack))


@pytest.fixture(scope="module")
def core_program():
    """:func:`to_exported_program` of the default layer (decomposed to core ATen)."""
    return to_exported_program(efusion.Fusion(), unrolled=UNROLLED)


@pytest.mark.slow
def test_exported_program_is_core_aten(core_program):
    # every operator is an ATen operator tagged core, one of export's run-time checks, or a
    # symbolic-size / tuple helper
    checks = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size"}
    ops = {node.target for node in core_program.graph.nodes if node.op == "call_function"}
    assert ops, "an empty graph"
    aten = [op for op in ops if isinstance(op, torch._ops.OpOverload)]
    not_core = sorted(str(op) for op in aten if op.namespace != "aten"
                      or (torch.Tag.core not in op.tags and op.__name__.split(".")[0] not in checks))
    assert not not_core, not_core
    others = {getattr(op, "__module__", "") for op in ops if not isinstance(op, torch._ops.OpOverload)}
    assert others <= {"_operator", "operator", "builtins", "torch", "math"}, others
    for stack in bursts(seed=3):
        assert_close_to_eager(core_program.module()(stack), efusion.Fusion()(stack))


@pytest.mark.slow
def test_learnable_fractional_depth_program():
    # a learned depth is a parameter of the program; relative depths follow each input's size
    layer = efusion.Fusion(learnable=True, levels=-1.5)
    with torch.no_grad():
        layer.mu.fill_(0.45)
    program = to_exported_program(layer, unrolled=UNROLLED)
    assert {"levels", "mu"} <= {name.split(".")[-1] for name, _ in program.named_parameters()}
    for stack in bursts(seed=3):
        with torch.no_grad():
            assert_close_to_eager(program.module()(stack), layer(stack))


class TestErrors:
    def test_not_a_fusion(self, tmp_path):
        with pytest.raises(TypeError, match="Fusion, got Identity"):
            to_onnx(torch.nn.Identity(), tmp_path / "x.onnx")

    @pytest.mark.parametrize("example", [torch.rand(3, 3, 16, 16), torch.rand(1, 3, 3, 16, 16), "stack"])
    def test_bad_example(self, example):
        with pytest.raises(ValueError, match="example"):
            to_exported_program(efusion.Fusion(), example)

    def test_example_stack(self):
        stack = example_stack(efusion.Fusion().double())
        assert stack.shape == (2, 3, 3, 24, 32) and stack.dtype == torch.float64
        assert 0.0 <= stack.min() and stack.max() <= 1.0
