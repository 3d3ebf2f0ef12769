"""What a source string may be, checked by its text alone (no reading, no
decoding): validation asks this without importing any image library.

Whether a source of a usable kind may be read here is not this module's
question but the source policy's (`sources.SourcePolicy`), at the render: a
local path on a server without file roots, an http(s) URL where the network
is off, an s3:// URL where object storage is off are each valid here and
refused there (1108), the way the API refuses a URL it cannot fetch."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
# Bucket names as S3 and S3-compatible stores take them (legacy us-east-1 names included).
S3_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
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
    if name == "s3":
        return _check_s3(ref)
    return f"has an unsupported scheme {name!r} (use http, https, s3, file, data or a path)"


def _check_s3(ref: str) -> str | None:
    """s3://bucket/key: a bucket, and a key whose parts are not empty, . or .. (an object, not a prefix)."""
    rest = ref[len("s3:") :]
    if not rest.startswith("//"):
        return "is not an s3:// URL (expected s3://bucket/key)"
    bucket, _, key = rest[2:].partition("/")
    if "@" in bucket:
        return (
            "is an s3:// URL with credentials in it: they come from the environment (AWS_* variables, profiles),"
            " never from the body"
        )
    if S3_BUCKET.fullmatch(bucket) is None:
        return "is an s3:// URL without a valid bucket name (expected s3://bucket/key)"
    if not key or any(part in ("", ".", "..") for part in key.split("/")):
        return "is an s3:// URL without an object's key (expected s3://bucket/key, no empty, . or .. parts)"
    if any(ord(char) < 32 or ord(char) == 127 for char in key):
        return "is an s3:// URL with a control character in its key"
    return None
