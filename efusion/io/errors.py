"""The errors of efusion's file handling, and the one-line text of an error for messages.

Every problem with an image file raises :class:`ImageIOError` and every problem with a parameter
file or value :class:`ParamsError`; each message names the file (or flag) and says why.
"""
from __future__ import annotations

__all__ = ["ImageIOError", "OutputExistsError", "ParamsError", "one_line", "output_exists"]


class ImageIOError(ValueError):
    """An image file cannot be read or written; the message names the file and says why.

    Attributes:
        errno: the operating system's error number when an OS error caused it (e.g.
            ``errno.ENOSPC`` for a full disk), else ``None``.
    """

    errno: int | None = None


class OutputExistsError(ImageIOError):
    """The output file exists and overwriting was not asked for."""


def output_exists(path: object) -> OutputExistsError:
    """The :class:`OutputExistsError` for ``path``, saying how to replace it."""
    return OutputExistsError(f"{path}: already exists (pass --force / overwrite=True to replace it)")


class ParamsError(ValueError):
    """A parameter file or value is not usable; the message names the file (or flag) and key."""


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (whitespace collapsed), or its type's name when it has none."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
