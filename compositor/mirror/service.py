"""The mirror's back end: accepts jobs, runs them on a process pool, moves
them through their states, sends webhooks and expires old results. The HTTP
layer calls `submit`, `info`, `issue_token` and the test controls
(`controls`, `fail_job`, `jobs`, `deliveries`, `reset`).

The in-process mock runs this same back end with `inline` set: no worker
processes, and a job renders in the thread of the info poll that releases it.

Results are kept in the data dir's `results` folder, or where the `results`
setting says: another folder, or a prefix in object storage. In a bucket,
the worker that renders a job (a local process, a Dask worker, or the
polling thread inline) writes the PNG there itself, one PUT under the job's
name (`ID.png`), and answers with the outcome only; the job's `image` is
still the mirror's own `/results/ID.png`, which streams the object from the
bucket, so that clients need no credentials of the bucket's. Expiry and
`reset` delete the objects the job store recorded, and nothing else."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from compositor.budget import MB
from compositor.errors import ApiCode, InvalidRequestError
from compositor.executors import DaskExecutor, ExecutorUnavailable, LocalExecutor, RenderExecutor
from compositor.files import leftovers
from compositor.layout import CompositeRequest
from compositor.mirror.accounts import Accounts, Client
from compositor.mirror.api_error import ApiError
from compositor.mirror.controls import Controls, Scenario
from compositor.mirror.database import StoreError, now_ms
from compositor.mirror.jobs import FAILED, QUEUEING, Job, JobStore
from compositor.mirror.lock import DataDirLock
from compositor.mirror.webhooks import RetryPolicy, WebhookDispatcher
from compositor.mirror.worker import (
    RenderOutcome,
    prepare_worker,
    render_png,
    render_to_file,
    render_to_location,
    store_png,
)
from compositor.outbound import OutboundPolicy
from compositor.pool import WorkerDied, WorkerPool
from compositor.preflight import PreflightThresholds, preflight
from compositor.request import Limits, validate
from compositor.sourcemap import SourceMap
from compositor.sources import SourcePolicy
from compositor.storage import LocalLocation, Location, StorageError, open_location

log = logging.getLogger(__name__)
T = TypeVar("T")
job_log = logging.getLogger("compositor.jobs")


def _job_line(job: Job, outcome: str, reason: str | None = None) -> None:
    """One line per job state change: the job, its client, the outcome, the reason of a failure."""
    fields = {"job_id": job.id, "client_id": job.client_id, "outcome": outcome, "reason": reason}
    job_log.info("job %s %s", job.id, outcome, extra={"fields": fields})


# An upload being received or checked, in the uploads folder under a name no stored upload has.
UPLOAD_PARTIAL_PREFIX = ".upload-"
# A job whose worker died this many times is failed rather than run again.
MAX_ATTEMPTS = 2
# A job whose result found no room on the disk waits aside, 5 s the first
# time and doubling to 5 min (the jobs behind it run meanwhile), and is failed
# after this many waits (about 40 min in all): a job can only ever fail itself.
SET_ASIDE_S = (5.0, 300.0)
MAX_SETBACKS = 12
# How long the dispatcher waits before claiming again after the store or the
# disk failed: doubling from the first to the last.
BACKOFF_S = (0.5, 30.0)
# A result's name where results are kept: its job's id (hex), `.png`. Only such names are read from a bucket
# for `/results/` or deleted from it.
RESULT_NAME = re.compile(r"[0-9a-f]+\.png")


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
    memory_budget: int | None = 2048 * MB  # per job or preview, in bytes
    preview_workers: int = 1
    # Sources and webhooks may reach loopback and private addresses: true
    # while the server listens on loopback only (see config.load).
    allow_private: bool = True
    # s3:// sources, read with the operator's own credentials: off unless the operator says so (config.load).
    allow_object_storage: bool = False
    source_deadline_s: float = 30.0
    body_limit: int = 1 * MB  # an API request's body
    upload_limit: int = 64 * MB  # an image uploaded from the page
    # Host names (and origins) the page's endpoints answer, beside loopback's.
    page_hosts: tuple[str, ...] = ()
    source_map: SourceMap = field(default_factory=SourceMap)  # from --source-map
    model: str = "u2netp"  # removeBg's model for every job (upstream's body has no field for it)
    scheduler: str | None = None  # a Dask scheduler's address: jobs render on that cluster
    # The test controls: open on a loopback server, else only with the admin token (None: off).
    controls_open: bool = False
    admin_token: str | None = None
    scenario: Scenario | None = None  # fault rules and a job policy to start with
    preflight: PreflightThresholds = field(default_factory=PreflightThresholds)  # when a job's answer warns
    # The in-process mock: jobs render in the polling thread; any key is a client; nothing beyond this machine.
    inline: bool = False
    open_accounts: bool = False
    local_only: bool = False
    # Where results are kept: None, the data dir's results folder; else a folder or a prefix in object storage
    # (`s3://bucket/prefix`), and the options of its store (s3fs's, never keys; s3:// sources use them too).
    results: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def controls_enabled(self) -> bool:
        return self.controls_open or self.admin_token is not None

    @functools.cached_property
    def results_location(self) -> Location:
        """Where results are kept (nothing is asked of a store yet); StorageError for a URL that cannot be used."""
        where = self.data_dir / "results" if self.results is None else self.results
        return open_location(where, self.storage_options)

    @property
    def results_in_bucket(self) -> bool:
        return not isinstance(self.results_location, LocalLocation)

    @property
    def results_dir(self) -> Path:
        """The folder of the results: the data dir's, or the `results` folder (with results in a bucket, the data
        dir's, which then stays empty)."""
        place = self.results_location
        return place.root if isinstance(place, LocalLocation) else self.data_dir / "results"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @functools.cached_property
    def sources(self) -> SourcePolicy:  # made once: every job and preview reads it
        # The mirror's own uploads are read from its disk, never fetched from itself over HTTP
        # (which private-network rules would refuse when it listens on a private address).
        own = SourceMap.from_entries({f"{self.public_base_url}/uploads/": self.uploads_dir})
        return SourcePolicy(
            file_roots=self.file_roots,
            allow_private=self.allow_private,
            local_only=self.local_only,
            object_storage=self.allow_object_storage,
            storage_options=dict(self.storage_options),
            deadline_s=self.source_deadline_s,
            source_map=own.merged(self.source_map),
            # A caller may not learn the mirror's own network from a job's reason: one reason for every
            # failing loopback or private source.
            private_causes=False,
        )


class Mirror:
    """The back end: jobs from `submit` to a result, a failure, or a retry."""

    def __init__(self, settings: MirrorSettings) -> None:
        self.settings = settings
        # The lock first: nothing of another server's may be touched.
        self._lock = DataDirLock(settings.data_dir, {"url": settings.public_base_url})
        try:
            # Results in a bucket: proven writable now (a probe written, then deleted), so that a bucket that
            # is missing, or refuses these credentials, stops the start in one line naming it, before any job.
            self._bucket: Location | None = settings.results_location if settings.results_in_bucket else None
            if self._bucket is not None:
                self._bucket.check_writable()
            else:
                settings.results_dir.mkdir(exist_ok=True)
            settings.uploads_dir.mkdir(exist_ok=True)
            # The lock is held, so no job is rendering and no upload arriving here yet: a half-written result
            # (`atomic_file`'s `.NAME.compositor-XXXXXXXX`) or a partial upload is one a stopped server left.
            _remove_all(leftovers(settings.results_dir))
            _remove_all(settings.uploads_dir.glob(UPLOAD_PARTIAL_PREFIX + "*"))
            self.accounts = Accounts(
                list(settings.clients), _signing_key(settings.data_dir), open_registration=settings.open_accounts
            )
            self.store = JobStore(settings.data_dir / "jobs.sqlite3")
        except BaseException:
            self._lock.release()
            raise
        self.webhooks = WebhookDispatcher(
            self.store.outbox,
            self._secret_for,
            settings.webhook_retry,
            OutboundPolicy(
                deadline_s=settings.webhook_retry.timeout_s,
                allow_private=settings.allow_private,
                local_only=settings.local_only,
            ),
        )
        self.controls = Controls()
        if settings.scenario is not None:
            settings.scenario.apply(self.controls)
        self.webhooks.faults = self.controls.faults
        self.sources = settings.sources
        self.pool: RenderExecutor | None = None
        self.previews: WorkerPool | None = None
        self._remote = settings.scheduler is not None
        if settings.scheduler is not None:  # connected now, so an unreachable cluster stops the start in one line
            try:
                self.pool = DaskExecutor(settings.scheduler)
            except BaseException:
                self._lock.release()
                raise
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._in_flight: dict[str, Job] = {}
        # Expiry's look at an upload's age and its deletion, as one step against an upload of the same image
        # renewing it in between.
        self._uploads_lock = threading.Lock()
        self._outcomes: queue.SimpleQueue[tuple[Job, Future[RenderOutcome]]] = queue.SimpleQueue()
        self._unstored: list[tuple[Job, Future[RenderOutcome]]] = []
        self._paused_until = 0.0
        self._threads: list[threading.Thread] = []

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        requeued = self.store.requeue_interrupted()
        if requeued:
            log.warning("re-queued %d job(s) interrupted by the last shutdown", requeued)
        if self.settings.inline:
            self.webhooks.start()
            return
        if self.pool is None:
            self.pool = LocalExecutor(self.settings.workers, name="render", initializer=prepare_worker)
        self.previews = WorkerPool(self.settings.preview_workers, name="preview", initializer=prepare_worker)
        for target, name in ((self._dispatch, "dispatcher"), (self._expire_loop, "expiry")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.webhooks.start()
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for pool in (self.pool, self.previews):
            if pool is not None:
                pool.shutdown()
        self.webhooks.stop()
        self.store.close()
        self._lock.release()

    # --- the API ---------------------------------------------------------
    def issue_token(self, client_id: object, client_secret: object) -> str:
        return self.accounts.issue_token(client_id, client_secret)

    def authenticate(self, authorization: str | None, api_key: str | None) -> Client:
        return self.accounts.authenticate(authorization, api_key)

    def submit(self, client: Client, body: object, answer: Callable[[Job, list[dict[str, str]]], T]) -> T:
        """What `answer` makes of the stored job and its warnings: the body's
        (fields ignored, layers off the canvas), then pre-flight's for the
        sources read without the network (see `_preflight_at_accept`); the job
        keeps them. The answer is made inside the transaction that stores the
        job and charges its credits: if making it fails, or anything before,
        there is neither job nor charge (no job without its answer)."""
        self.accounts.check_rate(client)
        report = validate(body, limits=self.settings.limits)
        if not report.ok:
            raise InvalidRequestError(report)
        assert isinstance(body, dict)
        warnings = [problem.as_dict() for problem in report.warnings]
        if report.request is not None:
            warnings += [found for found in self._preflight_at_accept(report.request) if found not in warnings]
        answers: list[T] = []
        job = self.store.create(
            client,
            body,
            self.controls.policies.take(),
            lambda stored: answers.append(answer(stored, warnings)),
            warnings=warnings,
        )
        _job_line(job, "queued")
        self._wake.set()
        return answers[0]

    def _preflight_at_accept(self, request: CompositeRequest) -> list[dict[str, str]]:
        """Pre-flight's warnings for the sources that need no network: data:
        URIs, uploads and mapped URLs, local files under the file roots (a
        read of a file, no pixel decoded). An http(s) or s3:// source is not read
        here (the answer never waits on another server): it is refused unread, like
        any unreadable source its error is ignored (the job fails on the worker
        with 1108, as it always has), and the worker warns about an http(s) one. Nothing
        here may fail a submit: anything unexpected is logged, and the answer
        has fewer warnings."""
        try:
            offline = dataclasses.replace(self.sources, allow_http=False, object_storage=False)
            _, found = preflight(request, offline, self.settings.preflight)
        except Exception:
            log.exception("pre-flight at accept failed; the answer carries no warnings from the sources' headers")
            return []
        return [problem.as_dict() for problem in found]

    def info(self, client: Client, job_id: object) -> Job:
        self.accounts.check_rate(client)
        if not isinstance(job_id, str) or not job_id:
            raise ApiError(ApiCode.PARAMETER_ERROR, "image_model_id: can not be empty")
        job = self.store.get(job_id)
        if job is None or job.client_id != client.client_id:
            raise ApiError(ApiCode.PARAMETER_ERROR, f"image_model_id: no job {job_id!r} for this account")
        if not job.release_polls and not self.settings.inline:
            return job  # no policy holds it: a poll changes nothing
        polled = self.store.poll(job_id) or job
        if polled.status == FAILED and job.status != FAILED:
            _job_line(polled, "failed", polled.fail_reason)
        elif polled.status == QUEUEING and polled.polls >= polled.release_polls:
            if self.settings.inline:
                self._run_inline(job_id)
                return self.store.get(job_id) or polled
            self._wake.set()
        return polled

    def identify(self, authorization: str | None, api_key: str | None) -> str | None:
        """The calling client's id, or None when the credentials name none (for matching fault rules)."""
        try:
            return self.authenticate(authorization, api_key).client_id
        except ApiError:
            return None

    # --- the test controls -----------------------------------------------
    def fail_job(self, job_id: str, reason: str) -> Job | None:
        """An unfinished job ended now with status 4 and `reason`; None when
        it has already ended. KeyError when there is no such job."""
        if self.store.get(job_id) is None:
            raise KeyError(job_id)
        job = self.store.fail_unfinished(job_id, reason)
        if job is not None:
            _job_line(job, "failed", reason)
            self.webhooks.wake()
        return job

    def jobs(self) -> list[dict[str, Any]]:
        return [job.summary() for job in self.store.jobs()]

    def deliveries(self) -> list[dict[str, Any]]:
        """Every webhook notice and what became of it, oldest first."""
        return [
            {
                "job_id": notice["job_id"],
                "url": notice["url"],
                "status": notice["status"],
                "attempts": notice["attempts"],
                "last_http_status": notice["last_http_status"],
                "last_error": notice["last_error"],
                "delivered": notice["state"] == "delivered",
            }
            for notice in self.store.outbox.notices()
        ]

    def reset(self) -> None:
        """Jobs, results, webhooks owed, faults, the job policy, the journal and
        rate windows forgotten; clients and their keys stay. A render under way
        finishes into nothing (its result is deleted when it comes back)."""
        self.controls.reset()
        self.webhooks.forget()
        self.accounts.forget_rates()
        # The folder is listed (for results no job records: a render that finished into nothing) before the jobs
        # are forgotten, so a job submitted after that, and done before this ends, keeps its result. In a
        # bucket only what the store recorded goes: the prefix is never listed, so nothing else under it is
        # touched (another mirror's results, say); a render under way there is deleted when it comes back.
        listed = [] if self._bucket is not None else list(self.settings.results_dir.glob("*.png"))
        for path in self.store.forget_all():
            self._delete_result(path)
        # Again, now that the outbox is empty: notices read after the first forget, before the rows went, stop.
        self.webhooks.forget()
        for leftover in listed:
            if leftover.stem not in self._in_flight:
                leftover.unlink(missing_ok=True)

    def add_sources(self, source_map: SourceMap) -> None:
        """More URLs read from local files (the mock's `add_source`)."""
        current = self.sources.source_map or SourceMap()
        self.sources = dataclasses.replace(self.sources, source_map=current.merged(source_map))

    def result_file(self, name: str) -> Path | None:
        return _file_in(self.settings.results_dir, name)

    @property
    def results_in_bucket(self) -> bool:
        return self._bucket is not None

    def open_result_object(self, name: str, first: int) -> tuple[int, bytes, IO[bytes]] | None:
        """A result in the bucket, for `/results/NAME`: its size, its first `first` bytes (read now, so that an
        object deleted before the answer starts is a 404, not an empty 200) and the stream of the rest (the
        caller closes it); None when there is no such result. StorageError (logged here, with the URL) when
        the bucket cannot be read."""
        if self._bucket is None or not RESULT_NAME.fullmatch(name):
            return None
        stream: IO[bytes] | None = None
        try:
            size = self._bucket.size_of(name)
            stream = self._bucket.open_read(name)
            head = stream.read(first)
        except StorageError as exc:
            if stream is not None:
                stream.close()
            if exc.reason.startswith("not found"):
                return None
            log.warning("a result could not be read: %s", exc)
            raise
        return size, head, stream

    def upload_file(self, name: str) -> Path | None:
        return _file_in(self.settings.uploads_dir, name)

    def store_upload(self, partial: Path, name: str) -> None:
        """A checked upload (a partial file in the uploads folder) stored as `name` there, its time to live
        starting now, not when its last byte arrived (a slow check may have put that past it). The same image
        uploaded again replaces the file and renews it."""
        with self._uploads_lock:
            os.utime(partial)
            os.replace(partial, self.settings.uploads_dir / name)

    # --- the work --------------------------------------------------------

    def _dispatch(self) -> None:
        """Claims queued jobs while a worker is free, and stores what the
        workers answer. Whatever fails here (the store, the disk) is logged
        and tried again after a growing pause: this thread never ends before
        the server does."""
        delay = BACKOFF_S[0]
        while not self._stopping.is_set():
            try:
                self._store_outcomes()
                self._claim()
                delay = BACKOFF_S[0]
            except Exception as exc:
                if isinstance(exc, StoreError):
                    log.error("the job store failed (%s); trying again in %.1f s", exc.reason, delay)
                else:
                    log.exception("the dispatcher failed; trying again in %.1f s", delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_S[1])
            paused = self._paused_until - time.monotonic()
            self._wake.wait(timeout=min(1.0, paused) if paused > 0 else 1.0)
            self._wake.clear()

    def _claim(self) -> None:
        assert self.pool is not None
        while len(self._in_flight) < self.pool.capacity and time.monotonic() >= self._paused_until:
            if self._stopping.is_set():
                return
            job = self.store.claim_next()
            if job is None:
                return
            self.webhooks.wake()
            if job.fail_reason is not None:  # a job policy's forced failure
                self._fail(job, job.fail_reason)
                continue
            _job_line(job, "processing")
            budget, model, thresholds = self.settings.memory_budget, self.settings.model, self.settings.preflight
            try:
                if self._bucket is not None:  # the worker writes the result into the bucket; its outcome comes back
                    name, sources = _result_name(job), self.sources
                    future = self.pool.submit(
                        render_to_location, job.body, self._bucket, name, sources, budget, model, thresholds
                    )
                elif self._remote:  # the cluster's workers share no storage with us: the PNG comes back
                    future = self.pool.submit(render_png, job.body, self.sources, budget, model, thresholds)
                else:
                    future = self.pool.submit(
                        render_to_file, job.body, str(self._result_path(job)), self.sources, budget, model, thresholds
                    )
            except ExecutorUnavailable as exc:  # nobody's fault: the job waits, and so do new ones
                self._wait_for_executor(job, exc)
                return
            except Exception as exc:  # this job cannot be handed to a worker: it fails alone
                log.error("job %s: could not be started (%s); failing it", job.id, type(exc).__name__)
                self._fail(job, "the job could not be started")
                continue
            self._in_flight[job.id] = job
            future.add_done_callback(functools.partial(self._answered, job))

    def _run_inline(self, job_id: str) -> None:
        """Claim one released job and render it here, in the caller's thread (the mock)."""
        job = self.store.claim_next(job_id)
        if job is None:
            return
        self.webhooks.wake()
        if job.fail_reason is not None:
            self._fail(job, job.fail_reason)
            return
        done: Future[RenderOutcome] = Future()
        try:
            budget = self.settings.memory_budget
            model, thresholds = self.settings.model, self.settings.preflight
            if self._bucket is not None:
                name, sources = _result_name(job), self.sources
                done.set_result(render_to_location(job.body, self._bucket, name, sources, budget, model, thresholds))
            else:
                result = str(self._result_path(job))
                done.set_result(render_to_file(job.body, result, self.sources, budget, model, thresholds))
        except Exception as exc:
            done.set_exception(exc)
        self._store_outcome(job, done)
        self.webhooks.wake()

    def _answered(self, job: Job, done: Future[RenderOutcome]) -> None:
        # A worker's thread: only hand over, the dispatcher stores it.
        self._outcomes.put((job, done))
        self._wake.set()

    def _store_outcomes(self) -> None:
        """Every answer so far, into the store. One that cannot be stored yet
        waits in memory for the next round (its job stays processing)."""
        while True:
            try:
                self._unstored.append(self._outcomes.get_nowait())
            except queue.Empty:
                break
        while self._unstored:
            job, done = self._unstored[0]
            if not self._stopping.is_set():
                try:
                    self._store_outcome(job, done)
                except StoreError:
                    raise  # the store's trouble, not the job's: it stays first in line for the next round
                except Exception:  # this job's trouble only: it is failed, and the others go on
                    log.exception("job %s: its outcome could not be stored; failing it", job.id)
                    with contextlib.suppress(StoreError):
                        self._fail(job, "the result could not be stored")
            self._unstored.pop(0)
            self._in_flight.pop(job.id, None)
            self.webhooks.wake()

    def _store_outcome(self, job: Job, done: Future[RenderOutcome]) -> None:
        try:
            outcome = done.result()
        except ExecutorUnavailable as exc:
            self._wait_for_executor(job, exc)
            return
        except WorkerDied as exc:
            if job.attempts < MAX_ATTEMPTS:
                log.warning("job %s: %s; running it again", job.id, exc)
                self.store.requeue(job.id)
                _job_line(job, "requeued", str(exc))
            else:
                log.warning("job %s: %s, %d times; failing it", job.id, exc, job.attempts)
                self._fail(job, f"{exc}, {job.attempts} times")
            return
        except Exception as exc:
            log.error("job %s: the render failed unexpectedly: %s", job.id, exc)
            self._fail(job, "the render failed unexpectedly")
            return
        if outcome.png is not None:
            stored = store_png(outcome.png, str(self._result_path(job)))
            outcome = dataclasses.replace(stored, warnings=outcome.warnings)
        # The worker's warnings (its http(s) sources) after those from accept, each once; None: nothing new.
        added = [found for found in outcome.warnings if found not in job.warnings]
        warnings = [*job.warnings, *added] if added else None
        if outcome.transient:  # it runs again, and warns again
            self._set_aside(job, outcome.failure or "the result could not be stored")
        elif outcome.failure is None:
            # Kept as the object's URL in a bucket, else as the file's path; handed out as the mirror's own URL.
            name = _result_name(job)
            kept_at = str(self._result_path(job)) if self._bucket is None else self._bucket.url_of(name)
            url = f"{self.settings.public_base_url}/results/{name}"
            if self.store.complete(job.id, kept_at, url, warnings):
                _job_line(job, "completed")
            else:  # failed by hand, or forgotten by a reset, while it rendered
                self._delete_result(kept_at)
        else:
            self._fail(job, outcome.failure, warnings)

    def _wait_for_executor(self, job: Job, exc: Exception) -> None:
        """The workers are gone (a cluster away): the job goes back to the queue uncharged, and claiming pauses."""
        pause = 5.0
        log.error("job %s: %s; it waits, and the dispatcher tries again in %.0f s", job.id, exc, pause)
        self.store.requeue(job.id, count_attempt=False)
        self._paused_until = time.monotonic() + pause
        _job_line(job, "requeued", str(exc))

    def _set_aside(self, job: Job, reason: str) -> None:
        """A result with no room to be stored: the job waits aside with a growing
        delay while the jobs behind it run (a smaller result may fit), and fails
        after MAX_SETBACKS waits."""
        setbacks = job.setbacks + 1
        if setbacks > MAX_SETBACKS:
            log.warning("job %s: %s, %d times; failing it", job.id, reason, setbacks)
            self._fail(job, f"{reason} ({setbacks} tries)")
            return
        delay = min(SET_ASIDE_S[0] * 2 ** (setbacks - 1), SET_ASIDE_S[1])
        log.warning("job %s: %s; it waits %.0f s aside, and the jobs behind it go on", job.id, reason, delay)
        self.store.set_aside(job.id, now_ms() + int(delay * 1000))
        _job_line(job, "requeued", reason)

    def _fail(self, job: Job, reason: str, warnings: list[dict[str, str]] | None = None) -> None:
        self.store.fail(job.id, [reason], warnings)
        _job_line(job, "failed", reason)

    def _result_path(self, job: Job) -> Path:
        return self.settings.results_dir / _result_name(job)

    def _delete_result(self, stored: str) -> None:
        """A result the store recorded, deleted: a file (every result kept in a folder), or an object under the
        results prefix. An object anywhere else (a prefix this server no longer uses) is left alone, and a
        deletion the store refuses is logged: neither stops expiry or a reset."""
        if "://" not in stored:  # a path (a Path's text never holds "//")
            Path(stored).unlink(missing_ok=True)
            return
        prefix = self._bucket.url + "/" if self._bucket is not None else None
        name = stored[len(prefix) :] if prefix is not None and stored.startswith(prefix) else ""
        if self._bucket is None or not RESULT_NAME.fullmatch(name):
            log.warning("result %s is not under the results location; it is left where it is", stored)
            return
        try:
            self._bucket.delete(name)
        except StorageError as exc:
            log.warning("a result could not be deleted: %s", exc)

    def _secret_for(self, client_id: str) -> str | None:
        client = self.accounts.get(client_id)
        return client.client_secret if client is not None else None

    def _expire_loop(self) -> None:
        while not self._stopping.wait(self.settings.expiry_interval_s):
            try:
                self.expire_now()
            except StoreError as exc:
                log.error("expiry: the job store failed (%s); trying again later", exc.reason)
            except Exception:
                log.exception("expiry failed; trying again later")

    def expire_now(self) -> int:
        """Results and uploads older than the time-to-live, gone; how many results."""
        cutoff = time.time() - self.settings.result_ttl_s
        paths = self.store.expire(int(cutoff * 1000))
        for path in paths:
            self._delete_result(path)
        if self.settings.uploads_dir.is_dir():
            for upload in self.settings.uploads_dir.iterdir():
                if upload.name.startswith(UPLOAD_PARTIAL_PREFIX):
                    continue  # still arriving or being checked, however long that takes
                try:
                    with self._uploads_lock:
                        if upload.is_file() and upload.stat().st_mtime < cutoff:
                            upload.unlink(missing_ok=True)
                except OSError:
                    continue
        return len(paths)

    def preview(self, fn: Any, *args: Any) -> Future[Any]:
        """Run a page task (a preview render, an upload check) on the preview worker (inline: here, now)."""
        if self.previews is None:
            done: Future[Any] = Future()
            try:
                done.set_result(fn(*args))
            except Exception as exc:
                done.set_exception(exc)
            return done
        return self.previews.submit(fn, *args)


def _remove_all(paths: Iterator[Path]) -> None:
    """The files among `paths` removed (a folder of the same name, made by hand, is left)."""
    for path in paths:
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)


def _result_name(job: Job) -> str:
    return f"{job.id}.png"


def _file_in(folder: Path, name: str) -> Path | None:
    """`folder/name` if that is a file directly in `folder`; None for anything else (NUL, .., links out)."""
    try:
        path = (folder / name).resolve()
        if path.parent != folder.resolve() or not path.is_file():
            return None
    except (OSError, ValueError):
        return None
    return path


def _signing_key(data_dir: Path) -> bytes:
    """The token-signing key, made once per data dir so tokens survive restarts."""
    path = data_dir / "signing.key"
    if not path.exists():
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()
