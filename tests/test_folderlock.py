"""The folder lock a batch's output folder and a mirror's data dir are held by: one holder at a time, a refusal
that names the holder, and a note that never writes through what was planted at its name."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from compositor.folderlock import FolderInUseError, FolderLock, FolderLockError, LockingUnsupportedError
from compositor.mirror.lock import DataDirLock, DataDirUnavailableError


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    first = FolderLock(tmp_path, "batch", {})
    try:
        with pytest.raises(FolderInUseError, match=f"in use by the batch with pid {os.getpid()} "):
            FolderLock(tmp_path, "batch", {})
    finally:
        first.release()
    FolderLock(tmp_path, "batch", {}).release()  # free once released


def test_a_batch_refused_by_a_mirrors_data_dir_names_the_mirror(tmp_path: Path) -> None:
    mirror = DataDirLock(tmp_path, {"url": "http://127.0.0.1:8000"})
    try:
        with pytest.raises(FolderInUseError, match=r"in use by the mirror with pid \d+ at http://127\.0\.0\.1:8000"):
            FolderLock(tmp_path, "batch", {})
    finally:
        mirror.release()


def test_a_link_planted_as_the_note_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("someone's file")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / ".compositor-batch.lock").symlink_to(victim)
    FolderLock(folder, "batch", {}, remove_note=True).release()
    assert victim.read_text() == "someone's file"
    assert not (folder / ".compositor-batch.lock").exists()


def test_a_linked_note_is_not_read_into_a_refusal(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"kind": "secret", "pid": 1, "since": 0}')
    folder = tmp_path / "out"
    first = FolderLock(folder, "batch", {})
    try:
        (folder / "mirror.lock").symlink_to(secret)
        (folder / ".compositor-batch.lock").unlink()
        with pytest.raises(FolderInUseError, match=r"in use by another process$"):
            FolderLock(folder, "batch", {})
    finally:
        first.release()


def test_a_folder_that_cannot_be_opened_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unlistable(path: object, flags: int, *args: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("compositor.folderlock.os.open", unlistable)
    with pytest.raises(FolderLockError, match=re.escape(f"cannot open {tmp_path} to lock it: Permission denied")):
        FolderLock(tmp_path, "batch", {})


def test_a_data_dir_without_locks_stops_the_mirror_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("compositor.folderlock.fcntl.flock", no_locks)
    with pytest.raises(LockingUnsupportedError):
        FolderLock(tmp_path, "batch", {})
    with pytest.raises(DataDirUnavailableError) as refused:
        DataDirLock(tmp_path, {"url": "http://127.0.0.1:8000"})
    said = str(refused.value)
    assert said.startswith(f"cannot lock {tmp_path}: No locks available") and "pass another --data-dir" in said
    assert "Errno" not in said
