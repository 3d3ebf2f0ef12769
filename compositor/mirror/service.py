"""The mirror's back end: accepts jobs, runs them on a process pool, moves
them through their states, sends webhooks and expires old results. The HTTP
layer calls `submit`, `info` and `issue_token` and nothing else."""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compositor.errors import ApiCode, InvalidRequestError
from compositor.mirror.models import (
    COMPLETED,
    FAILED,
    PROCESSING,
    Accounts,
    ApiError,
    Client,
    Job,
    JobStore,
)
from compositor.mirror.webhooks import RetryPolicy, WebhookSender, envelope
from compositor.mirror.worker import render_to_file
from compositor.request import Limits, validate
from compositor.sources import SourcePolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MirrorSettings:
    data_dir: Path
    clients: tuple[Client, ...]
    public_base_url: str = "http://127.0.0.1:8080"
    workers: int = max(1, os.cpu_count() or 1)
    result_ttl_s: float = 7 * 24 * 3600
    expiry_interval_s: float = 60.0
    file_roots: tuple[Path, ...] = ()
    limits: Limits = field(default_factory=Limits)
    webhook_retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"


class Mirror:
    def __init__(self, settings: MirrorSettings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.accounts = Accounts(list(settings.clients), _signing_key(settings.data_dir))
        self.store = JobStore(settings.data_dir / "jobs.sqlite3")
        self.webhooks = WebhookSender(settings.webhook_retry)
        self._pool: ProcessPoolExecutor | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._slots = threading.Semaphore(settings.workers)
        self._threads: list[threading.Thread] = []

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        requeued = self.store.requeue_interrupted()
        if requeued:
            log.warning("re-queued %d job(s) interrupted by the last shutdown", requeued)
        # spawn: the server process has threads, which fork would copy mid-flight.
        self._pool = ProcessPoolExecutor(self.settings.workers, mp_context=multiprocessing.get_context("spawn"))
        for target, name in ((self._dispatch, "dispatcher"), (self._expire_loop, "expiry")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.webhooks.stop()
        self.store.close()

    # --- the API ---------------------------------------------------------
    def issue_token(self, client_id: object, client_secret: object) -> str:
        return self.accounts.issue_token(client_id, client_secret)

    def authenticate(self, authorization: str | None, api_key: str | None) -> Client:
        return self.accounts.authenticate(authorization, api_key)

    def submit(self, client: Client, body: object) -> Job:
        self.accounts.check_rate(client)
        report = validate(body, limits=self.settings.limits)
        if not report.ok:
            raise InvalidRequestError(report)
        assert isinstance(body, dict)
        job = self.store.create(client, body)
        self._wake.set()
        return job

    def info(self, client: Client, job_id: object) -> Job:
        self.accounts.check_rate(client)
        if not isinstance(job_id, str) or not job_id:
            raise ApiError(ApiCode.PARAMETER_ERROR, "image_model_id: can not be empty")
        job = self.store.get(job_id)
        if job is None or job.client_id != client.client_id:
            raise ApiError(ApiCode.PARAMETER_ERROR, f"image_model_id: no job {job_id!r} for this account")
        return job

    def result_file(self, name: str) -> Path | None:
        path = (self.settings.results_dir / name).resolve()
        if path.parent != self.settings.results_dir.resolve() or not path.is_file():
            return None
        return path

    # --- the work --------------------------------------------------------
    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while not self._stopping.is_set() and self._slots.acquire(timeout=0.5):
                job = self.store.claim_next()
                if job is None:
                    self._slots.release()
                    break
                self._notify(job, PROCESSING)
                self._run(job)

    def _run(self, job: Job) -> None:
        assert self._pool is not None
        result = self.settings.results_dir / f"{job.id}.png"
        policy = asdict(SourcePolicy(file_roots=self.settings.file_roots))
        try:
            future = self._pool.submit(render_to_file, job.body, str(result), policy)
        except RuntimeError:  # the pool is shutting down; the job stays processing and is re-queued at start
            self._slots.release()
            return
        future.add_done_callback(lambda done: self._finished(job, result, done))

    def _finished(self, job: Job, result: Path, done: Future[str | None]) -> None:
        try:
            failure = done.result()
        except Exception as exc:  # a worker that died is a failed render, not a lost job
            failure = f"the render process failed: {type(exc).__name__}: {exc}"
        finally:
            self._slots.release()
            self._wake.set()
        if self._stopping.is_set():
            return
        if failure is None:
            url = f"{self.settings.public_base_url}/results/{result.name}"
            self.store.complete(job.id, str(result), url)
            self._notify(job, COMPLETED, url)
        else:
            self.store.fail(job.id, [failure])
            self._notify(job, FAILED)

    def _notify(self, job: Job, status: int, url: str | None = None) -> None:
        hook = job.body.get("webhookUrl")
        client = self.accounts.get(job.client_id)
        if hook and client is not None:
            self.webhooks.send(hook, envelope(job.id, status, url, client.client_id, client.client_secret))

    def _expire_loop(self) -> None:
        while not self._stopping.wait(self.settings.expiry_interval_s):
            self.expire_now()

    def expire_now(self) -> int:
        cutoff = int((time.time() - self.settings.result_ttl_s) * 1000)
        paths = self.store.expire(cutoff)
        for path in paths:
            Path(path).unlink(missing_ok=True)
        return len(paths)


def _signing_key(data_dir: Path) -> bytes:
    """The token-signing key, made once per data dir so tokens survive restarts."""
    path = data_dir / "signing.key"
    if not path.exists():
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()
