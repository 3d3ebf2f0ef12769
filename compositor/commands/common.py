"""What the commands share: exit codes, reading a body, and the options
several commands take (limits, a source map, the removeBg model)."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from compositor.weights import model_names

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNUSABLE = 2


class BodyError(Exception):
    """The request file is not a JSON document (or holds text that is not valid Unicode, in `field`)."""

    def __init__(self, message: str, field: str = "body") -> None:
        self.field = field
        super().__init__(message)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="removeBg device")
    parser.add_argument("--model", default="u2netp", choices=model_names(), help="removeBg model (default u2netp)")
    parser.add_argument("--model-home", type=Path, help="model home (default: $COMPOSITOR_MODEL_HOME or the checkout)")


def add_source_map_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source-map",
        type=Path,
        metavar="FILE",
        help="JSON from URLs (or URL prefixes ending in /) to local files or folders, read instead of fetched",
    )


def read_source_map(args: argparse.Namespace) -> Any:
    """The --source-map file's map (None without one); SourceMapError when it cannot be used."""
    from compositor.sourcemap import load_source_map

    return load_source_map(args.source_map) if args.source_map else None


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    from compositor.request import Limits

    defaults = Limits()
    for flag, default, what in (
        ("--max-canvas-side", defaults.max_canvas_side, "a canvas_size wider or taller than this"),
        ("--max-canvas-pixels", defaults.max_canvas_pixels, "a canvas_size of more pixels than this"),
        ("--max-layer-side", defaults.max_layer_side, "a modify_*_size wider or taller than this"),
    ):
        parser.add_argument(flag, type=int, default=default, metavar="PX", help=f"refuse (1003) {what}")


def limits_of(args: argparse.Namespace) -> Any:
    from compositor.request import Limits

    return Limits(
        max_canvas_side=args.max_canvas_side,
        max_canvas_pixels=args.max_canvas_pixels,
        max_layer_side=args.max_layer_side,
    )


def add_storage_options_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options",
        metavar="JSON",
        help="a JSON object of options for object storage (s3fs's: endpoint_url, profile, client_kwargs, ...);"
        " credentials come from the standard places (AWS_* variables, profiles), never from here",
    )


def in_object_storage(target: str) -> bool:
    """A URL of object storage (s3://...); a path, or a file:// URL, is local."""
    scheme, sep, _ = target.partition("://")
    return bool(sep) and scheme.lower() != "file"


def storage_options_of(args: argparse.Namespace) -> dict[str, Any]:
    """--storage-options as a dict ({} without it); ValueError saying what is wrong with it."""
    text = getattr(args, "storage_options", None)
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--storage-options is not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ValueError("--storage-options must be a JSON object")
    from compositor.storage import credentials_refused

    refused = credentials_refused(options)
    if refused:  # wherever the places are: a secret on a command line is in `ps` and the shell's history
        raise ValueError(f"--storage-options {refused}")
    return options


def add_threshold_arguments(parser: argparse.ArgumentParser) -> None:
    from compositor.mirror.settings import BY_KEY, THRESHOLDS

    for key, _, default, _ in THRESHOLDS:
        setting = BY_KEY[key]
        parser.add_argument(
            f"--{key.replace('_', '-')}",  # the setting's flag, by construction (a test holds them equal)
            type=float,
            metavar="N",
            help=f"{setting.help} (default {default:g}; ${setting.env})",
        )


def thresholds_of(args: argparse.Namespace) -> dict[str, float]:
    """The thresholds a command's flags and the environment set (validate, batch)."""
    from compositor.mirror.settings import THRESHOLDS, threshold_values

    flags = {key: getattr(args, key, None) for key, *_ in THRESHOLDS}
    return threshold_values(flags, os.environ, {})


# A body is a few hundred bytes; data: URIs can make it megabytes. Past this
# it is not a body (and /dev/zero on stdin is not read until memory runs out).
MAX_BODY_BYTES = 256 * 1024 * 1024


def read_body(source: str) -> tuple[object, Path]:
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


def load_body(source: str, *, as_json: bool = True) -> tuple[object, Path] | int:
    """The body and its folder, or the exit code after saying what is wrong:
    2 for a file that cannot be read, 1 (and a 1003 on `body`) for bad JSON."""
    try:
        return read_body(source)
    except OSError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except BodyError as exc:
        envelope = body_error_envelope(str(exc), exc.field)
        print(json.dumps(envelope) if as_json else f"invalid (1003)\n  error   {exc.field}: {exc}")
        return EXIT_INVALID


def body_error_envelope(message: str, field: str = "body") -> dict[str, Any]:
    return {
        "code": 1003,
        "msg": f"{field}: {message}",
        "data": {"errors": [{"field": field, "message": message}], "warnings": []},
    }


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
