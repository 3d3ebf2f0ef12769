"""`compositor validate`: the API's verdict on a body, without rendering it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from compositor.commands.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNUSABLE,
    add_limit_arguments,
    add_source_map_argument,
    limits_of,
    load_body,
    read_source_map,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser("validate", help="check a request body without rendering it")
    validate.add_argument("request", help="request body (JSON file, or - for stdin)")
    validate.add_argument("--strict", action="store_true", help="require webhookUrl and treat warnings as errors")
    validate.add_argument("--json", action="store_true", help="print one JSON envelope on stdout")
    add_limit_arguments(validate)
    add_source_map_argument(validate)
    validate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from compositor.request import validate

    loaded = load_body(args.request, as_json=args.json)
    if isinstance(loaded, int):
        return loaded
    body, _ = loaded
    report = validate(body, strict=args.strict, limits=limits_of(args))
    try:
        source_map = read_source_map(args)
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
