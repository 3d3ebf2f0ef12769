"""One mirror per data dir. Two servers on one job store would each take the
other's live jobs for interrupted ones and render them twice, so the second
refuses to start, naming the first (see `compositor.folderlock`)."""

from __future__ import annotations

from pathlib import Path

from compositor.folderlock import FolderInUseError, FolderLock, describe_holder


class DataDirInUseError(Exception):
    """Another process holds the data dir."""


class DataDirLock:
    """The data dir's lock; `mirror.lock` in it says which mirror holds it (deleting it changes nothing)."""

    def __init__(self, data_dir: Path, holder: dict[str, object]) -> None:
        try:
            self._lock = FolderLock(data_dir, "mirror.lock", {"kind": "mirror", **holder})
        except FolderInUseError as exc:
            raise DataDirInUseError(
                f"the data dir {data_dir} is in use by {describe_holder(exc.holder)}: stop it, or pass another"
                " --data-dir"
            ) from None
        self.path = self._lock.note

    def release(self) -> None:
        self._lock.release()
