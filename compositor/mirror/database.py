"""The mirror's SQLite file, shared by the job store and the outbox so that a
job's change and the notice it owes commit in one transaction: one
connection for every thread, one writer at a time, and every SQLite failure
raised as a `StoreError` that says why in words."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class StoreError(Exception):
    """The job store cannot be read or written right now. `reason` says why
    in words for the caller (no paths, no SQL)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StoreFullError(StoreError):
    """The disk (or quota) under the data dir is full: transient, it passes when space returns."""


class StoreDamagedError(StoreError):
    """The database file is damaged: it needs a person."""


def store_error(exc: sqlite3.Error) -> StoreError:
    text = str(exc).lower()
    if "full" in text or "no space" in text:
        return StoreFullError("the disk under the data dir is full")
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return StoreDamagedError("the job database is damaged")
    return StoreError(f"the job database failed ({type(exc).__name__})")


class Database:
    """The file at `path` (WAL), checked, and laid out by `set_up` (tables,
    migrations of older data dirs, indexes) before first use."""

    def __init__(self, path: Path, set_up: Callable[[sqlite3.Connection], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise StoreDamagedError(f"the job database {path} is damaged ({problems[0]})")
            set_up(self._db)
        except sqlite3.Error as exc:
            error = store_error(exc)
            raise type(error)(f"{error.reason}: {path} ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; any SQLite failure rolls it back and is raised as a StoreError."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise store_error(exc) from None

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads outside a transaction, one caller at a time."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise store_error(exc) from None

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self.reading() as db:
            return db.execute(sql, params).fetchall()


def now_ms() -> int:
    return int(time.time() * 1000)
