"""What a source string may be, checked by its text alone (no reading, no
decoding): validation asks this without importing any image library."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
DATA_HEADER = re.compile(r"data:([a-zA-Z0-9!#$&^_.+-]+/[a-zA-Z0-9!#$&^_.+-]+)?((?:;[^,;]+)*),", re.DOTALL)


def check_source_reference(ref: str) -> str | None:
    """A static check of a source string: the problem, or None if it is usable."""
    if ref.startswith("data:"):
        return None if DATA_HEADER.match(ref) else "is not a valid data: URI (expected data:[type][;base64],...)"
    scheme = SCHEME.match(ref)
    if scheme is None or len(scheme.group(1)) == 1:  # "C:\..." is a path
        return None
    name = scheme.group(1).lower()
    try:
        parts = urlsplit(ref)
        host = parts.hostname
        parts.port  # noqa: B018  (raises for a port that is not a number from 0 to 65535)
    except ValueError as exc:  # "[" in the host, a port that is not a number
        return f"is not a valid URL ({exc})"
    if "\0" in ref:
        return "contains a NUL character"
    if name in ("http", "https"):
        return None if host else "is an http(s) URL without a host"
    if name == "file":
        return None if parts.path else "is a file: URL without a path"
    return f"has an unsupported scheme {name!r} (use http, https, file, data or a path)"
