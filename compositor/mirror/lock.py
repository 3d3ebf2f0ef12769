"""One mirror per data dir. Two servers on one job store would each take the
other's live jobs for interrupted ones and render them twice, so the second
refuses to start, naming the first (see `compositor.folderlock`); so does a
data dir that cannot be locked, since nothing would then keep two apart."""

from __future__ import annotations

from pathlib import Path

from compositor.folderlock import FolderInUseError, FolderLock, FolderLockError, describe_holder


class DataDirUnavailableError(Exception):
    """Another process holds the data dir, or it cannot be locked."""


class DataDirLock:
    """The data dir's lock; `mirror.lock` in it says which mirror holds it (deleting it changes nothing)."""

    def __init__(self, data_dir: Path, holder: dict[str, object]) -> None:
        try:
            self._lock = FolderLock(data_dir, "mirror", holder)
        except FolderInUseError as exc:
            raise DataDirUnavailableError(
                f"the data dir {data_dir} is in use by {describe_holder(exc.holder)}: stop it, or pass another"
                " --data-dir"
            ) from None
        except FolderLockError as exc:
            raise DataDirUnavailableError(
                f"{exc}: the data dir must be on a file system with locks (flock), which keep two mirrors from"
                " sharing it; pass another --data-dir"
            ) from None
        self.path = self._lock.note

    def release(self) -> None:
        self._lock.release()
