"""One writer per folder. A mirror's data dir and a batch's output folder each
belong to one process at a time: a second one would take the first one's work
for its own (a mirror, another's live jobs; a batch, another's partial results
and its report). The lock is the kernel's (flock) on the folder itself, not on
a file in it that a person could delete, so it goes with its process however
that process ends; a note file in the folder only says who holds it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

# Each holder's note, by kind: a refusal names whichever holder's note it finds (a batch refused by a mirror's
# data dir names the mirror).
NOTES = {"mirror": "mirror.lock", "batch": ".compositor-batch.lock"}


class FolderLockError(Exception):
    """The folder cannot be locked (it cannot be opened, say); the message names it and why."""


class LockingUnsupportedError(FolderLockError):
    """The folder's file system has no flock (some network and FUSE file systems)."""


class FolderInUseError(FolderLockError):
    """Another process holds the folder; `holder` is what its note says (None when none can be read)."""

    def __init__(self, folder: Path, holder: dict[str, object] | None) -> None:
        super().__init__(f"{folder} is in use by {describe_holder(holder)}")
        self.folder = folder
        self.holder = holder


class FolderLock:
    """Held from construction to `release()` (or the process's end), for a holder of `kind` (a key of NOTES).
    `holder` is written to its note, with this process's pid and the time; with `remove_note`, the note is
    removed again on release."""

    def __init__(self, folder: Path, kind: str, holder: dict[str, object], *, remove_note: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.note = folder / NOTES[kind]
        self._remove_note = remove_note
        try:
            self._fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise FolderLockError(f"cannot open {folder} to lock it: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            notes = [self.note, *(folder / name for name in NOTES.values() if name != self.note.name)]
            raise FolderInUseError(folder, next(filter(None, map(_read_note, notes)), None)) from None
        except OSError as exc:
            os.close(self._fd)
            raise LockingUnsupportedError(f"cannot lock {folder}: {exc.strerror or exc}") from None
        try:
            _write_note(self.note, {"kind": kind, **holder, "pid": os.getpid(), "since": int(time.time())})
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._fd >= 0:
            if self._remove_note:
                # Before the lock goes: a note removed after it could be the next holder's.
                self.note.unlink(missing_ok=True)
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def describe_holder(holder: dict[str, object] | None) -> str:
    """'the batch with pid 12 (since 2026-12-01 13:00:00)', from a note; 'another process' without one."""
    if holder is None:
        return "another process"
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(str(holder["since"]))))
        where = f" at {holder['url']}" if holder.get("url") else ""
        return f"the {holder.get('kind', 'process')} with pid {holder['pid']}{where} (since {since})"
    except (KeyError, ValueError, TypeError):
        return "another process"


def _write_note(note: Path, holder: dict[str, object]) -> None:
    """The note, as a new file: whatever was at its name (a link planted there, say) is replaced, never
    written through."""
    note.unlink(missing_ok=True)
    fd = os.open(note, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as sink:
        sink.write(json.dumps(holder))


def _read_note(note: Path) -> dict[str, object] | None:
    try:
        fd = os.open(note, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd) as source, contextlib.suppress(OSError, ValueError):
        holder = json.loads(source.read(4096))
        return holder if isinstance(holder, dict) else None
    return None
