"""The mirror's state and rules: clients and their credentials, tokens, rate
limits, credit quotas and the job store. Nothing here knows about HTTP (that
is `responses.py`) or about pixels (that is the engine, run by `worker.py`).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from compositor.errors import ApiCode

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

    def __init__(self, clients: list[Client], signing_key: bytes) -> None:
        self._by_id = {c.client_id: c for c in clients}
        self._by_secret = {c.client_secret: c for c in clients}
        self._signing_key = signing_key
        self._recent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def issue_token(self, client_id: object, client_secret: object) -> str:
        client = self._by_id.get(client_id) if isinstance(client_id, str) else None
        if (
            client is None
            or not isinstance(client_secret, str)
            or not secrets.compare_digest(client.client_secret, client_secret)
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

    def to_api(self) -> dict[str, Any]:
        """The record as the docs' examples show it."""
        record: dict[str, Any] = {
            "_id": self.id,
            "uid": self.uid,
            "type": 3,
            "faceswap_quality": 2,
            "image_id": self.image_id,
            "image_sub_status": self.status,
            "image_status": self.status,
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
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, create_time);
CREATE TABLE IF NOT EXISTS credits (client_id TEXT PRIMARY KEY, used INTEGER NOT NULL);
"""


class JobStore:
    """Jobs and credits in SQLite (WAL), safe to share between threads.

    Every state change is one transaction, so a crash at any point leaves
    each job either queued, processing (re-queued at start-up) or finished."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, client: Client, body: dict[str, Any]) -> Job:
        """Store a queued job, charging the client's credits in the same transaction."""
        now = _now_ms()
        job = Job(
            id=secrets.token_hex(12),
            image_id=str(uuid.uuid4()),
            client_id=client.client_id,
            uid=client.uid,
            body=body,
            status=QUEUEING,
            create_time=now,
            updated_time=now,
        )
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if client.quota is not None:
                    self._db.execute("INSERT OR IGNORE INTO credits VALUES (?, 0)", (client.client_id,))
                    charged = self._db.execute(
                        "UPDATE credits SET used = used + ? WHERE client_id = ? AND used + ? <= ?",
                        (CREDITS_PER_JOB, client.client_id, CREDITS_PER_JOB, client.quota),
                    ).rowcount
                    if charged == 0:
                        raise ApiError(ApiCode.QUOTA_NOT_ENOUGH, "quota is not enough")
                self._db.execute(
                    "INSERT INTO jobs (id, image_id, client_id, uid, body, status, create_time, updated_time)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, job.image_id, job.client_id, job.uid, json.dumps(body), QUEUEING, now, now),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def claim_next(self) -> Job | None:
        """The oldest queued job, now marked processing; None when none waits."""
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET status = ?, updated_time = ?, attempts = attempts + 1"
                " WHERE id = (SELECT id FROM jobs WHERE status = ? ORDER BY create_time, rowid LIMIT 1)"
                " RETURNING *",
                (PROCESSING, _now_ms(), QUEUEING),
            ).fetchone()
        return _job(row) if row else None

    def complete(self, job_id: str, result_path: str, image_url: str) -> None:
        self._finish(job_id, COMPLETED, result_path=result_path, image_url=image_url)

    def fail(self, job_id: str, reasons: list[str]) -> None:
        self._finish(job_id, FAILED, error_reasons=json.dumps(reasons))

    def _finish(self, job_id: str, status: int, **columns: str) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET status = ?, updated_time = ?, {assignments} WHERE id = ? AND status = ?",
                (status, _now_ms(), *columns.values(), job_id, PROCESSING),
            )

    def requeue_interrupted(self) -> int:
        """Jobs left processing by a process that died go back to the queue."""
        with self._lock:
            return self._db.execute(
                "UPDATE jobs SET status = ?, updated_time = ? WHERE status = ?", (QUEUEING, _now_ms(), PROCESSING)
            ).rowcount

    def expire(self, older_than_ms: int) -> list[str]:
        """Mark results older than the cut-off expired; their files' paths."""
        with self._lock:
            rows = self._db.execute(
                "UPDATE jobs SET expired = 1 WHERE status = ? AND expired = 0 AND updated_time < ?"
                " RETURNING result_path",
                (COMPLETED, older_than_ms),
            ).fetchall()
        return [row["result_path"] for row in rows if row["result_path"]]


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        image_id=row["image_id"],
        client_id=row["client_id"],
        uid=row["uid"],
        body=json.loads(row["body"]),
        status=row["status"],
        create_time=row["create_time"],
        updated_time=row["updated_time"],
        image_url=row["image_url"],
        result_path=row["result_path"],
        error_reasons=json.loads(row["error_reasons"]),
        expired=bool(row["expired"]),
        attempts=row["attempts"],
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
