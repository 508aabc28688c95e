"""Files and folders: listing a bracket folder's frames, and atomic, no-clobber writes.

Every write goes to a temporary file in the destination folder that is renamed into place once
complete, so an interrupted run never leaves a half-written file, and an existing file is only
replaced when asked to (``overwrite=True``).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import ImageIOError, one_line, output_exists
from .formats import IMAGE_SUFFIXES

__all__ = ["atomic_file", "list_frames"]


def list_frames(folder: str | os.PathLike) -> list[Path]:
    """Image files of a bracket folder (:data:`IMAGE_SUFFIXES`), sorted by name.

    Hidden files (names starting with ``.``, such as unfinished writes) are skipped.

    Raises:
        ImageIOError: the folder does not exist, is not a folder, or holds no image file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ImageIOError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ImageIOError(f"{folder}: not a folder")
    try:
        frames = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
    except OSError as error:
        raise ImageIOError(f"{folder}: cannot list the folder ({error.strerror or error})") from None
    if not frames:
        if _holds_bracket_folders(folder):  # a shoot of brackets given as one bracket
            pattern = os.path.join(str(folder), "*", "")
            raise ImageIOError(
                f"{folder}: holds folders of images, not images: give each bracket folder, e.g. {pattern}"
            )
        raise ImageIOError(f"{folder}: no image files in the folder (looked for {', '.join(IMAGE_SUFFIXES)})")
    return frames


def _holds_bracket_folders(folder: Path) -> bool:
    """Whether some sub-folder of ``folder`` holds image files."""
    try:
        for sub in folder.iterdir():
            if (
                sub.is_dir()
                and not sub.name.startswith(".")
                and any(p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") for p in sub.iterdir())
            ):
                return True
    except OSError:
        return False
    return False


@contextlib.contextmanager
def atomic_file(path: Path, *, overwrite: bool) -> Iterator[IO[bytes]]:
    """A binary file handle whose content appears at ``path`` only once complete.

    The data goes to a hidden ``.<name>.<random>.part`` in the same folder (so the final rename
    stays on one file system), is flushed to disk, then renamed. Without ``overwrite`` the
    rename is a hard link, which fails rather than replace a file that appeared meanwhile.
    Any error, including KeyboardInterrupt, removes the temporary file.
    """
    folder = path.parent
    try:
        fd, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".part")
    except FileNotFoundError:
        raise ImageIOError(f"{path}: cannot write, folder {folder} does not exist") from None
    except OSError as error:
        raise _os_error(f"{path}: cannot write into {folder} ({error.strerror or error})", error) from None
    os.close(fd)  # reopened by name: some writers (tifffile) want a handle with a file name
    temp = Path(temp_name)
    try:
        with open(temp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        if overwrite:
            os.replace(temp, path)
        else:
            _rename_no_clobber(temp, path)
        _fsync_folder(folder)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(error, OSError) and not isinstance(error, ImageIOError):
            raise _os_error(f"{path}: cannot write ({error.strerror or one_line(error)})", error) from None
        raise


def _rename_no_clobber(temp: Path, path: Path) -> None:
    try:
        os.link(temp, path)
    except FileExistsError:
        raise output_exists(path) from None
    except OSError:  # no hard links here (some network or FAT file systems): check, then rename
        if path.exists():
            raise output_exists(path) from None
        os.replace(temp, path)
        return
    temp.unlink()


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable where the platform allows it."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def _os_error(message: str, error: OSError) -> ImageIOError:
    """An :class:`ImageIOError` for an OS error, keeping its errno."""
    wrapped = ImageIOError(message)
    wrapped.errno = error.errno
    return wrapped
