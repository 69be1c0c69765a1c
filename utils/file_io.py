"""Atomic file writes: a reader sees either the previous file or the complete new one.

References: detectron2 ``detectron2/utils/file_io.py`` (the module's role only).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write"]

# Permissions of a new file before the umask: what open(path, "w") would create.
_NEW_FILE_MODE = 0o666


def _new_file_mode() -> int:
    """``_NEW_FILE_MODE`` under the process umask (``mkstemp`` itself creates files as 0600)."""
    umask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return _NEW_FILE_MODE & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a temporary file in the same folder and a rename.

    The temporary file is created exclusively with an unpredictable name (``tempfile.mkstemp``),
    filled by ``write``, flushed to disk and renamed over ``path`` (``os.replace``), so ``path``
    never holds a partial file, even if the process dies midway; on failure the temporary file is
    removed and the error propagates. The new file gets the permissions ``open`` would give it.
    The folder must exist.

    Args:
        path: the file to (over)write.
        write: called once with the temporary file, opened for binary writing.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), _new_file_mode())
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_name)
        raise
