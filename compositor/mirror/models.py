"""The mirror's state and rules: clients and their credentials, tokens, rate
limits, credit quotas and the job store. Nothing here knows about HTTP (that
is `responses.py`) or about pixels (that is the engine, run by `worker.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt

from compositor import text
from compositor.errors import ApiCode
from compositor.mirror.controls import JobPolicy

log = logging.getLogger(__name__)

CREDITS_PER_JOB = 4  # the docs' deduction_credit
TOKEN_LIFETIME_S = 400 * 24 * 3600  # upstream tokens are valid for more than a year

QUEUEING, PROCESSING, COMPLETED, FAILED = 1, 2, 3, 4


class ApiError(Exception):
    """A business outcome other than success: answered as HTTP 200 with `code`."""

    def __init__(self, code: ApiCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{int(code)}: {message}")


@dataclass(frozen=True)
class Client:
    client_id: str
    client_secret: str
    banned: bool = False
    quota: int | None = None  # credits; None: unlimited
    rate_limit_per_minute: int | None = None

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("a client needs an id")
        if len(self.client_secret.encode()) not in (16, 24, 32):
            # Webhooks are AES-encrypted with the secret as the key (SPEC.md).
            raise ValueError(f"client {self.client_id!r}: the secret must be 16, 24 or 32 bytes (an AES key)")

    @property
    def uid(self) -> int:
        return zlib.crc32(self.client_id.encode()) % 1_000_000


class Accounts:
    """Who may call, with which credentials, how often."""

    def __init__(self, clients: list[Client], signing_key: bytes, *, open_registration: bool = False) -> None:
        self._by_id = {c.client_id: c for c in clients}
        self._by_secret = {c.client_secret: c for c in clients}
        self._signing_key = signing_key
        self._recent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        # The mock's accounts: as moto takes any credentials, any key or well-formed secret is a client.
        self._open = open_registration

    def _register(self, client_id: str, client_secret: str) -> Client | None:
        try:
            client = Client(client_id, client_secret)
        except ValueError:
            return None
        with self._lock:
            known = self._by_id.setdefault(client_id, client)
            self._by_secret.setdefault(client_secret, known)
        return known

    def issue_token(self, client_id: object, client_secret: object) -> str:
        client = self._by_id.get(client_id) if isinstance(client_id, str) else None
        if client is None and self._open and isinstance(client_id, str) and isinstance(client_secret, str):
            client = self._register(client_id, client_secret)
        if (
            client is None
            or not isinstance(client_secret, str)
            or not secrets.compare_digest(client.client_secret.encode(), client_secret.encode("utf-8", "surrogatepass"))
        ):
            raise ApiError(ApiCode.INVALID_AUTHORIZATION, "invalid clientId or clientSecret")
        now = int(time.time())
        claims = {"clientId": client.client_id, "iat": now, "exp": now + TOKEN_LIFETIME_S}
        return jwt.encode(claims, self._signing_key, algorithm="HS256")

    def authenticate(self, authorization: str | None, api_key: str | None) -> Client:
        """The calling client. `Authorization` wins over `x-api-key` when both
        are present (SPEC.md, Auth)."""
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(ApiCode.INVALID_AUTHORIZATION, "Authorization must be 'Bearer TOKEN'")
            try:
                claims = jwt.decode(token.strip(), self._signing_key, algorithms=["HS256"])
            except jwt.ExpiredSignatureError:
                raise ApiError(ApiCode.INVALID_AUTHORIZATION, "the token has expired") from None
            except jwt.InvalidTokenError:
                raise ApiError(ApiCode.INVALID_AUTHORIZATION, "invalid token") from None
            client = self._by_id.get(claims.get("clientId", ""))
            if client is None:
                raise ApiError(ApiCode.INVALID_AUTHORIZATION, "the token's client no longer exists")
        elif api_key:
            client = self._by_secret.get(api_key)
            if client is None and self._open:
                client = self._register(*open_client(api_key))
            if client is None:
                raise ApiError(ApiCode.INVALID_AUTHORIZATION, "invalid x-api-key")
        else:
            raise ApiError(ApiCode.AUTHORIZATION_EMPTY, "authorization cannot be empty")
        if client.banned:
            raise ApiError(ApiCode.ACCOUNT_BANNED, "the account has been banned")
        return client

    def check_rate(self, client: Client, now: float | None = None) -> None:
        """A sliding one-minute window per client."""
        if client.rate_limit_per_minute is None:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = self._recent.setdefault(client.client_id, deque())
            while recent and recent[0] <= now - 60:
                recent.popleft()
            if len(recent) >= client.rate_limit_per_minute:
                raise ApiError(ApiCode.TOO_FREQUENT, "operation is too frequent")
            recent.append(now)

    def get(self, client_id: str) -> Client | None:
        return self._by_id.get(client_id)

    def forget_rates(self) -> None:
        with self._lock:
            self._recent.clear()


def open_client(api_key: str) -> tuple[str, str]:
    """The client id and webhook secret the mock gives a key it has not seen:
    the id is derived from the key (so a journal shows no key); the secret is
    the key itself when it is an AES key length (16, 24 or 32 bytes), as
    upstream's keys are, else 32 characters derived from it."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    secret = api_key if len(api_key.encode()) in (16, 24, 32) else digest[:32]
    return f"key-{digest[:12]}", secret


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
        return record


_SCHEMA = """
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
    setbacks INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, create_time);
CREATE TABLE IF NOT EXISTS credits (client_id TEXT PRIMARY KEY, used INTEGER NOT NULL);
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
# Made after `_add_missing_columns`, which gives older data dirs the columns these name.
# The outbox's indexes: a job's pending notices in order (the first is its `head`, the only one
# that may be sent), a lane's sendable notices by due time, and the lanes by when they are ready.
_INDEXES = """
DROP INDEX IF EXISTS webhooks_pending;
CREATE INDEX IF NOT EXISTS webhooks_by_job ON webhooks (job_id, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (lane, due_ms, id) WHERE state = 'pending' AND head = 1;
CREATE INDEX IF NOT EXISTS lanes_ready ON lanes (ready_ms) WHERE ready_ms IS NOT NULL;
"""


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


def _store_error(exc: sqlite3.Error) -> StoreError:
    text = str(exc).lower()
    if "full" in text or "no space" in text:
        return StoreFullError("the disk under the data dir is full")
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return StoreDamagedError("the job database is damaged")
    return StoreError(f"the job database failed ({type(exc).__name__})")


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


class JobStore:
    """Jobs, credits and the webhook outbox in SQLite (WAL), safe to share
    between threads.

    Every state change is one transaction, and the webhook notice it owes is
    written in that same transaction, so a crash at any point leaves each job
    either queued, processing (re-queued at start-up) or finished, with its
    notices already in the outbox. Every SQLite failure comes out as a
    `StoreError`."""

    def __init__(self, path: Path) -> None:
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
            self._db.executescript(_SCHEMA)
            _add_missing_columns(self._db)
            self._db.executescript(_INDEXES)
        except sqlite3.Error as exc:
            error = _store_error(exc)
            raise type(error)(f"{error.reason}: {path} ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
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
                raise _store_error(exc) from None

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise _store_error(exc) from None

    def create(
        self,
        client: Client,
        body: dict[str, Any],
        policy: JobPolicy | None = None,
        before_commit: Callable[[Job], None] | None = None,
    ) -> Job:
        """Store a queued job, charging the client's credits in the same
        transaction. `before_commit` runs inside that transaction, last: the
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
        )
        with self._transaction() as db:
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
                " queueing_polls, processing_polls, fail_reason, release_polls)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *(job.id, job.image_id, job.client_id, job.uid, json.dumps(body), QUEUEING, now, now),
                    *(job.queueing_polls, job.processing_polls, job.fail_reason, job.release_polls),
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
        with self._transaction() as db:
            row = db.execute(
                "UPDATE jobs SET polls = polls + 1 WHERE id = ? AND status = ? AND polls < release_polls RETURNING *",
                (job_id, QUEUEING),
            ).fetchone()
            if row is None:
                row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                return _job(row) if row is not None else None
            job = _job(row)
            if job.polls == job.queueing_polls + 1 and job.processing_polls:
                _queue_notice(db, job, PROCESSING)
            if job.polls >= job.release_polls and job.fail_reason is not None:
                finished = self._finish_in(db, job.id, FAILED, (QUEUEING,), error_reasons=json.dumps([job.fail_reason]))
                return finished or job
        return job

    def get(self, job_id: str) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
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
            with self._transaction() as db:
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
                        _queue_notice(db, job, PROCESSING)
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

    def complete(self, job_id: str, result_path: str, image_url: str) -> bool:
        """Whether the job was still processing (it may have been failed by hand, or forgotten by a reset)."""
        return self._finish(job_id, COMPLETED, result_path=result_path, image_url=image_url) is not None

    def fail(self, job_id: str, reasons: list[str]) -> None:
        self._finish(job_id, FAILED, error_reasons=json.dumps(reasons))

    def fail_unfinished(self, job_id: str, reason: str) -> Job | None:
        """A queued or processing job ended with status 4 and `reason` (its
        webhook queued); None when there is no such job or it has ended."""
        with self._transaction() as db:
            return self._finish_in(db, job_id, FAILED, (QUEUEING, PROCESSING), error_reasons=json.dumps([reason]))

    def jobs(self) -> list[Job]:
        return [_job(row) for row in self._read("SELECT * FROM jobs ORDER BY create_time, rowid")]

    def forget_all(self) -> list[str]:
        """Every job, notice and credit spent, gone (clients stay, in the
        server's settings); the paths of the results that were stored."""
        with self._transaction() as db:
            paths = [row[0] for row in db.execute("SELECT result_path FROM jobs WHERE result_path IS NOT NULL")]
            for table in ("jobs", "webhooks", "lanes", "credits"):
                db.execute(f"DELETE FROM {table}")
        return paths

    def requeue(self, job_id: str, *, count_attempt: bool = True) -> None:
        """A processing job back in the queue, to run again. An attempt that
        was not the job's fault (no space for its result) does not count."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = ?, updated_time = ?, attempts = attempts - ? WHERE id = ? AND status = ?",
                (QUEUEING, now_ms(), 0 if count_attempt else 1, job_id, PROCESSING),
            )

    def set_aside(self, job_id: str, until_ms: int) -> None:
        """A processing job back in the queue, not to run before `until_ms`:
        its result could not be stored (a full disk), which is not its fault
        (the attempt is not counted), and the jobs behind it run meanwhile."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = ?, updated_time = ?, attempts = attempts - 1, not_before_ms = ?,"
                " setbacks = setbacks + 1 WHERE id = ? AND status = ?",
                (QUEUEING, now_ms(), until_ms, job_id, PROCESSING),
            )

    def _finish(self, job_id: str, status: int, **columns: str) -> Job | None:
        with self._transaction() as db:
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
        _queue_notice(db, job, status)
        return job

    def requeue_interrupted(self) -> int:
        """Jobs left processing by a process that died go back to the queue."""
        with self._transaction() as db:
            return db.execute(
                "UPDATE jobs SET status = ?, updated_time = ? WHERE status = ?", (QUEUEING, now_ms(), PROCESSING)
            ).rowcount

    def expire(self, older_than_ms: int) -> list[str]:
        """Mark results older than the cut-off expired; their files' paths."""
        with self._transaction() as db:
            rows = db.execute(
                "UPDATE jobs SET expired = 1 WHERE status = ? AND expired = 0 AND updated_time < ?"
                " RETURNING result_path",
                (COMPLETED, older_than_ms),
            ).fetchall()
        return [row["result_path"] for row in rows if row["result_path"]]

    # --- the webhook outbox ---------------------------------------------------
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
        with self._lock:
            try:
                ready = self._db.execute(
                    f"SELECT lane FROM lanes WHERE ready_ms <= ? AND lane NOT IN ({lanes})"
                    f" AND client_id NOT IN ({clients}) ORDER BY ready_ms LIMIT ?",
                    (at_ms, *sorted(busy_lanes), *sorted(busy_clients), limit),
                ).fetchall()
                due: list[Notice] = []
                for (lane,) in ready:
                    rows = self._db.execute(
                        "SELECT * FROM webhooks WHERE lane = ? AND state = 'pending' AND head = 1 AND due_ms <= ?"
                        " ORDER BY due_ms, id LIMIT ?",
                        (lane, at_ms, per_lane + len(in_flight)),
                    ).fetchall()
                    fresh = [_notice(row) for row in rows if row["id"] not in in_flight]
                    due.extend(fresh[: min(per_lane, limit - len(due))])
                    if len(due) >= limit:
                        break
                return due
            except sqlite3.Error as exc:
                raise _store_error(exc) from None

    def next_notice_due(self) -> int | None:
        rows = self._read("SELECT MIN(ready_ms) AS due FROM lanes")
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
        with self._transaction() as db:
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
            rows = self._read("SELECT * FROM webhooks ORDER BY id")
        else:
            rows = self._read("SELECT * FROM webhooks WHERE job_id = ? ORDER BY id", (job_id,))
        return [dict(row) for row in rows]


def _queue_notice(db: sqlite3.Connection, job: Job, status: int) -> None:
    url = job.body.get("webhookUrl")
    if not isinstance(url, str) or not url:
        return
    if not text.is_valid_text(url):
        # Refused at the door since; a job stored before that must not stop every other job's progress.
        log.warning("job %s: its webhookUrl is not valid Unicode text; no notice is sent", job.id)
        return
    if (
        status == PROCESSING
        and db.execute("SELECT 1 FROM webhooks WHERE job_id = ? AND status = ?", (job.id, PROCESSING)).fetchone()
    ):
        return  # a job run again is no news to the receiver
    receiver = receiver_of(url)
    lane = lane_of(job.client_id, receiver)
    waiting = db.execute("SELECT 1 FROM webhooks WHERE job_id = ? AND state = 'pending'", (job.id,)).fetchone()
    db.execute(
        "INSERT INTO webhooks (job_id, client_id, url, receiver, status, result_url, due_ms, lane, head)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            *(job.id, job.client_id, url, receiver, status),
            *(job.image_url if status == COMPLETED else None, now_ms(), lane, 0 if waiting else 1),
        ),
    )
    db.execute("INSERT OR IGNORE INTO lanes (lane, client_id) VALUES (?, ?)", (lane, job.client_id))
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


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Data dirs made before job policies existed get their columns (with defaults that hold nothing)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    wanted = {
        "queueing_polls": "INTEGER NOT NULL DEFAULT 0",
        "processing_polls": "INTEGER NOT NULL DEFAULT 0",
        "fail_reason": "TEXT",
        "polls": "INTEGER NOT NULL DEFAULT 0",
        "release_polls": "INTEGER NOT NULL DEFAULT 0",
        "not_before_ms": "INTEGER NOT NULL DEFAULT 0",
        "setbacks": "INTEGER NOT NULL DEFAULT 0",
    }
    for name, declaration in wanted.items():
        if name not in present:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
    # Outboxes made before lanes: each pending notice gets its lane, each job's oldest pending one is its head.
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


def now_ms() -> int:
    return int(time.time() * 1000)
