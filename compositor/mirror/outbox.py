"""The webhook outbox: the notices owed to clients' receivers, in order per
job, in lanes (one client's notices to one receiver) that are limited and back
off on their own. Notices are written in the transaction of the job change
that owes them (`queue_notice`); the dispatcher (`webhooks.py`) asks for the
due ones and records each attempt."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from compositor import text
from compositor.mirror.database import Database, now_ms

log = logging.getLogger(__name__)

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    url TEXT NOT NULL,
    receiver TEXT NOT NULL,
    status INTEGER NOT NULL,
    result_url TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    due_ms INTEGER NOT NULL,
    last_http_status INTEGER,
    last_error TEXT,
    lane TEXT NOT NULL DEFAULT '',
    head INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS lanes (
    lane TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    ready_ms INTEGER,
    blocked_until_ms INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0
);
"""
# Made after `migrate_outbox`, which gives older data dirs the columns these name.
# The outbox's indexes: a job's pending notices in order (the first is its `head`, the only one
# that may be sent), a lane's sendable notices by due time, and the lanes by when they are ready.
OUTBOX_INDEXES = """
DROP INDEX IF EXISTS webhooks_pending;
CREATE INDEX IF NOT EXISTS webhooks_by_job ON webhooks (job_id, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (lane, due_ms, id) WHERE state = 'pending' AND head = 1;
CREATE INDEX IF NOT EXISTS lanes_ready ON lanes (ready_ms) WHERE ready_ms IS NOT NULL;
"""


@dataclass(frozen=True)
class Notice:
    """One webhook notice waiting in the outbox: a job's new status, for its `webhookUrl`."""

    id: int
    job_id: str
    client_id: str
    url: str
    receiver: str
    status: int
    result_url: str | None
    attempts: int
    lane: str


class Outbox:
    """The notices in the mirror's database."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def due_notices(
        self,
        at_ms: int,
        busy_lanes: set[str],
        busy_clients: set[str] | None = None,
        limit: int = 32,
        in_flight: set[int] | None = None,
        per_lane: int = 2,
    ) -> list[Notice]:
        """Notices that may be sent now: each the oldest still pending for its
        job (so a job's notices go out in order), at most `per_lane` from one
        lane (a client's receiver), none from a busy lane or client (so a slow
        one's backlog never hides the others'), none of those `in_flight`
        (being delivered now), and none from a lane that is backing off after
        its receiver failed.

        Found through indexes: the ready lanes by time, then each one's due
        notices by time; what is pending but not due costs nothing here."""
        busy_clients, in_flight = busy_clients or set(), in_flight or set()
        lanes = ",".join("?" * len(busy_lanes))
        clients = ",".join("?" * len(busy_clients))
        with self._database.reading() as db:
            ready = db.execute(
                f"SELECT lane FROM lanes WHERE ready_ms <= ? AND lane NOT IN ({lanes})"
                f" AND client_id NOT IN ({clients}) ORDER BY ready_ms LIMIT ?",
                (at_ms, *sorted(busy_lanes), *sorted(busy_clients), limit),
            ).fetchall()
            due: list[Notice] = []
            for (lane,) in ready:
                rows = db.execute(
                    "SELECT * FROM webhooks WHERE lane = ? AND state = 'pending' AND head = 1 AND due_ms <= ?"
                    " ORDER BY due_ms, id LIMIT ?",
                    (lane, at_ms, per_lane + len(in_flight)),
                ).fetchall()
                fresh = [_notice(row) for row in rows if row["id"] not in in_flight]
                due.extend(fresh[: min(per_lane, limit - len(due))])
                if len(due) >= limit:
                    break
            return due

    def next_notice_due(self) -> int | None:
        rows = self._database.read("SELECT MIN(ready_ms) AS due FROM lanes")
        return rows[0]["due"] if rows else None

    def notice_attempted(
        self,
        notice_id: int,
        *,
        delivered: bool,
        http_status: int | None,
        error: str | None,
        retry_at_ms: int | None,
        lane_delay_ms: Callable[[int], int] | None = None,
    ) -> None:
        """Record one delivery attempt: delivered, to be retried at `retry_at_ms`,
        or abandoned (None). `lane_delay_ms` is given when the receiver itself
        failed (no answer, or not 200): its whole lane then waits that long
        (given the lane's failures in a row) before another of its notices is
        tried, so a dead receiver is probed, not hammered. A delivery clears it."""
        state = "delivered" if delivered else ("pending" if retry_at_ms is not None else "abandoned")
        with self._database.transaction() as db:
            row = db.execute(
                "UPDATE webhooks SET state = ?, attempts = attempts + 1, due_ms = COALESCE(?, due_ms),"
                " last_http_status = ?, last_error = ? WHERE id = ? RETURNING job_id, lane",
                (state, retry_at_ms, http_status, error, notice_id),
            ).fetchone()
            if row is None:
                return  # forgotten by a reset while it was being delivered
            if state != "pending":  # the job's next notice may be sent now
                db.execute("UPDATE webhooks SET head = 0 WHERE id = ?", (notice_id,))
                _promote_next_notice(db, row["job_id"])
            if delivered:
                db.execute("UPDATE lanes SET failures = 0, blocked_until_ms = 0 WHERE lane = ?", (row["lane"],))
            elif lane_delay_ms is not None:
                failures = db.execute(
                    "UPDATE lanes SET failures = failures + 1 WHERE lane = ? RETURNING failures", (row["lane"],)
                ).fetchone()
                if failures is not None:
                    db.execute(
                        "UPDATE lanes SET blocked_until_ms = ? WHERE lane = ?",
                        (now_ms() + lane_delay_ms(failures[0]), row["lane"]),
                    )
            _refresh_lane(db, row["lane"])

    def notices(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """Every notice (of one job), oldest first, as plain dicts."""
        if job_id is None:
            rows = self._database.read("SELECT * FROM webhooks ORDER BY id")
        else:
            rows = self._database.read("SELECT * FROM webhooks WHERE job_id = ? ORDER BY id", (job_id,))
        return [dict(row) for row in rows]


def queue_notice(
    db: sqlite3.Connection,
    job_id: str,
    client_id: str,
    url: object,
    status: int,
    result_url: str | None,
    *,
    once: bool = False,
) -> None:
    """Owe `url` a notice of the job's new `status`, in the caller's transaction. A status sent `once` is not
    queued again when the job already owes or sent it."""
    if not isinstance(url, str) or not url:
        return
    if not text.is_valid_text(url):
        # Refused at the door since; a job stored before that must not stop every other job's progress.
        log.warning("job %s: its webhookUrl is not valid Unicode text; no notice is sent", job_id)
        return
    if once and db.execute("SELECT 1 FROM webhooks WHERE job_id = ? AND status = ?", (job_id, status)).fetchone():
        return  # a job run again is no news to the receiver
    receiver = receiver_of(url)
    lane = lane_of(client_id, receiver)
    waiting = db.execute("SELECT 1 FROM webhooks WHERE job_id = ? AND state = 'pending'", (job_id,)).fetchone()
    db.execute(
        "INSERT INTO webhooks (job_id, client_id, url, receiver, status, result_url, due_ms, lane, head)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            *(job_id, client_id, url, receiver, status),
            *(result_url, now_ms(), lane, 0 if waiting else 1),
        ),
    )
    db.execute("INSERT OR IGNORE INTO lanes (lane, client_id) VALUES (?, ?)", (lane, client_id))
    _refresh_lane(db, lane)


def lane_of(client_id: str, receiver: str) -> str:
    """A lane: one client's notices to one receiver. Deliveries are limited, and
    back off after failures, per lane: one client's dead receiver never holds up
    another client's notices to the same host."""
    return f"{client_id}\x1f{receiver}"


def _promote_next_notice(db: sqlite3.Connection, job_id: str) -> None:
    """The job's oldest pending notice becomes its head, the one that may be sent."""
    row = db.execute(
        "UPDATE webhooks SET head = 1 WHERE id = (SELECT id FROM webhooks WHERE job_id = ? AND state = 'pending'"
        " ORDER BY id LIMIT 1) RETURNING lane",
        (job_id,),
    ).fetchone()
    if row is not None:
        _refresh_lane(db, row["lane"])


def _refresh_lane(db: sqlite3.Connection, lane: str) -> None:
    """When the lane is next ready: its earliest due head notice, or the end of its
    back-off if later; NULL when nothing in it is pending. An index lookup, not a scan."""
    row = db.execute(
        "SELECT MIN(due_ms) FROM webhooks WHERE lane = ? AND state = 'pending' AND head = 1", (lane,)
    ).fetchone()
    db.execute(
        "UPDATE lanes SET ready_ms = CASE WHEN ? IS NULL THEN NULL ELSE MAX(?, blocked_until_ms) END WHERE lane = ?",
        (row[0], row[0], lane),
    )


def receiver_of(url: str) -> str:
    """Who answers a webhook URL (its host and port): deliveries are limited per receiver."""
    parts = urlsplit(url)
    try:
        return f"{parts.hostname}:{parts.port}"
    except ValueError:
        return url


def _notice(row: sqlite3.Row) -> Notice:
    return Notice(**{name: row[name] for name in Notice.__dataclass_fields__})


def migrate_outbox(db: sqlite3.Connection) -> None:
    """Outboxes made before lanes: each pending notice gets its lane, each job's oldest pending one is its head."""
    if "lane" not in {row[1] for row in db.execute("PRAGMA table_info(webhooks)")}:
        db.execute("ALTER TABLE webhooks ADD COLUMN lane TEXT NOT NULL DEFAULT ''")
        db.execute("ALTER TABLE webhooks ADD COLUMN head INTEGER NOT NULL DEFAULT 0")
        db.execute("UPDATE webhooks SET lane = client_id || char(31) || receiver")
        db.execute(
            "UPDATE webhooks SET head = 1 WHERE id IN"
            " (SELECT MIN(id) FROM webhooks WHERE state = 'pending' GROUP BY job_id)"
        )
        db.execute("INSERT OR IGNORE INTO lanes (lane, client_id) SELECT DISTINCT lane, client_id FROM webhooks")
        for (lane,) in db.execute("SELECT lane FROM lanes").fetchall():
            _refresh_lane(db, lane)
