"""A catalogue's bodies, read one at a time: a JSONL file (a body a line, or
`{"id", "body"}`) or a folder of `*.json`. `batch` renders them and
`validate` judges them; both read them here, the same way. Streamed: a line
over MAX_ITEM_BYTES is read through and dropped, never held.

The same two shapes can be in object storage (`StoredInput`, found by
`stored_input(url)`): a JSONL object (`s3://bucket/bodies.jsonl`), streamed
a block at a time as a local file is, or a prefix holding `*.json`. A
relative path in a body read from a store resolves against the current
folder (a bucket is no folder a worker can read from)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from compositor import text
from compositor.storage import Location, StorageError, open_location

# An item's most bytes: a JSONL line or a folder's file. The same cap as a single body's `render`
# (commands.common.MAX_BODY_BYTES): a body is a few hundred bytes, data: URIs make it megabytes.
MAX_ITEM_BYTES = 256 * 1024 * 1024
READ_CHUNK = 1024 * 1024  # the input is read this much at a time: a line over the cap is skipped, never held
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@dataclass(frozen=True)
class Item:
    """One body to render; `problem` set when it cannot even be read (it fails as it is)."""

    id: str
    body: Any
    base_dir: str
    problem: dict[str, str] | None = None


class CatalogueError(Exception):
    """The input cannot be read at all; the message says why, in one line."""


@dataclass(frozen=True)
class StoredInput:
    """A catalogue in object storage: the JSONL object `name` in `place`, or (`name` None) the `*.json` right
    under `place`."""

    place: Location
    name: str | None = None

    @property
    def url(self) -> str:
        return self.place.url_of(self.name) if self.name else self.place.url


def stored_input(url: str, storage_options: Mapping[str, Any] | None = None) -> StoredInput:
    """The catalogue at `url`: the JSONL object of that name if there is one, else the prefix, which must hold
    `*.json`. Asks the store (a read of the input, up front): StorageError naming the URL when it cannot be
    read (no bucket, wrong credentials), CatalogueError when there is nothing there."""
    scheme, _, rest = url.partition("://")
    parent, slash, leaf = rest.rstrip("/").rpartition("/")
    if slash and parent and not url.endswith("/"):
        try:
            folder = open_location(f"{scheme}://{parent}", storage_options)
        except StorageError as exc:  # refused before the store is asked (options carrying keys): named as given
            raise StorageError(exc.action, url, exc.reason) from None
        if folder.exists(leaf):
            return StoredInput(folder, leaf)
    place = open_location(url, storage_options)
    if not place.list("*.json"):
        raise CatalogueError(f"no input at {url}: neither a JSONL object nor a prefix holding *.json")
    return StoredInput(place)


def count_items(source: Path | StoredInput) -> int:
    """How many items the input holds (a quick pass, for the progress bar)."""
    if isinstance(source, StoredInput):
        try:
            return _count_stored(source)
        except StorageError as exc:  # mid-stream too: one line naming the URL
            raise CatalogueError(str(exc)) from None
    if source.is_dir():
        return sum(1 for _ in source.glob("*.json"))
    with _open(source) as lines:
        return sum(1 for line in _lines(lines, keep=False) if line != b"")


def _count_stored(source: StoredInput) -> int:
    if source.name is None:
        return len(source.place.list("*.json"))
    with source.place.open_read(source.name) as lines:
        return sum(1 for line in _lines(lines, keep=False) if line != b"")


def read_items(source: Path | StoredInput) -> Iterator[Item]:
    """The input's items, one at a time: a JSONL file (a body a line, or
    `{"id", "body"}`; ids default to the line number, 6 digits) or a folder of
    `*.json` (the id is the file's stem). Relative paths in bodies resolve
    against the file's folder. An id used twice, or one that is not a safe
    file name, fails that item."""
    seen: set[str] = set()
    if isinstance(source, StoredInput):
        found = _stored_items(source)
    else:
        found = _folder_items(source) if source.is_dir() else _jsonl_items(source)
    for item in found:
        if item.problem is None and not _ID.fullmatch(item.id):
            item = Item(
                item.id, None, item.base_dir, field_problem("id", "must be 1-200 of A-Z a-z 0-9 . _ - (a file name)")
            )
        elif item.problem is None and item.id in seen:
            item = Item(item.id, None, item.base_dir, field_problem("id", "is used by an earlier item"))
        seen.add(item.id)
        yield item


def _open(source: Path) -> BinaryIO:
    try:
        return source.open("rb")
    except OSError as exc:
        raise CatalogueError(f"cannot read {source}: {exc.strerror or exc}") from None


def _lines(file: IO[bytes], *, keep: bool = True) -> Iterator[bytes | None]:
    """Each line's bytes (its newline left on), read READ_CHUNK at a time;
    None for a line over MAX_ITEM_BYTES, which is read through and dropped,
    never held. With `keep` false (counting), a line is only b"" if it is
    blank, else b"-": nothing is held."""
    cap = MAX_ITEM_BYTES
    while chunk := file.readline(READ_CHUNK):
        size, blank = len(chunk), chunk.isspace()
        held = [chunk] if keep else []
        while not chunk.endswith(b"\n"):
            chunk = file.readline(READ_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            blank = blank and chunk.isspace()
            if size - chunk.endswith(b"\n") > cap:
                held = []  # over the cap: the rest is read through, not kept
            elif keep:
                held.append(chunk)
        if size - chunk.endswith(b"\n") > cap:
            yield None
        elif not keep:
            yield b"" if blank else b"-"
        else:
            if len(held) > 1:
                held[:] = [b"".join(held)]
            yield held.pop()  # handed over, not kept here: the reader frees it when it is parsed


def _jsonl_items(source: Path) -> Iterator[Item]:
    base = str(source.resolve().parent)
    with _open(source) as lines:
        yield from _jsonl_stream_items(lines, base)


def _stored_items(source: StoredInput) -> Iterator[Item]:
    """A store's items; a failure to read the store (not one item's) stops the input, in one line."""
    base = str(Path.cwd())
    try:
        if source.name is None:
            yield from _stored_folder_items(source.place, base)
        else:
            with source.place.open_read(source.name) as lines:
                yield from _jsonl_stream_items(lines, base)
    except StorageError as exc:
        raise CatalogueError(str(exc)) from None


def _jsonl_stream_items(lines: IO[bytes], base: str) -> Iterator[Item]:
    number = 0
    for raw in _lines(lines):
        if raw is not None and raw.isspace():
            continue
        number += 1
        default_id = f"{number:06d}"
        if raw is None:
            yield Item(default_id, None, base, field_problem("body", f"is larger than {MAX_ITEM_BYTES} bytes"))
            continue
        line = raw.decode("utf-8", "surrogateescape")
        del raw
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:
            yield Item(default_id, None, base, field_problem("body", f"is not valid JSON: {str(exc)[:200]}"))
            continue
        finally:
            del line
        bad_text = text.unencodable_field(value)
        if bad_text is not None:  # bytes that are not UTF-8, or the escape of a lone surrogate
            yield Item(default_id, None, base, field_problem(bad_text, text.MESSAGE))
            continue
        if isinstance(value, dict) and set(value) == {"id", "body"}:
            item_id = value["id"] if isinstance(value["id"], str) else repr(value["id"])
            yield Item(item_id, value["body"], base)
        else:
            yield Item(default_id, value, base)


def _stored_folder_items(place: Location, base: str) -> Iterator[Item]:
    for name in place.list("*.json"):
        stem = name[: -len(".json")]
        try:
            with place.open_read(name) as file:
                raw = file.read(MAX_ITEM_BYTES + 1)
        except StorageError as exc:
            yield Item(stem, None, base, field_problem("body", f"cannot be read ({exc.reason})"))
            continue
        if len(raw) > MAX_ITEM_BYTES:
            yield Item(stem, None, base, field_problem("body", f"is larger than {MAX_ITEM_BYTES} bytes"))
            continue
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            yield Item(stem, None, base, field_problem("body", f"is not valid JSON: {str(exc)[:200]}"))
        else:
            bad_text = text.unencodable_field(body)
            problem = field_problem(bad_text, text.MESSAGE) if bad_text is not None else None
            yield Item(stem, None if problem else body, base, problem)


def _folder_items(source: Path) -> Iterator[Item]:
    base = str(source.resolve())
    for path in sorted(source.glob("*.json")):
        try:
            with path.open("rb") as file:
                raw = file.read(MAX_ITEM_BYTES + 1)
            if len(raw) > MAX_ITEM_BYTES:
                yield Item(path.stem, None, base, field_problem("body", f"is larger than {MAX_ITEM_BYTES} bytes"))
                continue
            body = json.loads(raw.decode("utf-8"))
        except OSError as exc:
            yield Item(path.stem, None, base, field_problem("body", f"cannot be read ({exc.strerror or exc})"))
        except (ValueError, RecursionError) as exc:
            yield Item(path.stem, None, base, field_problem("body", f"is not valid JSON: {str(exc)[:200]}"))
        else:
            bad_text = text.unencodable_field(body)
            problem = field_problem(bad_text, text.MESSAGE) if bad_text is not None else None
            yield Item(path.stem, None if problem else body, base, problem)


def field_problem(field_name: str, message: str) -> dict[str, str]:
    return {"field": field_name, "message": message}
