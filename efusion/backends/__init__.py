"""Backends: implementations of the fusion ops beside the reference code, and the one place that
chooses between them.

``"reference"`` (:mod:`efusion.reference`, the paper in plain torch) is always registered;
``"cpu"`` (:mod:`efusion.backends.cpu`) holds the band kernels with their hand-written backward
and the ``efusion::fuse`` / ``efusion::blend`` custom operators. :func:`select` decides, per call,
which one runs; callers choose with :func:`use`, as ``torch.nn.attention.sdpa_kernel`` does:

>>> import torch, efusion
>>> stack = torch.rand(3, 3, 16, 16)
>>> with efusion.backends.use("reference"):
...     fused = efusion.exposure_fusion(stack)
>>> "reference" in efusion.backends.available()
True

A backend is an object with ``accepts(op, stack, inputs, *, preset, mask=None) -> bool`` and
the ops ``weights``, ``blend``, ``fuse`` and ``fuse_frames`` (see :class:`Backend`), and optionally
``fuse_checked`` (``fuse`` that also refuses the samples :func:`efusion._checks.check_samples`
refuses, with its ``ValueError``, or returns ``None`` to have the caller check and call ``fuse``);
``register(name, backend)`` adds one and the conformance tests (``tests/backends``) run it
against the reference.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any, Protocol

from torch import Tensor

from .._util import WeightParams

__all__ = ["Backend", "available", "current_options", "get", "register", "select", "use"]

#: operations a backend may implement
OPS = ("weights", "blend", "fuse", "fuse_frames")


class Backend(Protocol):
    """What :func:`select` needs of a backend (see :mod:`efusion.backends.reference` for the signatures)."""

    name: str

    def accepts(self, op: str, stack: Tensor, inputs: tuple, *, preset, mask: Tensor | None = None) -> bool:
        """Whether this backend runs ``op`` for a validated ``[B, N, C, H, W]`` stack and the call's
        other ``inputs`` (tensors or numbers; ``mask`` is also among them)."""
        ...

    def weights(self, stack: Tensor, mask: Tensor | None, params: WeightParams, preset) -> Tensor:
        """Normalised weights ``[B, N, 1, H, W]`` of a validated stack (equals the reference's)."""
        ...

    def blend(self, stack: Tensor, weights: Tensor, levels, preset, relative: bool | None) -> Tensor:
        """The Laplacian blend ``[B, C, H, W]`` of a stack by given weights (equals the reference's)."""
        ...

    def fuse(self, stack: Tensor, mask: Tensor | None, params: WeightParams, levels, preset,
             relative: bool | None) -> Tensor:
        """Weights then blend (equals the reference's)."""
        ...

    def fuse_frames(self, *args: Any, **kwargs: Any) -> Tensor | None:
        """Streamed fusion of frames read one at a time, or ``None`` to let the caller stack them."""
        ...


_registry: dict[str, Backend] = {}
#: the backend chosen by :func:`use` in this context (``None``: automatic) and its options
_choice: contextvars.ContextVar[tuple[str | None, dict]] = contextvars.ContextVar("efusion_backend", default=(None, {}))


def register(name: str, backend: Backend) -> None:
    """Add ``backend`` under ``name`` (it is tried, in registration order, when none is chosen)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a backend name must be a non-empty string, got {name!r}")
    if name in _registry:
        raise ValueError(f"a backend named {name!r} is already registered")
    _registry[name] = backend


def available() -> list[str]:
    """Names of the registered backends, ``"reference"`` first."""
    return list(_registry)


def get(name: str) -> Backend:
    """The backend registered as ``name``."""
    if name not in _registry:
        raise ValueError(f"unknown backend {name!r}; available: {available()}")
    return _registry[name]


@contextlib.contextmanager
def use(name: str | None, **options: Any) -> Iterator[None]:
    """Run the efusion calls inside the block with backend ``name`` (``None``: automatic).

    A chosen backend still declines calls it cannot serve (e.g. the ``"cpu"`` kernels under
    ``torch.func`` transforms or in half precision); those run the reference code. ``options``
    are the backend's own (``"cpu"``: ``band_elements``, the elements per band temporary;
    ``"native"``: ``weight_bytes``, the most bytes of weight planes ``fuse`` holds). The
    choice is per thread and per asynchronous context; under ``torch.compile`` it is read when
    the function is traced.
    """
    if name is not None:
        get(name)
    token = _choice.set((name, dict(options)))
    try:
        yield
    finally:
        _choice.reset(token)


def current_options() -> dict:
    """The options given to :func:`use` for the block the caller runs in (empty by default)."""
    return _choice.get()[1]


def select(op: str, stack: Tensor, inputs: tuple = (), *, preset, mask: Tensor | None = None) -> Backend:
    """The backend that runs ``op`` for this call: the one chosen with :func:`use` if it accepts
    the call, else (nothing chosen) the first registered backend that accepts it, else the reference."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; one of {OPS}")
    name, _ = _choice.get()
    reference = _registry["reference"]
    if name == "reference":
        return reference
    candidates = [_registry[name]] if name is not None else [b for n, b in _registry.items() if n != "reference"]
    for backend in candidates:
        if backend.accepts(op, stack, inputs, preset=preset, mask=mask):
            return backend
    return reference


# the built-in backends, imported last: they read current_options() from this module
from . import cpu, native, reference

register("reference", reference.BACKEND)
register("native", native.BACKEND)  # before "cpu": preferred for the calls it accepts
register("cpu", cpu.BACKEND)
