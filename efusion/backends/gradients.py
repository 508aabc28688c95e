"""Second derivatives through the backends' autograd functions (``"cpu"``, ``"native"``): a
recorded backward (``create_graph=True``) is the reference code's gradient."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def reference_gradients(reference: Callable[[], Tensor], inputs: Sequence, needs: Sequence[bool], grad: Tensor) -> list:
    """An autograd function's backward when autograd records it (``create_graph=True``, for second
    derivatives): the gradients of ``reference()``, the reference code recomputed from the function's
    saved inputs, for the ``inputs`` that ``needs`` marks (``None`` for the others), as a graph.

    The kernels' hand-written backward is not itself differentiable; this one is, to any order, at
    the reference path's cost in time and memory.
    """
    wanted = [i for i, (x, need) in enumerate(zip(inputs, needs)) if need and isinstance(x, Tensor)]
    out: list = [None] * len(inputs)
    if wanted:
        with torch.enable_grad():
            grads = torch.autograd.grad(reference(), [inputs[i] for i in wanted], grad, create_graph=True,
                                        allow_unused=True)
        for i, g in zip(wanted, grads):
            out[i] = g
    return out
