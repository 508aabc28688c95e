"""The one exception type of the training data."""
from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset cannot be used as given; the message names the file or folder and says why."""
