"""`compositor batch`: many bodies on the local cores or a Dask cluster."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

from compositor.commands.common import (
    EXIT_UNUSABLE,
    add_source_map_argument,
    add_storage_options_argument,
    add_threshold_arguments,
    in_object_storage,
    read_source_map,
    storage_options_of,
    thresholds_of,
)
from compositor.weights import model_names


def add_parser(commands: argparse._SubParsersAction) -> None:
    batch = commands.add_parser(
        "batch", help="render many bodies (JSONL or a folder of .json) on the local cores or a Dask cluster"
    )
    batch.add_argument(
        "input",
        help="a JSONL file (a body, or {id, body}, a line) or a folder of *.json; or the same in object storage:"
        " s3://bucket/bodies.jsonl, or s3://bucket/prefix/ holding *.json",
    )
    batch.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTDIR",
        help="where the results and report.jsonl go: a folder, or s3://bucket/prefix/ (written by the workers)",
    )
    batch.add_argument("--workers", type=int, help="local render processes (default: the core count)")
    batch.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="render on this Dask cluster instead")
    batch.add_argument(
        "--resume",
        action="store_true",
        help="skip items whose output exists (in object storage: and whose report line says done); carry the report on",
    )
    batch.add_argument(
        "--strict",
        action="store_true",
        help="refuse (1003, not rendered) an item with any warning: the body's own, or pre-flight's from its"
        " sources' headers (each item's warnings are in report.jsonl either way)",
    )
    batch.add_argument("--model", default="u2netp", choices=model_names(), help="removeBg model (default u2netp)")
    add_source_map_argument(batch)
    add_storage_options_argument(batch)
    add_threshold_arguments(batch)
    batch.set_defaults(handler=run)


def _local(target: str) -> Path:
    scheme, sep, rest = target.partition("://")
    return Path(rest) if sep and scheme.lower() == "file" else Path(target)


def run(args: argparse.Namespace) -> int:
    from compositor.signals import STOP_EXIT_CODES, stopped_by

    try:
        with contextlib.ExitStack() as held:
            return _run_batch(args, held)
    except KeyboardInterrupt as stop:  # outside the run's own handling: counting the input, starting or stopping
        said = stopped_by(stop)
        print(f"compositor: {said}; what was written stays whole (--resume carries on)", file=sys.stderr)
        return STOP_EXIT_CODES[said]


def _run_batch(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    from compositor.batch import REPORT_NAME, BatchRun, Progress
    from compositor.catalogue import CatalogueError, StoredInput, count_items, read_items, stored_input
    from compositor.executors import DaskExecutor, ExecutorUnavailable, LocalExecutor, RenderExecutor
    from compositor.folderlock import FolderInUseError, FolderLock, FolderLockError, LockingUnsupportedError
    from compositor.heap import prepare_render_process
    from compositor.signals import STOP_EXIT_CODES, signals_noted, stopped_by
    from compositor.sourcemap import SourceMapError
    from compositor.storage import Location, StorageError, open_location

    stored = in_object_storage(args.input)
    local_source = _local(args.input)
    if not stored and not local_source.exists():
        print(f"compositor: no input at {local_source}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not stored and not local_source.is_dir() and not local_source.is_file():
        print(f"compositor: {local_source} is neither a JSONL file nor a folder", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.workers is not None and args.workers < 1:
        print("compositor: --workers must be 1 or more", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        args.thresholds = thresholds_of(args)  # pre-flight's, as PreflightThresholds' keyword arguments
        options = storage_options_of(args)
    except ValueError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    # Up front, before any worker starts: the input found and read (counted), the output proven writable. A stored
    # input is counted last: streaming a large object through is the slow part, and a typo in -o says so first.
    try:
        source_map = read_source_map(args)
        source: Path | StoredInput = stored_input(args.input, options) if stored else local_source
        total = None if stored else count_items(source)
        output: Path | Location
        if in_object_storage(args.output):
            output = open_location(args.output, options)
            output.check_writable()
        else:
            output = _local(args.output)
            output.mkdir(parents=True, exist_ok=True)
            probe = output / ".compositor-write-test"
            probe.write_bytes(b"")
            probe.unlink()
            # Held to the end: a second run into this folder would delete this one's partial results and
            # empty its report.
            try:
                held.callback(FolderLock(output, "batch", {}, remove_note=True).release)
            except LockingUnsupportedError as exc:
                print(f"compositor: {exc}; run no other batch into it meanwhile", file=sys.stderr)
        report_at = str((output / REPORT_NAME).resolve()) if isinstance(output, Path) else output.url_of(REPORT_NAME)
        if report_at == (source.url if isinstance(source, StoredInput) else str(source.resolve())):
            print(
                f"compositor: the input {args.input} is where the report goes: the run would overwrite it; give -o"
                " another place",
                file=sys.stderr,
            )
            return EXIT_UNUSABLE
        if total is None:
            total = count_items(source)
    except FolderInUseError as exc:
        print(f"compositor: the output folder {exc}: wait for it to end, or give -o another folder", file=sys.stderr)
        return EXIT_UNUSABLE
    except (CatalogueError, SourceMapError, StorageError, FolderLockError) as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except OSError as exc:
        print(f"compositor: cannot write to {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        executor: RenderExecutor = (
            DaskExecutor(args.scheduler)
            if args.scheduler
            else LocalExecutor(args.workers or os.cpu_count() or 1, name="batch", initializer=prepare_render_process)
        )
    except ExecutorUnavailable as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.scheduler:  # Dask's own INFO lines (set when it was imported; a lost connection's traceback among them)
        import logging

        logging.getLogger("distributed").setLevel(logging.WARNING)
    run = BatchRun(
        output,
        executor,
        source_map=source_map,
        model=args.model,
        resume=args.resume,
        thresholds=args.thresholds,
        strict=args.strict,
        storage_options=options,
        progress=Progress(total),
    )
    try:
        summary = run.run(read_items(source))
    except CatalogueError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    finally:
        # A stop asked for again while the batch is ending (a second Ctrl-C or SIGTERM) waits: the workers
        # are stopped and their partial files removed, and the last line is said, whatever comes meanwhile.
        with signals_noted(signal.SIGINT, signal.SIGTERM) as again:
            executor.shutdown()
            run.discard_partials()  # of items under way at a stop: no worker is left to finish them
    if again and summary.stopped_by is None:
        summary.stopped_by = stopped_by(again[0])
    report = run.output.url_of(REPORT_NAME)
    counts = f"{summary.done} done, {summary.failed} failed, {summary.skipped} skipped"
    line = f"{counts}, {summary.warned} with warnings; report in {report}"
    if summary.stopped_by in STOP_EXIT_CODES:
        line = f"{summary.stopped_by}: {line}; {summary.not_run} under way were dropped (--resume carries on)"
    elif summary.stopped_by is not None:
        line = f"stopped, {summary.stopped_by}: {line}; {summary.not_run} under way were dropped (--resume carries on)"
    print(f"compositor: {line}", file=sys.stderr)
    return summary.exit_code
