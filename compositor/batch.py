"""`compositor batch`: many bodies rendered on an executor (the local cores, or
a Dask cluster), each result written once and atomically, one report line
per item.

The input is streamed and at most a few items per worker are in flight, so
memory stays flat however long the input is: a million-line file costs what
a ten-line one does, plus the ids seen (to refuse a duplicate). The workers
read the sources and render; the answers (PNG bytes, or why not) come back
here and are written by this process alone, so an item is written exactly
once even when a lost Dask worker's task runs again elsewhere.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from compositor.executors import ExecutorUnavailable, RenderExecutor, WorkerDied, WorkerError
from compositor.files import write_atomically
from compositor.sourcemap import SourceMap

REPORT_NAME = "report.jsonl"
IN_FLIGHT_PER_WORKER = 2  # enough to keep a worker busy while its last answer travels back
ATTEMPTS = 2  # a local item whose worker died is run once more
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@dataclass(frozen=True)
class Item:
    """One body to render; `problem` set when it cannot even be read (it fails as it is)."""

    id: str
    body: Any
    base_dir: str
    problem: dict[str, str] | None = None


@dataclass(frozen=True)
class ItemOutcome:
    """What a worker answers: the PNG, or the API's code and the problems by field."""

    png: bytes | None
    code: int
    errors: list[dict[str, str]]
    seconds: float


@dataclass
class BatchSummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    not_run: int = 0  # items under way when the batch stopped
    stopped_by: str | None = None  # "interrupted", or why the executor stopped

    @property
    def exit_code(self) -> int:
        if self.stopped_by is not None:
            return 130 if self.stopped_by == "interrupted" else 2
        return 1 if self.failed else 0


class BatchInputError(Exception):
    """The input cannot be read at all; the message says why, in one line."""


# --- reading the input ----------------------------------------------------------


def count_items(source: Path) -> int:
    """How many items the input holds (a quick pass, for the progress bar)."""
    if source.is_dir():
        return sum(1 for _ in source.glob("*.json"))
    with _open(source) as lines:
        return sum(1 for line in lines if line.strip())


def read_items(source: Path) -> Iterator[Item]:
    """The input's items, one at a time: a JSONL file (a body a line, or
    `{"id", "body"}`; ids default to the line number, 6 digits) or a folder of
    `*.json` (the id is the file's stem). Relative paths in bodies resolve
    against the file's folder. An id used twice, or one that is not a safe
    file name, fails that item."""
    seen: set[str] = set()
    for item in _folder_items(source) if source.is_dir() else _jsonl_items(source):
        if item.problem is None and not _ID.fullmatch(item.id):
            item = Item(
                item.id, None, item.base_dir, _problem("id", "must be 1-200 of A-Z a-z 0-9 . _ - (a file name)")
            )
        elif item.problem is None and item.id in seen:
            item = Item(item.id, None, item.base_dir, _problem("id", "is used by an earlier item"))
        seen.add(item.id)
        yield item


def _open(source: Path) -> IO[str]:
    try:
        return source.open(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise BatchInputError(f"cannot read {source}: {exc.strerror or exc}") from None


def _jsonl_items(source: Path) -> Iterator[Item]:
    base = str(source.resolve().parent)
    with _open(source) as lines:
        number = 0
        for line in lines:
            if not line.strip():
                continue
            number += 1
            default_id = f"{number:06d}"
            try:
                value = json.loads(line)
            except (ValueError, RecursionError) as exc:
                yield Item(default_id, None, base, _problem("body", f"is not valid JSON: {str(exc)[:200]}"))
                continue
            if isinstance(value, dict) and set(value) == {"id", "body"}:
                item_id = value["id"] if isinstance(value["id"], str) else repr(value["id"])
                yield Item(item_id, value["body"], base)
            else:
                yield Item(default_id, value, base)


def _folder_items(source: Path) -> Iterator[Item]:
    base = str(source.resolve())
    for path in sorted(source.glob("*.json")):
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            yield Item(path.stem, None, base, _problem("body", f"cannot be read ({exc.strerror or exc})"))
        except (ValueError, RecursionError) as exc:
            yield Item(path.stem, None, base, _problem("body", f"is not valid JSON: {str(exc)[:200]}"))
        else:
            yield Item(path.stem, body, base)


def _problem(field_name: str, message: str) -> dict[str, str]:
    return {"field": field_name, "message": message}


# --- on a worker -------------------------------------------------------------------


def render_item(body: Any, base_dir: str, source_map: SourceMap | None, model: str) -> ItemOutcome:
    """Render one body to PNG bytes, on whichever worker runs it. Its removeBg
    model stays loaded in the worker's process for the items after it."""
    from compositor import CompositorError, RemovalOptions, RenderOptions, SourceError
    from compositor.encode import encode
    from compositor.engine import render_array
    from compositor.heap import prepare_render_process
    from compositor.request import validate
    from compositor.sources import SourcePolicy
    from compositor.threads import set_render_threads

    prepare_render_process()  # once per worker process (a Dask worker's first task included)
    set_render_threads(1)  # items run side by side, one a worker: threads inside one would fight the others
    started = time.perf_counter()
    report = validate(body)
    if not report.ok:
        return ItemOutcome(None, int(report.code), [p.as_dict() for p in report.errors], _since(started))
    options = RenderOptions(
        sources=SourcePolicy(base_dir=Path(base_dir), source_map=source_map), removal=RemovalOptions(model=model)
    )
    try:
        png = encode(render_array(body, options=options))
    except SourceError as exc:
        return ItemOutcome(None, int(exc.code), [_problem(exc.field, exc.reason)], _since(started))
    except CompositorError as exc:
        return ItemOutcome(None, int(exc.code), [_problem("body", str(exc))], _since(started))
    except MemoryError:
        return ItemOutcome(None, 1206, [_problem("body", "the render ran out of memory")], _since(started))
    return ItemOutcome(png, 1000, [], _since(started))


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
    progress: Any = None  # a Progress, or None for silence
    summary: BatchSummary = field(default_factory=BatchSummary)

    def run(self, items: Iterator[Item]) -> BatchSummary:
        report_path = self.outdir / REPORT_NAME
        with report_path.open("a" if self.resume else "w", encoding="utf-8") as report:
            self._report = report
            in_flight: dict[Future[ItemOutcome], _Pending] = {}
            try:
                self._pump(items, in_flight)
            except KeyboardInterrupt:
                self.summary.stopped_by = "interrupted"
            except ExecutorUnavailable as exc:
                self.summary.stopped_by = str(exc)
            finally:
                for future in in_flight:
                    future.cancel()
                self.summary.not_run += len(in_flight)  # the rest of the input is not read: a stop is at once
                if self.progress is not None:
                    self.progress.close()
        return self.summary

    def _pump(self, items: Iterator[Item], in_flight: dict[Future[ItemOutcome], _Pending]) -> None:
        exhausted = False
        while not exhausted or in_flight:
            window = IN_FLIGHT_PER_WORKER * max(1, self.executor.capacity)
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

    def _submit(self, item: Item) -> Future[ItemOutcome]:
        return self.executor.submit(render_item, item.body, item.base_dir, self.source_map, self.model)

    def _settle(
        self, future: Future[ItemOutcome], pending: _Pending, in_flight: dict[Future[ItemOutcome], _Pending]
    ) -> None:
        item = pending.item
        try:
            outcome = future.result()
        except WorkerDied as exc:
            if pending.attempts < ATTEMPTS:
                in_flight[self._submit(item)] = _Pending(item, pending.attempts + 1)
            else:
                self._record(item, "failed", 1206, [_problem("body", f"{exc}, {pending.attempts} times")], 0.0)
            return
        except WorkerError as exc:
            self._record(item, "failed", 1206, [_problem("body", f"the render failed: {exc}")], 0.0)
            return
        if outcome.png is None:
            self._record(item, "failed", outcome.code, outcome.errors, outcome.seconds)
            return
        write_atomically(self._output(item), outcome.png)
        self._record(item, "done", outcome.code, [], outcome.seconds)

    def _output(self, item: Item) -> Path:
        return self.outdir / f"{item.id}.png"

    def _record(self, item: Item, status: str, code: int | None, errors: list[dict[str, str]], seconds: float) -> None:
        line = {
            "id": item.id,
            "status": status,
            "output": str(self._output(item)) if status in ("done", "skipped") else None,
            "seconds": seconds,
            "code": code,
            "errors": errors,
        }
        self._report.write(json.dumps(line) + "\n")
        self._report.flush()
        setattr(self.summary, status, getattr(self.summary, status) + 1)
        if self.progress is not None:
            self.progress.advance(status)


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
