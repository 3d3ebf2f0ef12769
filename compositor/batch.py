"""`compositor batch`: many bodies rendered on an executor (the local cores, or
a Dask cluster), each result written once and atomically, one report line
per item.

The input is streamed and at most a few items per worker are in flight, so
memory stays flat however long the input is: a million-line file costs what
a ten-line one does, plus the ids seen (to refuse a duplicate). An item is
at most MAX_ITEM_BYTES (a line, or a file of a folder; the cap of a single
body's `render`): a longer one fails alone (1003 on `body`), read in bounded
chunks and never held. The workers read the sources and render; the answers
(PNG bytes, or why not) come back here and are written by this process
alone, so an item is written exactly once even when a lost Dask worker's
task runs again elsewhere.

Each item's warnings (validate's, and pre-flight's from its sources' headers)
are found on the worker, right before its render, through the render's own
SourcePolicy: the worker has the sources at hand, and the client reads none.
They come back with the answer, into the item's report line; under `strict`
an item with any is refused (1003, its warnings as errors) and not rendered.

A cluster that goes away is waited for, up to RECONNECT_PATIENCE_S: the
items it dropped run again once it is back; past that, the batch stops
(exit 2) and `--resume` carries on. An output that cannot be written (a full
disk) stops it the same way, in one line; what was written stays, whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from compositor.catalogue import READ_CHUNK, Item, field_problem
from compositor.executors import ExecutorUnavailable, RenderExecutor, WorkerDied, WorkerError
from compositor.files import write_atomically
from compositor.signals import signals_noted
from compositor.sourcemap import SourceMap

REPORT_NAME = "report.jsonl"
IN_FLIGHT_PER_WORKER = 2  # enough to keep a worker busy while its last answer travels back
ATTEMPTS = 2  # a local item whose worker died is run once more
# How long a batch waits for a cluster that went away (the executor reconnects meanwhile) before it stops.
RECONNECT_PATIENCE_S = 60.0


@dataclass(frozen=True)
class ItemOutcome:
    """What a worker answers: the PNG, or the API's code and the problems by
    field; and the item's warnings either way (refused or not)."""

    png: bytes | None
    code: int
    errors: list[dict[str, str]]
    seconds: float
    warnings: list[dict[str, str]] = field(default_factory=list)


@dataclass
class BatchSummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    warned: int = 0  # items whose line has warnings (refused under --strict or not)
    not_run: int = 0  # items under way when the batch stopped
    stopped_by: str | None = None  # "interrupted", or why the executor stopped

    @property
    def exit_code(self) -> int:
        if self.stopped_by is not None:
            return 130 if self.stopped_by == "interrupted" else 2
        return 1 if self.failed else 0


class BatchOutputError(Exception):
    """An output (a result, the report) cannot be written: the batch stops; the message says which, in one line."""

    def __init__(self, path: Path, exc: OSError) -> None:
        super().__init__(f"cannot write {path}: {exc.strerror or exc}")


# --- on a worker -------------------------------------------------------------------


def render_item(
    body: Any,
    base_dir: str,
    source_map: SourceMap | None,
    model: str,
    thresholds: dict[str, float] | None = None,
    strict: bool = False,
) -> ItemOutcome:
    """Render one body to PNG bytes, on whichever worker runs it, with its
    warnings: validate's, then pre-flight's from the sources' headers (read
    here, through the render's policy; `thresholds` are PreflightThresholds'
    keyword arguments). Under `strict` an item with any warning is refused
    (1003, the warnings as errors) and not rendered; else warnings never stop
    it. A source pre-flight cannot read is left to the render (1108). Its
    removeBg model stays loaded in the worker's process for the items after it."""
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
    policy = SourcePolicy(base_dir=Path(base_dir), source_map=source_map)
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
    return ItemOutcome(png, 1000, [], _since(started), warnings)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 4)


# --- the run -------------------------------------------------------------------------


@dataclass
class _Pending:
    item: Item
    attempts: int = 1


@dataclass
class BatchRun:
    """One batch: where results go, what runs them, and the report."""

    outdir: Path
    executor: RenderExecutor
    source_map: SourceMap | None = None
    model: str = "u2netp"
    resume: bool = False
    thresholds: dict[str, float] | None = None  # pre-flight's (PreflightThresholds' keyword arguments)
    strict: bool = False  # an item with any warning is refused (1003), not rendered
    progress: Any = None  # a Progress, or None for silence
    summary: BatchSummary = field(default_factory=BatchSummary)
    # Items the executor dropped (its cluster went away), to run again once it is back.
    _dropped: deque[_Pending] = field(default_factory=deque, init=False)
    _away_since: float | None = field(default=None, init=False)  # when the first was dropped (None: all answer)
    _away_reason: str = field(default="", init=False)

    def run(self, items: Iterator[Item]) -> BatchSummary:
        report_path = self.outdir / REPORT_NAME
        in_flight: dict[Future[ItemOutcome], _Pending] = {}
        try:
            if self.resume:
                _drop_partial_line(report_path)
            self._report = report_path.open("a" if self.resume else "w", encoding="utf-8")
        except OSError as exc:
            self.summary.stopped_by = str(BatchOutputError(report_path, exc))
            if self.progress is not None:
                self.progress.close()
            return self.summary
        try:
            self._pump(items, in_flight)
        except KeyboardInterrupt:
            self.summary.stopped_by = "interrupted"
        except (ExecutorUnavailable, BatchOutputError) as exc:
            self.summary.stopped_by = str(exc)
        finally:
            for future in in_flight:
                future.cancel()
            # the rest of the input is not read: a stop is at once
            self.summary.not_run += len(in_flight) + len(self._dropped)
            try:
                self._report.close()
            except OSError as exc:  # a line that could not be flushed: --resume drops what is left of it
                if self.summary.stopped_by is None:
                    self.summary.stopped_by = str(BatchOutputError(report_path, exc))
            if self.progress is not None:
                self.progress.close()
        return self.summary

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
        return self.executor.submit(
            render_item, item.body, item.base_dir, self.source_map, self.model, self.thresholds, self.strict
        )

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
        if outcome.png is None:
            self._record(item, "failed", outcome.code, outcome.errors, outcome.seconds, outcome.warnings)
            return
        with _ctrl_c_waits():  # a result on disk always has its report line
            try:
                write_atomically(self._output(item), outcome.png)
            except OSError as exc:  # a full disk: the batch stops, what was written stays whole
                raise BatchOutputError(self._output(item), exc) from None
            self._record(item, "done", outcome.code, [], outcome.seconds, outcome.warnings)

    def _output(self, item: Item) -> Path:
        return self.outdir / f"{item.id}.png"

    def _record(
        self,
        item: Item,
        status: str,
        code: int | None,
        errors: list[dict[str, str]],
        seconds: float,
        warnings: list[dict[str, str]] | None = None,
    ) -> None:
        """The item's report line. `warnings` is [] where none were found, and
        where none were looked for (an item that is not a body, a skipped one,
        a worker lost)."""
        line = {
            "id": item.id,
            "status": status,
            "output": str(self._output(item)) if status in ("done", "skipped") else None,
            "seconds": seconds,
            "code": code,
            "errors": errors,
            "warnings": warnings or [],
        }
        try:
            self._report.write(json.dumps(line) + "\n")
            self._report.flush()
        except OSError as exc:
            raise BatchOutputError(self.outdir / REPORT_NAME, exc) from None
        setattr(self.summary, status, getattr(self.summary, status) + 1)
        if warnings:
            self.summary.warned += 1
        if self.progress is not None:
            self.progress.advance(status)


@contextlib.contextmanager
def _ctrl_c_waits() -> Iterator[None]:
    """Ctrl-C (SIGINT) held back until the block ends, then handled as usual: a
    stop between writing a result and writing its report line would leave a
    file the report does not list."""
    with signals_noted(signal.SIGINT) as caught:
        yield
    if caught:
        previous = signal.getsignal(signal.SIGINT)
        if callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt here
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


def _drop_partial_line(report: Path) -> None:
    """A report whose last line was cut (a kill, a full disk) loses that line,
    so that what is appended starts a line of its own. The cut line's item is
    not lost: its output exists (it is skipped, and said so) or it runs again."""
    try:
        file = report.open("r+b")
    except FileNotFoundError:
        return
    with file:
        end = file.seek(0, os.SEEK_END)
        keep = end
        while keep > 0:
            start = max(0, keep - READ_CHUNK)
            file.seek(start)
            block = file.read(keep - start)
            if keep == end and block.endswith(b"\n"):
                return  # whole: nothing to drop
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        file.truncate(keep)


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
        left = (self.total - finished) / rate if rate > 0 else float("nan")
        return (
            f"batch: {finished}/{self.total}, {self.counts['done']} done, {self.counts['failed']} failed,"
            f" {self.counts['skipped']} skipped, {rate:.1f} items/s, about {left:.0f} s left"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
