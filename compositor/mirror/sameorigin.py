"""Whether a request without credentials could only have come from this
machine's own pages and programs, not from a web page the developer has open.

The preview page and an open control plane answer loopback callers without
an account, so any site in the developer's browser could try to call them:
a simple cross-site POST (a form, or `fetch` with a text body needs no
preflight), or DNS rebinding (a foreign name that resolves to 127.0.0.1).
So: the Host must be a loopback name or one configured; an Origin, when
sent, must be one of those; a browser's `sec-fetch-site: cross-site` is
refused; and a body must be of a type no cross-site form can send.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def hostname(netloc: str) -> str:
    """The host of a Host header or an origin's netloc, lower case, without the port."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[: netloc.find("]") + 1] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def host_problem(headers: Mapping[str, str], allowed_hosts: frozenset[str]) -> str | None:
    host = hostname(headers.get("host", ""))
    if host not in allowed_hosts:
        return f"answers on loopback names only, not host {host!r}"
    return None


def cross_site_problem(
    headers: Mapping[str, str], allowed_hosts: frozenset[str], body_types: tuple[str, ...] | None
) -> str | None:
    """Why this request may be another site's (None: it may not). `body_types`
    None: the request carries no body to check."""
    problem = host_problem(headers, allowed_hosts)
    if problem is not None:
        return problem
    origin = headers.get("origin")
    if origin is not None and (origin == "null" or hostname(urlsplit(origin).netloc) not in allowed_hosts):
        return "cross-site requests are refused"
    if headers.get("sec-fetch-site") == "cross-site":
        return "cross-site requests are refused"
    if body_types is not None:
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if not kind.startswith(body_types):
            return f"wants a body of type {' or '.join(body_types)}, not {kind or 'none'!r}"
    return None
