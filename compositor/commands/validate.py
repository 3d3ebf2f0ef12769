"""`compositor validate`: the API's verdict on a body, without rendering it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compositor.commands.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNUSABLE,
    add_limit_arguments,
    add_source_map_argument,
    add_storage_options_argument,
    add_threshold_arguments,
    body_error_envelope,
    in_object_storage,
    limits_of,
    load_body,
    read_source_map,
    storage_options_of,
    thresholds_of,
)

if TYPE_CHECKING:
    from compositor.report import ValidationReport


def add_parser(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser(
        "validate",
        help="check a request body (or a catalogue of them) without rendering it",
        description="The API's verdict on a body without rendering it: a JSON file, - for stdin, or a catalogue"
        " (a .jsonl file or a folder of .json, read as batch reads them) with one line per body."
        " Exit 0: every body valid; 1: one or more refused; 2: the input cannot be read.",
    )
    validate.add_argument(
        "request", help="request body (JSON file, or - for stdin), or a catalogue: a .jsonl file or a folder of .json"
    )
    validate.add_argument("--strict", action="store_true", help="require webhookUrl and treat warnings as errors")
    validate.add_argument(
        "--json", action="store_true", help="print one JSON envelope on stdout (a catalogue: one a line, with its id)"
    )
    validate.add_argument(
        "--sources",
        action="store_true",
        help="also read each source's header (as render reads it, never its pixels): 1108 for a source that cannot"
        " be read, warnings for stretched, enlarged or cut-off layers, a canvas left transparent, removeBg over alpha",
    )
    add_limit_arguments(validate)
    add_source_map_argument(validate)
    add_storage_options_argument(validate)
    add_threshold_arguments(validate)
    validate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        args.thresholds = thresholds_of(args)
        args.storage = storage_options_of(args)  # for --sources' s3:// sources
    except ValueError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if is_catalogue(args.request):
        return _run_catalogue(args)
    loaded = load_body(args.request, as_json=args.json)
    if isinstance(loaded, int):
        return loaded
    body, base_dir = loaded
    try:
        source_map = read_source_map(args)
    except ValueError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    envelope = _judge(body, base_dir, source_map, args)
    print(json.dumps(envelope) if args.json else _as_text(envelope))
    return EXIT_OK if envelope["code"] == 1000 else EXIT_INVALID


def _judge(body: object, base_dir: Path | str, source_map: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One body's envelope, as the options ask: the same for a single body and each of a catalogue's."""
    from compositor.request import validate

    report = validate(body, strict=args.strict, limits=limits_of(args))
    if source_map is not None and isinstance(body, dict):
        report.warnings.extend(_unmapped_files(body, source_map))
    if not args.sources:
        return report.envelope()
    return _with_sources(
        report, base_dir, source_map, strict=args.strict, thresholds=args.thresholds, storage_options=args.storage
    )


def _as_text(envelope: dict[str, Any], label: str = "") -> str:
    """The verdict line, then a line per problem beneath it."""
    code = envelope["code"]
    lines = [f"{label}{'valid' if code == 1000 else 'invalid'} ({code})"]
    lines += [f"  error   {p['field']}: {p['message']}" for p in envelope["data"]["errors"]]
    lines += [f"  warning {p['field']}: {p['message']}" for p in envelope["data"]["warnings"]]
    return "\n".join(lines)


def _with_sources(
    report: ValidationReport,
    base_dir: Path | str,
    source_map: Any,
    *,
    strict: bool,
    thresholds: dict[str, float],
    storage_options: dict[str, Any],
) -> dict[str, Any]:
    """The envelope after reading a valid body's source headers (`--sources`):
    unreadable sources are errors (1108 when they are the only ones), what the
    headers predict is warnings (errors under --strict). Only here are Pillow
    and numpy loaded: `validate` without --sources reads no picture."""
    if report.request is None:
        return dict(report.envelope())
    from compositor.preflight import PreflightThresholds, envelope, preflight
    from compositor.sources import SourcePolicy

    policy = SourcePolicy(
        base_dir=Path(base_dir), source_map=source_map, object_storage=True, storage_options=storage_options
    )
    errors, warnings = preflight(report.request, policy, PreflightThresholds(**thresholds))
    report.errors.extend(errors)
    (report.errors if strict else report.warnings).extend(warnings)
    return envelope(report, errors)


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


def is_catalogue(name: str) -> bool:
    """A folder, a file named .jsonl, or an object-storage URL (a JSONL object or a prefix of *.json): many
    bodies, read as `batch` reads them."""
    if name == "-":
        return False
    if in_object_storage(name):
        return True
    path = Path(name)
    return path.is_dir() or path.suffix.lower() == ".jsonl"


def _run_catalogue(args: argparse.Namespace) -> int:
    """One line per body, in the catalogue's order: its id and verdict (and, in
    text, its problems beneath it); then a count on stderr. One process, each
    body judged by the same rules as a single one."""
    from compositor.catalogue import CatalogueError, StoredInput, read_items, stored_input
    from compositor.storage import StorageError

    try:
        source_map = read_source_map(args)
    except ValueError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    counts = {"valid": 0, "invalid": 0}
    try:
        source: Path | StoredInput = (
            stored_input(args.request, args.storage) if in_object_storage(args.request) else Path(args.request)
        )
        for item in read_items(source):
            if item.problem is not None:
                envelope = body_error_envelope(item.problem["message"], item.problem["field"])
            else:
                envelope = _judge(item.body, item.base_dir, source_map, args)
            counts["valid" if envelope["code"] == 1000 else "invalid"] += 1
            print(json.dumps({"id": item.id, **envelope}) if args.json else _as_text(envelope, f"{item.id}  "))
    except (CatalogueError, StorageError) as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    total = counts["valid"] + counts["invalid"]
    print(f"compositor: {total} bodies: {counts['valid']} valid, {counts['invalid']} invalid", file=sys.stderr)
    return EXIT_INVALID if counts["invalid"] else EXIT_OK
