"""`compositor batch`: many bodies rendered on an executor (the local cores, or
a Dask cluster), each result written once and atomically, one report line
per item.

The input is streamed and at most a few items per worker are in flight, so
memory stays flat however long the input is: a million-line file costs what
a ten-line one does, plus the ids seen (to refuse a duplicate). An item is
at most MAX_ITEM_BYTES (a line, or a file of a folder; the cap of a single
body's `render`): a longer one fails alone (1003 on `body`), read in bounded
chunks and never held.

The worker that rendered an item writes it wherever it can reach the output
(a `compositor.storage.Location`), and answers with the outcome only (code,
errors, warnings, seconds, and the size and sha256 of what it wrote): no PNG
crosses back to the client.
- object storage (`s3://bucket/prefix`), on any executor: the worker writes
  the result there (one PUT: whole or nothing). A task that runs twice (a
  lost Dask worker) writes the same bytes to the same name; the client
  records each answer once.
- a local folder, on the local pool: the worker writes the result beside
  its name (`.NAME.compositor-XXXXXXXX.partial`) and the client renames it into place
  and writes its report line in one step that Ctrl-C waits for, so every
  result in the folder has its line. Partial files of items under way when
  a batch stops (or of a worker killed mid-write) are removed when it ends,
  and by the next run (`discard_partials`).
- a local folder, on Dask: the PNG comes back and this process writes it (a
  Dask worker may be on a machine whose disk is not this one's).

Each item's warnings (validate's, and pre-flight's from its sources' headers)
are found on the worker, right before its render, through the render's own
SourcePolicy: the worker has the sources at hand, and the client reads none.
They come back with the answer, into the item's report line; under `strict`
an item with any is refused (1003, its warnings as errors) and not rendered.

The report (`report.jsonl`, beside the results) is written here, as items
finish: appended line by line in a folder; in object storage, which cannot
append, PUT whole at checkpoints (every REPORT_CHECKPOINT_S, spaced out so
that rewriting a large report takes at most 1/REPORT_CHECKPOINT_SHARE of the
run) and at the end. `--resume` on object storage reads the old report and
the output's listing: an item whose report line says done (or skipped) and
whose object exists is not run again, and keeps its one line; any other
item, including one whose object exists with no line (written after the last
checkpoint), is rendered again (the same bytes to the same name) and gets
its one line. Locally, `--resume` is as it always was: an item whose file
exists is skipped, with a line saying so.

A cluster that goes away is waited for, up to RECONNECT_PATIENCE_S: the
items it dropped run again once it is back; past that, the batch stops
(exit 2) and `--resume` carries on. An output that cannot be written (a full
disk, a bucket that refuses) stops it the same way, in one line; what was
written stays, whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from compositor.catalogue import Item, field_problem
from compositor.executors import ExecutorUnavailable, RenderExecutor, WorkerDied, WorkerError
from compositor.files import leftovers, write_atomically, write_beside
from compositor.signals import STOP_EXIT_CODES, Terminated, signals_noted, stopped_by
from compositor.sourcemap import SourceMap
from compositor.storage import LocalLocation, Location, ReportWriter, StorageError, open_location

REPORT_NAME = "report.jsonl"
IN_FLIGHT_PER_WORKER = 2  # enough to keep a worker busy while its last answer travels back
ATTEMPTS = 2  # a local item whose worker died is run once more
# How long a batch waits for a cluster that went away (the executor reconnects meanwhile) before it stops.
RECONNECT_PATIENCE_S = 60.0
# A report in object storage is PUT whole this often (at least), and at the end; after a PUT that took t seconds the
# next waits at least REPORT_CHECKPOINT_SHARE * t, so that a large report costs at most that share of the run.
REPORT_CHECKPOINT_S = 10.0
REPORT_CHECKPOINT_SHARE = 10
PARTIAL_SUFFIX = ".partial"  # a worker's result in a local folder, until the client renames it into place


@dataclass(frozen=True)
class ItemOutcome:
    """What a worker answers: the PNG (for the client to write), or the size
    and sha256 of the PNG it wrote itself, or the API's code and the problems
    by field, or why its write failed; and the item's warnings either way
    (refused or not)."""

    png: bytes | None
    code: int
    errors: list[dict[str, str]]
    seconds: float
    warnings: list[dict[str, str]] = field(default_factory=list)
    size: int | None = None  # set when the worker wrote the result
    sha256: str | None = None
    write_error: str | None = None  # the worker could not write it: one line naming the URL
    partial: str | None = None  # a local folder's result, written beside its name for the client to rename

    @property
    def rendered(self) -> bool:
        return self.png is not None or self.size is not None


@dataclass
class BatchSummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    warned: int = 0  # items whose line has warnings (refused under --strict or not)
    not_run: int = 0  # items under way when the batch stopped
    stopped_by: str | None = None  # "interrupted" (Ctrl-C), "terminated" (SIGTERM), or why the executor stopped

    @property
    def exit_code(self) -> int:
        if self.stopped_by is not None:
            return STOP_EXIT_CODES.get(self.stopped_by, 2)
        return 1 if self.failed else 0


class BatchOutputError(Exception):
    """An output (a result, the report) cannot be written: the batch stops; the message says which, in one line."""

    def __init__(self, path: Path | str, exc: OSError | StorageError | str) -> None:
        if isinstance(exc, StorageError):
            super().__init__(str(exc))
        elif isinstance(exc, OSError):
            super().__init__(f"cannot write {path}: {exc.strerror or exc}")
        else:
            super().__init__(exc)


# --- on a worker -------------------------------------------------------------------


def render_item(
    body: Any,
    base_dir: str,
    source_map: SourceMap | None,
    model: str,
    thresholds: dict[str, float] | None = None,
    strict: bool = False,
    output: Location | None = None,
    name: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ItemOutcome:
    """Render one body to PNG bytes, on whichever worker runs it, with its
    warnings: validate's, then pre-flight's from the sources' headers (read
    here, through the render's policy; `thresholds` are PreflightThresholds'
    keyword arguments). Under `strict` an item with any warning is refused
    (1003, the warnings as errors) and not rendered; else warnings never stop
    it. A source pre-flight cannot read is left to the render (1108). Its
    removeBg model stays loaded in the worker's process for the items after it.

    With an `output` (and the result's `name` there), the worker writes the
    PNG itself, atomically, and answers with its size and sha256 instead of
    its bytes; without one, the bytes come back."""
    from compositor import CompositorError, RemovalOptions, RenderOptions, SourceError
    from compositor.codes import ApiCode
    from compositor.encode import encode
    from compositor.engine import render_array
    from compositor.heap import prepare_render_process
    from compositor.preflight import PreflightThresholds, preflight
    from compositor.request import validate
    from compositor.sources import SourcePolicy
    from compositor.threads import set_render_threads

    prepare_render_process()  # once per worker process (a Dask worker's first task included)
    set_render_threads(1)  # items run side by side, one a worker: threads inside one would fight the others
    started = time.perf_counter()
    report = validate(body)
    if report.request is None:
        refused = [p.as_dict() for p in report.errors + (report.warnings if strict else [])]
        warned = [p.as_dict() for p in report.warnings]
        return ItemOutcome(None, int(report.code), refused, _since(started), warned)
    policy = SourcePolicy(
        base_dir=Path(base_dir), source_map=source_map, object_storage=True, storage_options=storage_options or {}
    )
    unreadable, found = preflight(report.request, policy, PreflightThresholds(**(thresholds or {})))
    warnings = [p.as_dict() for p in report.warnings + found]
    if strict and warnings:  # as `validate --strict --sources`: the warnings (and any unreadable source) as errors
        errors = [p.as_dict() for p in report.warnings + unreadable + found]
        return ItemOutcome(None, int(ApiCode.PARAMETER_ERROR), errors, _since(started), warnings)
    options = RenderOptions(sources=policy, removal=RemovalOptions(model=model))
    try:
        png = encode(render_array(report.request, options=options))  # parsed once, by the validation above
    except SourceError as exc:
        return ItemOutcome(None, int(exc.code), [field_problem(exc.field, exc.reason)], _since(started), warnings)
    except CompositorError as exc:
        return ItemOutcome(None, int(exc.code), [field_problem("body", str(exc))], _since(started), warnings)
    except MemoryError:
        problem = field_problem("body", "the render ran out of memory")
        return ItemOutcome(None, 1206, [problem], _since(started), warnings)
    if output is None or name is None:
        return ItemOutcome(png, 1000, [], _since(started), warnings)
    digest = hashlib.sha256(png).hexdigest()
    if isinstance(output, LocalLocation):  # beside its name: the client renames it, then writes its line
        target = output.root / name
        try:
            partial = write_beside(target, png, PARTIAL_SUFFIX)
        except OSError as exc:
            failure = f"cannot write {target}: {exc.strerror or exc}"
            return ItemOutcome(None, 1000, [], _since(started), warnings, write_error=failure)
        return ItemOutcome(None, 1000, [], _since(started), warnings, len(png), digest, partial=partial.name)
    try:
        _connected(output).write_bytes_atomic(name, png)
    except StorageError as exc:
        return ItemOutcome(None, 1000, [], _since(started), warnings, write_error=str(exc))
    return ItemOutcome(None, 1000, [], _since(started), warnings, len(png), digest)


# The places this worker process writes to, each connected once (a connection per item would cost more than a
# small render): keyed by the place as it was pickled (its URL and options, never a connection).
_CONNECTED: dict[bytes, Location] = {}


def _connected(place: Location) -> Location:
    if isinstance(place, LocalLocation):
        return place
    return _CONNECTED.setdefault(pickle.dumps(place), place)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 4)


# --- the run -------------------------------------------------------------------------


@dataclass
class _Pending:
    item: Item
    attempts: int = 1


@dataclass
class BatchRun:
    """One batch: where results go (a folder, or a Location: a folder or a prefix in object storage), what
    runs them, and the report."""

    outdir: Path | Location
    executor: RenderExecutor
    source_map: SourceMap | None = None
    model: str = "u2netp"
    resume: bool = False
    thresholds: dict[str, float] | None = None  # pre-flight's (PreflightThresholds' keyword arguments)
    strict: bool = False  # an item with any warning is refused (1003), not rendered
    storage_options: dict[str, Any] | None = None  # for s3:// sources (and the output's, when workers write)
    progress: Any = None  # a Progress, or None for silence
    summary: BatchSummary = field(default_factory=BatchSummary)
    # Items the executor dropped (its cluster went away), to run again once it is back.
    _dropped: deque[_Pending] = field(default_factory=deque, init=False)
    _away_since: float | None = field(default=None, init=False)  # when the first was dropped (None: all answer)
    _away_reason: str = field(default="", init=False)
    # Object storage, resuming: the ids the old report lists as done whose objects exist (not run again, their
    # line kept), and the old report's other lines by id (replaced by the item's new line, else kept at the end).
    _listed: set[str] = field(default_factory=set, init=False)
    _deferred: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.output: Location = self.outdir if isinstance(self.outdir, Location) else open_location(self.outdir)
        self._local = isinstance(self.output, LocalLocation)
        # Each worker writes its own result where it can reach the output: object storage always, a folder on
        # the local pool. Else (a folder, on Dask) the client does: a Dask worker may be on another machine.
        self.workers_write = not self._local or self.executor.local_disk

    def discard_partials(self) -> None:
        """Remove what was written into a local folder and never renamed into place: workers' results of items
        under way when a batch stopped, and any result whose writer (a worker, or the client on Dask) was
        killed mid-write. Call it once no writer of this run is left; the folder's lock keeps other runs out."""
        if self._local:
            assert isinstance(self.output, LocalLocation)
            for partial in list(leftovers(self.output.root, ("", PARTIAL_SUFFIX))):
                partial.unlink(missing_ok=True)

    def run(self, items: Iterator[Item]) -> BatchSummary:
        in_flight: dict[Future[ItemOutcome], _Pending] = {}
        try:
            self.discard_partials()  # a killed run's
            self._report = self._open_report()
        except (OSError, StorageError) as exc:
            self.summary.stopped_by = str(BatchOutputError(self.output.url_of(REPORT_NAME), exc))
            if self.progress is not None:
                self.progress.close()
            return self.summary
        try:
            self._pump(items, in_flight)
        except KeyboardInterrupt as stop:
            self.summary.stopped_by = stopped_by(stop)
        except (ExecutorUnavailable, BatchOutputError) as exc:
            self.summary.stopped_by = str(exc)
        finally:
            for future in in_flight:
                future.cancel()
            # the rest of the input is not read: a stop is at once
            self.summary.not_run += len(in_flight) + len(self._dropped)
            try:
                for line in self._deferred.values():  # the old report's lines no item of this run replaced
                    self._report.write(line + "\n")
                self._deferred.clear()
                self._report.close()
            except (OSError, StorageError) as exc:  # a line that could not be written: --resume drops it
                if self.summary.stopped_by is None:
                    self.summary.stopped_by = str(BatchOutputError(self.output.url_of(REPORT_NAME), exc))
            if self.progress is not None:
                self.progress.close()
        return self.summary

    def _open_report(self) -> _ReportLines:
        if self._local:  # a folder: appended line by line, as always (a cut last line dropped)
            return _ReportLines(self.output.open_report(REPORT_NAME, resume=self.resume))
        if not self.resume:
            return _ReportLines(self.output.open_report(REPORT_NAME))
        # Resuming in object storage: the old report and the listing say what is done. The report is written anew
        # (the old one stays until the first checkpoint), its lines carried over, each id once.
        existing = set(self.output.list("*.png"))
        kept: list[str] = []
        if self.output.exists(REPORT_NAME):
            with self.output.open_read(REPORT_NAME) as old:
                for raw in old:
                    line = self._old_line(raw, existing)
                    if line is not None:
                        kept.append(line)
        writer = self.output.open_report(REPORT_NAME)  # the store is not touched until its first checkpoint
        for line in kept:
            writer.write_line(line)
        return _ReportLines(writer)

    def _old_line(self, raw: bytes, existing: set[str]) -> str | None:
        """One line of an old report: returned if it is kept as it is (done, and its object exists); else held
        back until its item has a new line (an unreadable or cut line is dropped)."""
        if not raw.endswith(b"\n"):
            return None
        try:
            line = json.loads(raw)
            item_id, status = line["id"], line["status"]
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(item_id, str) or item_id in self._listed:
            return None
        text = raw.decode("utf-8").rstrip("\n")
        if status in ("done", "skipped") and f"{item_id}.png" in existing:
            self._listed.add(item_id)
            self._deferred.pop(item_id, None)
            return text
        self._deferred[item_id] = text
        return None

    def _pump(self, items: Iterator[Item], in_flight: dict[Future[ItemOutcome], _Pending]) -> None:
        exhausted = False
        while not exhausted or in_flight or self._dropped:
            if self._dropped:
                self._wait_for_executor()
            window = IN_FLIGHT_PER_WORKER * max(1, self.executor.capacity)
            while self._dropped and len(in_flight) < window:
                pending = self._dropped.popleft()
                in_flight[self._submit(pending.item)] = pending
            while not exhausted and len(in_flight) < window:
                item = next(items, None)
                if item is None:
                    exhausted = True
                elif item.problem is not None:
                    self._record(item, "failed", 1003, [item.problem], 0.0)
                elif self.resume and not self._local:
                    if item.id in self._listed:
                        self._count("skipped")  # the report lists it done, and its object exists: its line stays
                    else:
                        in_flight[self._submit(item)] = _Pending(item)
                elif self.resume and self._output(item).exists():
                    self._record(item, "skipped", None, [], 0.0)
                else:
                    in_flight[self._submit(item)] = _Pending(item)
            if not in_flight:
                continue
            done, _ = wait(list(in_flight), timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                self._settle(future, in_flight.pop(future), in_flight)

    def _wait_for_executor(self) -> None:
        """Items were dropped by a cluster that went away: wait until it takes
        tasks again (it reconnects meanwhile, and says so), for what is left of
        RECONNECT_PATIENCE_S since the first was dropped; then stop."""
        if self._away_since is None:  # something answered since they were dropped: the patience counts from now
            self._away_since = time.monotonic()
        left = RECONNECT_PATIENCE_S - (time.monotonic() - self._away_since)
        if left > 0:
            time.sleep(min(1.0, left))  # a pause before they go again: a cluster that drops at once is not hammered
            left = RECONNECT_PATIENCE_S - (time.monotonic() - self._away_since)
        if left <= 0 or not self.executor.wait_until_available(left):
            raise ExecutorUnavailable(
                f"{self._away_reason}, and it did not come back within {RECONNECT_PATIENCE_S:.0f} s"
            )

    def _submit(self, item: Item) -> Future[ItemOutcome]:
        args: tuple[Any, ...] = (item.body, item.base_dir, self.source_map, self.model, self.thresholds, self.strict)
        args += (self.output, self._name(item)) if self.workers_write else (None, None)
        return self.executor.submit(render_item, *args, self.storage_options)

    def _settle(
        self, future: Future[ItemOutcome], pending: _Pending, in_flight: dict[Future[ItemOutcome], _Pending]
    ) -> None:
        item = pending.item
        try:
            outcome = future.result()
        except ExecutorUnavailable as exc:  # nobody's fault: it runs again, uncharged, once the cluster is back
            if self._away_since is None:
                self._away_since = time.monotonic()
            self._away_reason = str(exc)
            self._dropped.append(pending)
            return
        except WorkerDied as exc:
            self._away_since = None
            if pending.attempts < ATTEMPTS:
                in_flight[self._submit(item)] = _Pending(item, pending.attempts + 1)
            else:
                self._record(item, "failed", 1206, [field_problem("body", f"{exc}, {pending.attempts} times")], 0.0)
            return
        except WorkerError as exc:
            self._away_since = None
            self._record(item, "failed", 1206, [field_problem("body", f"the render failed: {exc}")], 0.0)
            return
        self._away_since = None
        if outcome.write_error is not None:  # the store refused the worker's write: the batch stops
            raise BatchOutputError(self.output.url_of(self._name(item)), outcome.write_error)
        if not outcome.rendered:
            self._record(item, "failed", outcome.code, outcome.errors, outcome.seconds, outcome.warnings)
            return
        if outcome.partial is not None:  # the worker wrote it beside its name, in a local folder
            with _stops_wait():  # a result in the folder always has its report line
                self._rename(item, outcome.partial)
                self._record(item, "done", outcome.code, [], outcome.seconds, outcome.warnings, outcome)
            return
        if outcome.png is None:  # the worker wrote it
            self._record(item, "done", outcome.code, [], outcome.seconds, outcome.warnings, outcome)
            return
        with _stops_wait():  # a result on disk always has its report line
            self._write(item, outcome.png)
            self._record(item, "done", outcome.code, [], outcome.seconds, outcome.warnings, outcome)

    def _write(self, item: Item, png: bytes) -> None:
        """The client's write of a result that came back."""
        if isinstance(self.output, LocalLocation):
            try:
                write_atomically(self._output(item), png)
            except OSError as exc:  # a full disk: the batch stops, what was written stays whole
                raise BatchOutputError(self._output(item), exc) from None
            return
        try:
            self.output.write_bytes_atomic(self._name(item), png)
        except StorageError as exc:
            raise BatchOutputError(self.output.url_of(self._name(item)), exc) from None

    def _rename(self, item: Item, partial: str) -> None:
        target = self._output(item)
        try:
            os.replace(target.parent / partial, target)
        except OSError as exc:
            raise BatchOutputError(target, exc) from None

    def _name(self, item: Item) -> str:
        return f"{item.id}.png"

    def _output(self, item: Item) -> Path:
        """A result's path in a local output folder."""
        assert isinstance(self.output, LocalLocation)
        return self.output.root / self._name(item)

    def _record(
        self,
        item: Item,
        status: str,
        code: int | None,
        errors: list[dict[str, str]],
        seconds: float,
        warnings: list[dict[str, str]] | None = None,
        outcome: ItemOutcome | None = None,
    ) -> None:
        """The item's report line. `warnings` is [] where none were found, and
        where none were looked for (an item that is not a body, a skipped one,
        a worker lost). A done line has the result's `size` and `sha256`."""
        line: dict[str, Any] = {
            "id": item.id,
            "status": status,
            "output": self.output.url_of(self._name(item)) if status in ("done", "skipped") else None,
        }
        if status == "done" and outcome is not None:
            png = outcome.png
            line["size"] = len(png) if png is not None else outcome.size
            line["sha256"] = hashlib.sha256(png).hexdigest() if png is not None else outcome.sha256
        line |= {"seconds": seconds, "code": code, "errors": errors, "warnings": warnings or []}
        try:
            self._report.write(json.dumps(line) + "\n")
            self._report.flush()
        except (OSError, StorageError) as exc:
            raise BatchOutputError(self.output.url_of(REPORT_NAME), exc) from None
        self._deferred.pop(item.id, None)  # its old line (resuming in object storage) is replaced by this one
        self._count(status, bool(warnings))

    def _count(self, status: str, warned: bool = False) -> None:
        setattr(self.summary, status, getattr(self.summary, status) + 1)
        if warned:
            self.summary.warned += 1
        if self.progress is not None:
            self.progress.advance(status)


class _ReportLines:
    """The report as the run writes it (text, whole lines), through its place's ReportWriter: each line at once
    in a folder; in object storage, the whole report PUT at checkpoints (see REPORT_CHECKPOINT_S) and at close."""

    def __init__(self, writer: ReportWriter) -> None:
        self._writer = writer
        self._last = time.monotonic()
        self._every = REPORT_CHECKPOINT_S

    def write(self, text: str) -> None:
        for line in text.splitlines():
            self._writer.write_line(line)
        if time.monotonic() - self._last >= self._every:
            started = time.monotonic()
            self._writer.checkpoint()
            self._last = time.monotonic()
            self._every = max(REPORT_CHECKPOINT_S, REPORT_CHECKPOINT_SHARE * (self._last - started))

    def flush(self) -> None:
        """Each write is flushed (or spooled until its checkpoint) already."""

    def close(self) -> None:
        self._writer.close()


@contextlib.contextmanager
def _stops_wait() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM held back until the block ends, then handled
    as usual: a stop between writing a result and writing its report line
    would leave a file the report does not list."""
    with signals_noted(signal.SIGINT, signal.SIGTERM) as caught:
        yield
    for signum in caught[:1]:
        previous = signal.getsignal(signum)
        if callable(previous):
            previous(signum, None)  # Python's SIGINT handler raises KeyboardInterrupt, the commands' SIGTERM Terminated
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated


class Progress:
    """A bar on a terminal (tqdm); else a plain line every few seconds, and at the end."""

    def __init__(self, total: int, stream: IO[str] | None = None, every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.counts = {"done": 0, "failed": 0, "skipped": 0}
        self.started = time.monotonic()
        self.every_s = every_s
        self._last = self.started
        self._bar: Any = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=self.stream, unit="item", dynamic_ncols=True, smoothing=0.1)

    def advance(self, status: str) -> None:
        self.counts[status] += 1
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(done=self.counts["done"], failed=self.counts["failed"], refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        finished = sum(self.counts.values())
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = finished / elapsed
        left = f"about {(self.total - finished) / rate:.0f} s left" if rate > 0 else "time left not known yet"
        return (
            f"batch: {finished}/{self.total}, {self.counts['done']} done, {self.counts['failed']} failed,"
            f" {self.counts['skipped']} skipped, {rate:.1f} items/s, {left}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
