"""utils.file_io.atomic_write: all or nothing, no predictable temporary name, normal permissions."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from utils.file_io import atomic_write, remove_stale_temporaries, sha256_of_file


def _write_bytes(data: bytes):
    return lambda file: file.write(data)


def test_writes_and_replaces_with_the_permissions_open_gives(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    atomic_write(path, _write_bytes(b"first"))
    atomic_write(path, _write_bytes(b"second"))
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    reference = tmp_path / "reference"
    reference.write_bytes(b"")  # created by open(), under the same umask
    assert path.stat().st_mode == reference.stat().st_mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"good")

    def half_then_crash(file) -> None:
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_crash)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_planted_predictable_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    path = tmp_path / "out.bin"
    for name in (f"{path.name}.tmp", f".{path.name}.tmp"):  # the names a naive writer would use
        os.symlink(victim, tmp_path / name)
    atomic_write(path, _write_bytes(b"new"))
    assert victim.read_bytes() == b"keep me"
    assert path.read_bytes() == b"new" and not path.is_symlink()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_follow_the_umask_as_open_does(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "out.bin", _write_bytes(b"x"))
        (tmp_path / "reference").write_bytes(b"")
    finally:
        os.umask(previous)
    mode = (tmp_path / "out.bin").stat().st_mode & 0o777
    assert mode == (tmp_path / "reference").stat().st_mode & 0o777 == 0o666 & ~umask


def test_sha256_of_file_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # more than one read chunk
    (tmp_path / "blob").write_bytes(data)
    assert sha256_of_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_the_temporary_file_of_a_killed_write_is_found_and_removed(tmp_path: Path) -> None:
    """A process killed inside ``write`` leaves its temporary file; the cleanup removes exactly
    such files (not other hidden or .tmp files)."""

    def killed(file) -> None:
        file.write(b"half")
        os._exit(0)  # the child dies here, as a killed process would

    pid = os.fork()
    if pid == 0:
        atomic_write(tmp_path / "out.png", killed)
    os.waitpid(pid, 0)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.png.")
    (tmp_path / ".hidden.tmp").write_bytes(b"keep")
    (tmp_path / "notes.tmp").write_bytes(b"keep")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.tmp", "notes.tmp"]


@pytest.mark.parametrize("stem_bytes", [200, 239, 251])
@pytest.mark.parametrize("character", ["a", "é", "猫"])
def test_a_name_the_folder_allows_is_written_whatever_its_length(
    tmp_path: Path, stem_bytes: int, character: str
) -> None:
    """The temporary name never needs more bytes than the final one may have (NAME_MAX)."""
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    width = len(character.encode())
    name = character * ((min(stem_bytes, name_max - 4)) // width) + ".png"
    assert len(name.encode()) <= name_max
    seen = []

    def write(file) -> None:
        seen.extend(p.name for p in tmp_path.iterdir())  # the temporary file, while written
        file.write(b"x")

    atomic_write(tmp_path / name, write)
    assert (tmp_path / name).read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir()] == [name]
    (temporary,) = seen
    assert len(os.fsencode(temporary)) <= name_max and temporary.startswith(".")


def test_temporary_names_stay_unpredictable_when_shortened(tmp_path: Path) -> None:
    name = "n" * 250 + ".png"
    seen = []
    for _ in range(2):
        atomic_write(tmp_path / name, lambda file: seen.extend(p.name for p in tmp_path.iterdir()))
    temporaries = [seen_name for seen_name in seen if seen_name != name]
    assert len(temporaries) == 2 and temporaries[0] != temporaries[1]
