"""The ``efusion`` console script: settings that must precede ``import torch``, then :func:`efusion.cli.main`.

OpenMP worker threads that find no work spin before they sleep (libgomp's default). On a machine
whose cores are busy with other processes, the spinning threads take the cores the working ones
need, and a fusion runs several times slower: ``efusion fuse`` of Memorial (16 frames, 512x768) on a
2-core machine with load ~5 plus one spinning Python process took 66 and 82 s with the default and
25 and 28 s through this launcher (``--threads 1``: 29 and 21 s). The OpenMP
runtime reads the setting once, when torch loads it, so it is set here, before anything imports
torch (this module imports neither torch nor efusion), and only when the user has not chosen.
``python -m efusion`` imports the package (and torch) first: set the variable yourself there.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``efusion`` (see :func:`efusion.cli.main`) with a passive OpenMP wait policy unless set."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from efusion.cli import main as run

    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())
