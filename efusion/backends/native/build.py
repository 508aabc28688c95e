"""Building and loading the native kernels (``kernels.cpp``): compiled on first use, cached per user.

The shared library is built once per (source, torch version, compiler flags, CPU) and cached in
``$XDG_CACHE_HOME/efusion/native`` (else ``~/.cache/efusion/native``; ``EFUSION_CACHE`` overrides),
then loaded with ``torch.ops.load_library``, which registers the ``efusion_native::`` operators.
The compiler is ``$CXX`` or ``c++``, called directly with the include paths and ABI flag of
:mod:`torch.utils.cpp_extension` (whose ``load`` would also need the ``ninja`` package, which
efusion does not require). ``EFUSION_NATIVE=0`` disables the backend; where the build fails
(no compiler, missing headers), :func:`load` warns once and efusion runs the other backends.
It is compiled for the CPU that builds it (``-march=native``: its vector width, 20-30 % faster than
baseline x86-64 code at 0.4-1 MP, issue 13); the cache key names that CPU, so a cache shared by
different machines holds one library per CPU, and a compiler that refuses the flag gets a baseline
build instead.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

__all__ = ["ARCH_FLAGS", "FLAGS", "SOURCE", "NativeBuildWarning", "build_seconds", "cache_dir", "compiler", "disabled", "load", "loaded", "on_load"]

#: the kernels' single translation unit, shipped as package data
SOURCE = Path(__file__).with_name("kernels.cpp")
#: compiler flags: as torch's extensions (C++20, PIC, OpenMP for ``at::parallel_for``), optimised,
#: and without floating-point contraction (an FMA would round unlike the reference's mul + add)
FLAGS = ("-O3", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
         "-Wno-unused-parameter")

#: for the building CPU; the same bits as a baseline build (no contraction, no reassociation: the
#: flag only widens the vectors), hence taken where the compiler accepts it
ARCH_FLAGS = ("-march=native",)

_lock = threading.Lock()
_state: dict = {}
_on_load: list = []


class _NoCompiler(RuntimeError):
    """No C++ compiler to run (a baseline build would not help either)."""


class NativeBuildWarning(RuntimeWarning):
    """The native kernels could not be built or loaded; efusion runs its other backends."""


def disabled() -> bool:
    """Whether ``EFUSION_NATIVE=0`` (or ``false``/``no``/``off``) turns the backend off."""
    return os.environ.get("EFUSION_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """Where built libraries are kept: ``$EFUSION_CACHE``, else ``$XDG_CACHE_HOME/efusion/native``, else ``~/.cache/efusion/native``."""
    if os.environ.get("EFUSION_CACHE"):
        return Path(os.environ["EFUSION_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "efusion" / "native"


def compiler() -> str:
    """The C++ compiler: ``$CXX`` or ``c++``."""
    return os.environ.get("CXX") or "c++"


def _command(output: Path, flags: tuple[str, ...]) -> list[str]:
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    libraries = [f"-L{p}" for p in cpp_extension.library_paths()]
    return [*shlex.split(compiler()), *flags, f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *includes, str(SOURCE),
            "-o", str(output), *libraries, "-lc10", "-ltorch_cpu"]


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags (``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            wanted = ("model name", "flags", "features", "cpu part", "cpu implementer")
            lines = {line.strip() for line in info if line.lower().startswith(wanted)}
        return "\n".join(sorted(lines))
    except OSError:  # not Linux
        return f"{platform.machine()}|{platform.processor()}"


def _library_path(flags: tuple[str, ...]) -> Path:
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(f"{torch.__version__}|{compiler()}|{' '.join(flags)}|{sys.platform}".encode())
    if ARCH_FLAGS[0] in flags:
        key.update(_cpu_identity().encode())
    return cache_dir() / f"efusion_native_{key.hexdigest()[:16]}.so"


def _build(target: Path, flags: tuple[str, ...]) -> float:
    """Compile into ``target`` (atomically: a temporary file renamed); returns the seconds taken."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which(shlex.split(compiler())[0]) is None:
        raise _NoCompiler(f"no C++ compiler found ({compiler()!r}; set CXX or install g++)")
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    start = time.perf_counter()
    try:
        done = subprocess.run(_command(Path(temporary), flags), check=False, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
            raise RuntimeError(f"{compiler()} failed (exit {done.returncode}): " + " | ".join(tail))
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return time.perf_counter() - start


def _built() -> Path:
    """The library for this machine, built first if the cache has none: for this CPU where the
    compiler accepts :data:`ARCH_FLAGS`, else the baseline build (whose failure is the one raised)."""
    tuned = FLAGS + ARCH_FLAGS
    candidates = [(flags, _library_path(flags)) for flags in (tuned, FLAGS)]  # hashes the source once each
    for _, target in candidates:
        if target.exists():
            return target
    for flags, target in candidates:
        try:
            _state["build_seconds"] = _build(target, flags)
            return target
        except _NoCompiler:
            raise
        except RuntimeError:  # the compiler refused the CPU flags (or the tuned build failed): baseline next
            if flags == FLAGS:
                raise
    raise AssertionError("unreachable")


def load() -> bool:
    """Build (first use) and load the kernels; ``True`` when ``torch.ops.efusion_native`` is ready.

    Failure is reported once, as a :class:`NativeBuildWarning` that names the cause and the fix,
    and remembered: later calls return ``False`` at once.
    """
    if "ok" in _state:
        return _state["ok"]
    with _lock:
        if "ok" in _state:
            return _state["ok"]
        if disabled():
            _state["ok"] = False
            return False
        try:
            torch.ops.load_library(str(_built()))
            for callback in _on_load:
                callback()
            _state["ok"] = True
        except Exception as error:  # noqa: BLE001 - any build or load failure: fall back, tell the user once
            _state["ok"] = False
            _state["error"] = error
            warnings.warn(
                f"efusion: the native CPU kernels are unavailable ({error}); running the slower 'cpu' "
                f"backend instead. Install a C++ compiler (g++) or set CXX, or set EFUSION_NATIVE=0 "
                f"to silence this.",
                NativeBuildWarning,
                stacklevel=3,
            )
        return _state["ok"]


def loaded() -> bool:
    """Whether :func:`load` has already succeeded in this process (builds and loads nothing)."""
    return _state.get("ok", False)


def on_load(callback) -> None:
    """Run ``callback()`` once the library is loaded (registrations that need its operators)."""
    _on_load.append(callback)


def build_seconds() -> float | None:
    """Seconds the build took in this process (``None`` when the cached library was used)."""
    return _state.get("build_seconds")
