"""`compositor serve`: the local mirror of the upstream API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compositor.commands.common import (
    EXIT_OK,
    EXIT_UNUSABLE,
    add_source_map_argument,
    add_storage_options_argument,
    add_threshold_arguments,
    one_line,
    storage_options_of,
)
from compositor.weights import model_names

if TYPE_CHECKING:
    import logging
    import socket


def add_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the local mirror of the upstream API")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; $COMPOSITOR_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8080; $COMPOSITOR_PORT)")
    serve.add_argument("--data-dir", type=Path, help="job store and results (default ./data; $COMPOSITOR_DATA_DIR)")
    serve.add_argument(
        "--client", action="append", metavar="ID:SECRET", help="a client (repeatable; $COMPOSITOR_CLIENTS)"
    )
    serve.add_argument(
        "--results",
        metavar="URL",
        help="where results are kept: a folder, or s3://bucket/prefix, written by the worker that renders each job"
        " and served through the mirror's /results/ (default: DATA_DIR/results; $COMPOSITOR_RESULTS)",
    )
    add_storage_options_argument(serve)
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
        "--allow-object-storage",
        choices=("true", "false"),
        help="may bodies name s3:// sources, read with this server's own AWS credentials (default false)",
    )
    serve.add_argument(
        "--page-host", action="append", metavar="NAME", help="a host name the preview page answers on, beside loopback"
    )
    add_source_map_argument(serve)
    add_threshold_arguments(serve)
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
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from compositor.executors import ExecutorUnavailable
    from compositor.mirror import config
    from compositor.mirror.connections import droppable_protocol
    from compositor.mirror.database import StoreError
    from compositor.mirror.lock import DataDirUnavailableError
    from compositor.mirror.responses import create_app
    from compositor.mirror.service import Mirror
    from compositor.storage import StorageError

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
        "allow_object_storage": args.allow_object_storage,
        "page_host": args.page_host,
        "source_map": args.source_map,
        "admin_token": args.admin_token,
        "scenario": args.scenario,
        "model": args.model,
        "scheduler": args.scheduler,
        "results": args.results,
        "warn_aspect_change": args.warn_aspect_change,
        "warn_enlargement": args.warn_enlargement,
        "warn_cut_off": args.warn_cut_off,
    }
    from compositor import logs

    level = args.log_level or os.environ.get("COMPOSITOR_LOG_LEVEL", "info")
    log_format = args.log_format or os.environ.get("COMPOSITOR_LOG_FORMAT", "text")
    try:
        if level not in logs.LEVELS or log_format not in logs.FORMATS:
            raise config.ConfigError(f"the log level must be one of {logs.LEVELS} and the format one of {logs.FORMATS}")
        flags["storage_options"] = storage_options_of(args) or None
        served = config.load(flags)
    except (config.ConfigError, OSError, ValueError, TypeError, AttributeError) as exc:
        print(f"compositor: {one_line(exc)}", file=sys.stderr)
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
    except (DataDirUnavailableError, StoreError, OSError, ExecutorUnavailable, StorageError) as exc:
        listener.close()
        print(f"compositor: {one_line(exc)}", file=sys.stderr)
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
    import socket

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
    if settings.results_in_bucket:
        print(f"  results in {settings.results_location.url} (served through {base}/results/)")
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
