"""``python -m efusion``: the ``efusion`` command line (see :mod:`efusion.cli`)."""
from efusion.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
