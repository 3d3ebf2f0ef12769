"""One mirror per data dir. Two servers on one job store would each take the
other's live jobs for interrupted ones and render them twice, so the second
refuses to start, naming the first. The lock is the kernel's (flock), so it
goes with its process, however that process ends."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path


class DataDirInUseError(Exception):
    """Another process holds the data dir."""


class DataDirLock:
    """The lock is taken on the data dir itself, not on a file in it that a
    person could delete; `mirror.lock` beside it only says who holds it."""

    def __init__(self, data_dir: Path, holder: dict[str, object]) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "mirror.lock"
        self._fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise DataDirInUseError(f"the data dir {data_dir} is in use by {_describe(self.path)}") from None
        self.path.write_text(json.dumps({**holder, "pid": os.getpid(), "since": int(time.time())}))

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def _describe(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(holder["since"])))
        return (
            f"the mirror with pid {holder['pid']} at {holder.get('url', '?')} (since {since}):"
            " stop it, or pass another --data-dir"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process: stop it, or pass another --data-dir"
