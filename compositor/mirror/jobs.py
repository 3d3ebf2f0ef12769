"""The job store: each job's record and its life (queued, processing,
completed, failed), and the credits its making charges. Every change is one
transaction, with the webhook notice it owes written to the outbox in that
same transaction."""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compositor import text
from compositor.errors import ApiCode
from compositor.mirror.accounts import CREDITS_PER_JOB, Client
from compositor.mirror.api_error import ApiError
from compositor.mirror.controls import JobPolicy
from compositor.mirror.database import Database, now_ms
from compositor.mirror.outbox import OUTBOX_INDEXES, OUTBOX_SCHEMA, Outbox, migrate_outbox, queue_notice

log = logging.getLogger(__name__)

QUEUEING, PROCESSING, COMPLETED, FAILED = 1, 2, 3, 4


@dataclass
class Job:
    id: str
    image_id: str
    client_id: str
    uid: int
    body: dict[str, Any]
    status: int
    create_time: int
    updated_time: int
    image_url: str | None = None
    result_path: str | None = None
    error_reasons: list[str] = field(default_factory=list)
    expired: bool = False
    attempts: int = 0
    # A job policy (test controls): status 1 for the first `queueing_polls`
    # info polls, 2 for the next `processing_polls`; runs (or fails with
    # `fail_reason`) once `polls` reaches `release_polls`.
    queueing_polls: int = 0
    processing_polls: int = 0
    fail_reason: str | None = None
    polls: int = 0
    release_polls: int = 0
    # A job whose result could not be stored (a full disk) waits aside until
    # `not_before_ms`, so the jobs behind it run; `setbacks` counts those waits.
    not_before_ms: int = 0
    setbacks: int = 0
    # What the answers warn about, as {field, message}: the body's own warnings and pre-flight's from the
    # sources read at accept, then those the worker adds from the sources it downloads (see service.py).
    warnings: list[dict[str, str]] = field(default_factory=list)
    # What of the stored record could not be read back (a version before the text rule, a damaged row): the
    # job can still be polled and listed, and fails when it is claimed.
    damaged: str | None = None

    @property
    def visible_status(self) -> int:
        """What a poll answers: a held job past its queueing polls is processing, as far as its caller knows."""
        if self.status == QUEUEING and self.release_polls and self.polls > self.queueing_polls:
            return PROCESSING
        return self.status

    def summary(self) -> dict[str, Any]:
        """The job as the control plane lists it."""
        return {
            "_id": self.id,
            "client_id": self.client_id,
            "image_status": self.visible_status,
            "create_time": self.create_time,
            "error_reasons": list(self.error_reasons),
        }

    def to_api(self) -> dict[str, Any]:
        """The record as the docs' examples show it."""
        record: dict[str, Any] = {
            "_id": self.id,
            "uid": self.uid,
            "type": 3,
            "faceswap_quality": 2,
            "image_id": self.image_id,
            "image_sub_status": self.visible_status,
            "image_status": self.visible_status,
            "deduction_credit": CREDITS_PER_JOB,
            "buttons": [],
            "used_buttons": [],
            "upscaled_urls": [],
            "error_reasons": list(self.error_reasons),
            "create_time": self.create_time,
            "__v": 0,
        }
        if self.status == COMPLETED:
            record["image"] = "" if self.expired else self.image_url
            record["external_img"] = "" if self.expired else self.image_url
            if self.expired:
                record["expired"] = True
        if self.warnings:  # an addition of ours, absent when there are none: upstream clients ignore it
            record["warnings"] = [dict(warning) for warning in self.warnings]
        return record


_JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    image_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    uid INTEGER NOT NULL,
    body TEXT NOT NULL,
    status INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    updated_time INTEGER NOT NULL,
    image_url TEXT,
    result_path TEXT,
    error_reasons TEXT NOT NULL DEFAULT '[]',
    expired INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    queueing_polls INTEGER NOT NULL DEFAULT 0,
    processing_polls INTEGER NOT NULL DEFAULT 0,
    fail_reason TEXT,
    polls INTEGER NOT NULL DEFAULT 0,
    release_polls INTEGER NOT NULL DEFAULT 0,
    not_before_ms INTEGER NOT NULL DEFAULT 0,
    setbacks INTEGER NOT NULL DEFAULT 0,
    warnings TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, create_time);
CREATE TABLE IF NOT EXISTS credits (client_id TEXT PRIMARY KEY, used INTEGER NOT NULL);
"""


def _set_up(db: sqlite3.Connection) -> None:
    db.executescript(_JOBS_SCHEMA + OUTBOX_SCHEMA)
    _add_missing_columns(db)
    migrate_outbox(db)
    db.executescript(OUTBOX_INDEXES)  # after the migration, which gives older outboxes the columns they name


class JobStore:
    """Jobs and credits in the mirror's database (WAL), safe to share between
    threads; the webhook outbox (`outbox`) is in the same file.

    Every state change is one transaction, and the webhook notice it owes is
    written in that same transaction, so a crash at any point leaves each job
    either queued, processing (re-queued at start-up) or finished, with its
    notices already in the outbox. Every SQLite failure comes out as a
    `StoreError`."""

    def __init__(self, path: Path) -> None:
        self._database = Database(path, _set_up)
        self.outbox = Outbox(self._database)

    def close(self) -> None:
        self._database.close()

    def create(
        self,
        client: Client,
        body: dict[str, Any],
        policy: JobPolicy | None = None,
        before_commit: Callable[[Job], None] | None = None,
        warnings: list[dict[str, str]] | None = None,
    ) -> Job:
        """Store a queued job (with the warnings its answer carries), charging
        the client's credits in the same transaction. `before_commit` runs inside that transaction, last: the
        caller makes its answer there, so that a failure to make it (or
        anything before) leaves no job and no charge."""
        now = now_ms()
        policy = policy or JobPolicy()
        held = policy.queueing_polls + policy.processing_polls
        job = Job(
            id=secrets.token_hex(12),
            image_id=str(uuid.uuid4()),
            client_id=client.client_id,
            uid=client.uid,
            body=body,
            status=QUEUEING,
            create_time=now,
            updated_time=now,
            queueing_polls=policy.queueing_polls,
            processing_polls=policy.processing_polls,
            fail_reason=policy.fail,
            # Released by the poll after the held ones; a policy that holds nothing releases at once.
            release_polls=held + 1 if held else 0,
            warnings=list(warnings or []),
        )
        with self._database.transaction() as db:
            if client.quota is not None:
                db.execute("INSERT OR IGNORE INTO credits VALUES (?, 0)", (client.client_id,))
                charged = db.execute(
                    "UPDATE credits SET used = used + ? WHERE client_id = ? AND used + ? <= ?",
                    (CREDITS_PER_JOB, client.client_id, CREDITS_PER_JOB, client.quota),
                ).rowcount
                if charged == 0:
                    raise ApiError(ApiCode.QUOTA_NOT_ENOUGH, "quota is not enough")
            db.execute(
                "INSERT INTO jobs (id, image_id, client_id, uid, body, status, create_time, updated_time,"
                " queueing_polls, processing_polls, fail_reason, release_polls, warnings)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *(job.id, job.image_id, job.client_id, job.uid, json.dumps(body), QUEUEING, now, now),
                    *(job.queueing_polls, job.processing_polls, job.fail_reason, job.release_polls),
                    json.dumps(job.warnings),
                ),
            )
            if before_commit is not None:
                before_commit(job)
        return job

    def poll(self, job_id: str) -> Job | None:
        """The job, as one more info poll leaves it: a job held by a policy
        counts the poll, turns processing (its notice queued) after its
        queueing polls, and is released (or failed, with its policy's reason)
        after its processing polls."""
        with self._database.transaction() as db:
            row = db.execute(
                "UPDATE jobs SET polls = polls + 1 WHERE id = ? AND status = ? AND polls < release_polls RETURNING *",
                (job_id, QUEUEING),
            ).fetchone()
            if row is None:
                row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                return _job(row) if row is not None else None
            job = _job(row)
            if job.polls == job.queueing_polls + 1 and job.processing_polls:
                _notify(db, job, PROCESSING)
            if job.polls >= job.release_polls and job.fail_reason is not None:
                finished = self._finish_in(db, job.id, FAILED, (QUEUEING,), error_reasons=json.dumps([job.fail_reason]))
                return finished or job
        return job

    def get(self, job_id: str) -> Job | None:
        rows = self._database.read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def claim_next(self, job_id: str | None = None) -> Job | None:
        """The oldest queued job that no policy holds and that is not set
        aside (or that one job, if it may run), now marked processing (its
        notice queued); None when none waits.

        A job whose stored record cannot be read back (written by an older
        version, say, before text was checked at the door) can only fail
        itself: it is failed here, in the same transaction, and the next one
        is claimed."""
        which = "AND id = ?" if job_id is not None else ""
        while True:
            with self._database.transaction() as db:
                now = now_ms()
                row = db.execute(
                    "UPDATE jobs SET status = ?, updated_time = ?, attempts = attempts + 1"
                    " WHERE id = (SELECT id FROM jobs WHERE status = ? AND polls >= release_polls"
                    f" AND not_before_ms <= ? {which} ORDER BY create_time, rowid LIMIT 1) RETURNING *",
                    (PROCESSING, now, QUEUEING, now, *([job_id] if job_id is not None else [])),
                ).fetchone()
                if row is None:
                    return None
                try:
                    job = _job(row)
                    problem = job.damaged
                    if problem is None and text.unencodable_field(job.body) is not None:
                        problem = "its body holds text that is not valid Unicode"  # stored before the door's rule
                    if problem is None:
                        _notify(db, job, PROCESSING)
                        return job
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    problem = type(exc).__name__
                # The job cannot run: it fails alone (no notice: its URL may be what cannot be read), and the
                # next one is claimed.
                reason = f"the job's stored record cannot be read: {problem}"
                db.execute(
                    "UPDATE jobs SET status = ?, error_reasons = ? WHERE id = ?",
                    (FAILED, json.dumps([reason]), row["id"]),
                )
                log.warning("job %s: %s; failed", row["id"], reason)
                if job_id is not None:
                    return None

    def complete(
        self, job_id: str, result_path: str, image_url: str, warnings: list[dict[str, str]] | None = None
    ) -> bool:
        """Whether the job was still processing (it may have been failed by hand, or forgotten by a reset).
        `warnings`, when given, replace the job's (the worker's added to those from accept), in the same
        transaction: a poll that sees the job finished sees them."""
        columns = {"result_path": result_path, "image_url": image_url, **_warnings_column(warnings)}
        return self._finish(job_id, COMPLETED, **columns) is not None

    def fail(self, job_id: str, reasons: list[str], warnings: list[dict[str, str]] | None = None) -> None:
        self._finish(job_id, FAILED, error_reasons=json.dumps(reasons), **_warnings_column(warnings))

    def fail_unfinished(self, job_id: str, reason: str) -> Job | None:
        """A queued or processing job ended with status 4 and `reason` (its
        webhook queued); None when there is no such job or it has ended."""
        with self._database.transaction() as db:
            return self._finish_in(db, job_id, FAILED, (QUEUEING, PROCESSING), error_reasons=json.dumps([reason]))

    def jobs(self) -> list[Job]:
        return [_job(row) for row in self._database.read("SELECT * FROM jobs ORDER BY create_time, rowid")]

    def forget_all(self) -> list[str]:
        """Every job, notice and credit spent, gone (clients stay, in the
        server's settings); the paths of the results that were stored."""
        with self._database.transaction() as db:
            paths = [row[0] for row in db.execute("SELECT result_path FROM jobs WHERE result_path IS NOT NULL")]
            for table in ("jobs", "webhooks", "lanes", "credits"):
                db.execute(f"DELETE FROM {table}")
        return paths

    def requeue(self, job_id: str, *, count_attempt: bool = True) -> None:
        """A processing job back in the queue, to run again. An attempt that
        was not the job's fault (no space for its result) does not count."""
        with self._database.transaction() as db:
            db.execute(
                "UPDATE jobs SET status = ?, updated_time = ?, attempts = attempts - ? WHERE id = ? AND status = ?",
                (QUEUEING, now_ms(), 0 if count_attempt else 1, job_id, PROCESSING),
            )

    def set_aside(self, job_id: str, until_ms: int) -> None:
        """A processing job back in the queue, not to run before `until_ms`:
        its result could not be stored (a full disk), which is not its fault
        (the attempt is not counted), and the jobs behind it run meanwhile."""
        with self._database.transaction() as db:
            db.execute(
                "UPDATE jobs SET status = ?, updated_time = ?, attempts = attempts - 1, not_before_ms = ?,"
                " setbacks = setbacks + 1 WHERE id = ? AND status = ?",
                (QUEUEING, now_ms(), until_ms, job_id, PROCESSING),
            )

    def _finish(self, job_id: str, status: int, **columns: str) -> Job | None:
        with self._database.transaction() as db:
            return self._finish_in(db, job_id, status, (PROCESSING,), **columns)

    @staticmethod
    def _finish_in(
        db: sqlite3.Connection, job_id: str, status: int, from_statuses: tuple[int, ...], **columns: str
    ) -> Job | None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        states = ", ".join("?" * len(from_statuses))
        row = db.execute(
            f"UPDATE jobs SET status = ?, updated_time = ?, {assignments} WHERE id = ? AND status IN ({states})"
            " RETURNING *",
            (status, now_ms(), *columns.values(), job_id, *from_statuses),
        ).fetchone()
        if row is None:
            return None
        job = _job(row)
        _notify(db, job, status)
        return job

    def requeue_interrupted(self) -> int:
        """Jobs left processing by a process that died go back to the queue."""
        with self._database.transaction() as db:
            return db.execute(
                "UPDATE jobs SET status = ?, updated_time = ? WHERE status = ?", (QUEUEING, now_ms(), PROCESSING)
            ).rowcount

    def expire(self, older_than_ms: int) -> list[str]:
        """Mark results older than the cut-off expired; their files' paths."""
        with self._database.transaction() as db:
            rows = db.execute(
                "UPDATE jobs SET expired = 1 WHERE status = ? AND expired = 0 AND updated_time < ?"
                " RETURNING result_path",
                (COMPLETED, older_than_ms),
            ).fetchall()
        return [row["result_path"] for row in rows if row["result_path"]]


def _warnings_column(warnings: list[dict[str, str]] | None) -> dict[str, str]:
    return {} if warnings is None else {"warnings": json.dumps(warnings)}


def _notify(db: sqlite3.Connection, job: Job, status: int) -> None:
    """The notice the job's change owes its webhook, if it has one (a job run again is no news: processing once)."""
    result_url = job.image_url if status == COMPLETED else None
    queue_notice(db, job.id, job.client_id, job.body.get("webhookUrl"), status, result_url, once=status == PROCESSING)


def _job(row: sqlite3.Row) -> Job:
    body, damaged = _stored_json(row["body"], dict, "its body")
    reasons, damaged_reasons = _stored_json(row["error_reasons"], list, "its error reasons")
    return Job(
        id=row["id"],
        image_id=row["image_id"],
        client_id=row["client_id"],
        uid=row["uid"],
        body=body,
        status=row["status"],
        create_time=row["create_time"],
        updated_time=row["updated_time"],
        image_url=row["image_url"],
        result_path=row["result_path"],
        error_reasons=[reason for reason in reasons if isinstance(reason, str) and text.is_valid_text(reason)],
        expired=bool(row["expired"]),
        attempts=row["attempts"],
        queueing_polls=row["queueing_polls"],
        processing_polls=row["processing_polls"],
        fail_reason=row["fail_reason"],
        polls=row["polls"],
        release_polls=row["release_polls"],
        not_before_ms=row["not_before_ms"],
        setbacks=row["setbacks"],
        warnings=_stored_warnings(row["warnings"]),
        damaged=damaged or damaged_reasons,
    )


def _stored_json(raw: str, kind: type, what: str) -> tuple[Any, str | None]:
    """A JSON column read back, or an empty `kind` and what is wrong with it."""
    try:
        value = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return kind(), f"{what} is not JSON"
    if not isinstance(value, kind):
        return kind(), f"{what} is not a JSON {kind.__name__}"
    return value, None


def _stored_warnings(raw: str) -> list[dict[str, str]]:
    """A job's warnings read back: only well-formed {field, message} objects of valid text. A damaged list
    costs the job its warnings, never the job (they are advice, not its record)."""
    found, _ = _stored_json(raw, list, "its warnings")
    return [
        {"field": item["field"], "message": item["message"]}
        for item in found
        if isinstance(item, dict)
        and all(isinstance(item.get(key), str) and text.is_valid_text(item[key]) for key in ("field", "message"))
    ]


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Data dirs made before job policies (or stored warnings) existed get their columns (with defaults
    that hold nothing)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    wanted = {
        "queueing_polls": "INTEGER NOT NULL DEFAULT 0",
        "processing_polls": "INTEGER NOT NULL DEFAULT 0",
        "fail_reason": "TEXT",
        "polls": "INTEGER NOT NULL DEFAULT 0",
        "release_polls": "INTEGER NOT NULL DEFAULT 0",
        "not_before_ms": "INTEGER NOT NULL DEFAULT 0",
        "setbacks": "INTEGER NOT NULL DEFAULT 0",
        "warnings": "TEXT NOT NULL DEFAULT '[]'",
    }
    for name, declaration in wanted.items():
        if name not in present:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
