"""``python -m training``: see :mod:`training.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    result = main()
    if isinstance(result, int):
        sys.exit(result)
