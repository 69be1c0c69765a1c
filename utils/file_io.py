"""Atomic file writes (a reader sees either the previous file or the complete new one) and file
digests.

References: detectron2 ``detectron2/utils/file_io.py`` (the module's role only).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "remove_stale_temporaries", "sha256_of_file"]

# Permissions of a new file before the umask: what open(path, "w") creates.
_NEW_FILE_MODE = 0o666
# Random bytes in a temporary file name (hex-encoded: twice as many characters).
_TEMP_NAME_BYTES = 8
# Attempts at an unused temporary name before giving up (a collision is astronomically rare).
_TEMP_NAME_ATTEMPTS = 100
_TEMP_SUFFIX = ".tmp"
# The temporary files atomic_write creates: ``.{name}.{random hex}.tmp`` (name possibly cut).
_TEMP_NAME = re.compile(rf"\..+\.[0-9a-f]{{{2 * _TEMP_NAME_BYTES}}}{re.escape(_TEMP_SUFFIX)}")
# Read size when hashing a file.
_HASH_CHUNK_BYTES = 1 << 20
# Longest file name, in bytes, where the file system does not say (NAME_MAX of Linux, macOS).
_DEFAULT_NAME_MAX = 255


def _name_max(folder: Path) -> int:
    """The longest file name ``folder``'s file system allows, in bytes."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):  # no such limit reported (or not on this OS)
        return _DEFAULT_NAME_MAX


def _temporary_name(name: str, name_max: int) -> str:
    """``.{name}.{random}.tmp``, with ``name`` cut short (whole characters) where the whole would
    exceed ``name_max`` bytes: a name the folder accepts always gets a temporary name it
    accepts, and the random part keeps it unpredictable."""
    random = secrets.token_hex(_TEMP_NAME_BYTES)
    room = name_max - len(f"..{random}{_TEMP_SUFFIX}")
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{name}.{random}{_TEMP_SUFFIX}"


def _create_exclusive(folder: Path, name: str) -> tuple[int, Path]:
    """Create a new file ``.{name}.{random}.tmp`` in ``folder`` for writing, exclusively (``name``
    shortened where the folder's file system would find the whole too long).

    ``O_CREAT | O_EXCL`` fails on any existing path, a planted symlink included, so the file is
    always a new one; its mode is ``_NEW_FILE_MODE`` under the process umask, as ``open`` gives
    (``tempfile.mkstemp`` would give 0600, and reading the umask means setting it, which is not
    thread-safe).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    name_max = _name_max(folder)
    for _ in range(_TEMP_NAME_ATTEMPTS):
        tmp_path = folder / _temporary_name(name, name_max)
        try:
            return os.open(tmp_path, flags, _NEW_FILE_MODE), tmp_path
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary file name for {name} in {folder}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a temporary file in the same folder and a rename.

    The temporary file is created exclusively with an unpredictable name, filled by ``write``,
    flushed to disk and renamed over ``path`` (``os.replace``), so ``path`` never holds a partial
    file, even if the process dies midway; on failure the temporary file is removed and the error
    propagates. The new file gets the permissions ``open`` would give it (0644 under the usual
    umask 022). The folder must exist.

    Args:
        path: the file to (over)write.
        write: called once with the temporary file, opened for binary writing.
    """
    path = Path(path)
    fd, tmp_path = _create_exclusive(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that writes of :func:`atomic_write` left in ``folder`` when
    their process was killed (call it only where no other process is writing).

    Returns:
        the files removed.
    """
    folder = Path(folder)
    stale = [p for p in folder.iterdir() if _TEMP_NAME.fullmatch(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def sha256_of_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 lower-case hex digits (``sha256sum``'s form)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
