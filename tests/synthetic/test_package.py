"""efusion.synthetic as a package: docstring examples and its dependencies (torch and math only)."""
from __future__ import annotations

import doctest
import pathlib

import pytest

import efusion.color
from efusion import synthetic


@pytest.mark.parametrize("module", [synthetic, synthetic.scene, synthetic.camera], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0 and results.failed == 0


def _imports(path) -> set[str]:
    source = pathlib.Path(path).read_text()
    return {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}


def test_imports_only_torch_and_math():
    # the package's modules import each other and efusion.color (sRGB curve, Rec. 709 weights),
    # which needs only torch too
    package = pathlib.Path(synthetic.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "scene.py", "camera.py", "raster.py"}
    own = {"." + m.stem for m in modules}
    for module in modules:
        assert _imports(module) <= {"__future__", "math", "torch", "..color"} | own, module.name
    assert _imports(efusion.color.__file__) <= {"__future__", "torch"}
