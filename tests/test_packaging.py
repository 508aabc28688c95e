"""What the extras in setup.cfg install covers what the project's entry points need (issue 16)."""
from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extras() -> dict[str, set[str]]:
    """Each extra's requirement names, with ``%(other)s`` references expanded."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    raw = config["options.extras_require"]
    names = {}
    for extra in raw:
        lines = [line.strip() for line in raw.get(extra, raw=True).splitlines()]
        names[extra] = [line for line in lines if line and not line.startswith("#")]

    def expand(extra: str) -> set[str]:
        found = set()
        for line in names[extra]:
            reference = re.fullmatch(r"%\((\w+)\)s", line)
            if reference:
                found |= expand(reference.group(1))
            else:
                found.add(re.split(r"[\[<>=!~ ;]", line, maxsplit=1)[0].lower())
        return found

    return {extra: expand(extra) for extra in names}


def test_notebook_extra_opens_and_runs_the_walkthrough():
    available = extras()
    assert {"notebook", "ipykernel"} <= available["notebook"]  # the Jupyter server and the kernel it starts
    assert available["notebook"] <= available["all"]
    # every third-party module the notebook imports comes with the extra
    imported = set()
    for name in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(name.read_text())["cells"]:
            if cell["cell_type"] == "code":
                imported |= set(re.findall(r"^\s*(?:from|import)\s+(\w+)", "".join(cell["source"]), re.MULTILINE))
    distribution = {"matplotlib": "matplotlib", "pytorch_lightning": "pytorch-lightning"}
    ours = {"efusion", "training", "torch", "os", "warnings", "logging", "tempfile", "pathlib"}  # install_requires or stdlib
    assert imported - ours - set(distribution) == set(), imported
    assert {distribution[m] for m in imported & set(distribution)} <= available["notebook"]


def test_readme_usage_snippet_runs_and_its_save_load_route_round_trips(tmp_path, monkeypatch):
    import torch

    readme = (ROOT / "README.md").read_text()
    usage = readme[readme.index("## Usage"):]
    code = usage[usage.index("```python") + len("```python"):usage.index("```", usage.index("```python") + 3)]
    assert "Fusion(**" in code and "write_params" in code and "read_params" in code
    code = code.replace("480, 640", "48, 64")  # the same code on a small stack
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md usage", "exec"), namespace)  # noqa: S102 - runs the README's own example
    layer, tuned, stack = namespace["layer"], namespace["tuned"], namespace["stack"]
    with torch.no_grad():
        assert torch.allclose(tuned(stack), layer(stack), atol=1e-6)
        assert torch.allclose(namespace["fused"], layer(stack), atol=1e-6)


def test_native_kernel_source_ships_as_package_data():
    # the native backend compiles kernels.cpp on first use: an installed efusion must contain it
    from efusion.backends.native import build

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in config["options.package_data"]["efusion"].splitlines()]
    shipped = {line for line in lines if line and not line.startswith("#")}
    assert build.SOURCE.relative_to(ROOT / "efusion").as_posix() in shipped
    assert build.SOURCE.exists()
