"""Requests to URLs that somebody else chose: image sources and webhooks.

Three rules hold for every one of them, whatever the peer does:
- one deadline for the whole exchange (name look-up, connect, every read,
  redirects), so a peer that drips a byte a second is cut off on time;
- a byte cap counted on the bytes as they are decompressed, with at most one
  content-encoding layer, so 3 KB of nested gzip cannot become gigabytes;
- no loopback, private, link-local or otherwise non-global address unless
  the policy allows it. The name is resolved once and the connection goes to
  that address (TLS still checks the name), so DNS rebinding cannot slip a
  private address in after the check.

Every network failure gets the same words, so the answers cannot be used to
map which ports of a host are open. Whether an exchange went to a loopback,
private or link-local address (at any hop) is told to the caller, in
`Download.private` and `OutboundError.private`, so that a server can give
every failure there the same words too (see `SourcePolicy.private_causes`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import re
import socket
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
_REDIRECTS = (301, 302, 303, 307, 308)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Name look-ups block a thread. Not the event loop's default executor: asyncio.run
# waits for that one at its end, so a look-up that hangs would outlast the deadline.
_RESOLVER = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="resolve")
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 32 + zlib.MAX_WBITS}


class OutboundError(Exception):
    """The peer could not be used; `reason` is safe to show to whoever named
    the URL. `private`: a hop of the exchange went to a loopback, private or
    link-local address (`reason` may then tell that network's ports apart)."""

    def __init__(self, reason: str, *, private: bool = False) -> None:
        self.reason = reason
        self.private = private
        super().__init__(reason)


class Unreachable(OutboundError):
    """The generic failure: no name, no connection, or no whole answer within the deadline."""


class DestinationRefused(OutboundError):
    """The URL names an address this policy does not reach."""


@dataclass
class _Route:
    """What an exchange has met so far, whatever becomes of it."""

    private: bool = False


@dataclass(frozen=True)
class Download:
    data: bytes
    private: bool = False  # a hop (redirects included) went to a loopback, private or link-local address
    complete: bool = True  # False: `data` is only the first bytes of the body (`fetch`'s `prefix`)


class TooLarge(OutboundError):
    """The answer is over the byte cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"is larger than the limit of {limit} bytes")


@dataclass(frozen=True)
class OutboundPolicy:
    deadline_s: float = 30.0
    max_bytes: int = 64 * 1024 * 1024
    allow_private: bool = True
    max_redirects: int = 5
    local_only: bool = False  # this machine's loopback addresses only, with no name look-up (the mock)

    @property
    def failure(self) -> str:
        return f"could not be fetched (the connection failed, or no whole answer came within {self.deadline_s:g} s)"


def is_loopback_name(host: str) -> bool:
    """Whether a host (a name or an address) is this machine's loopback, without a name look-up."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_refused_address(address: str) -> bool:
    """Whether an address is anything but a global unicast one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 inside IPv6 (mapped, 6to4, NAT64) is judged as the IPv4 address it reaches.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    return not ip.is_global or ip.is_multicast


async def _pinned(
    url: httpx.URL, policy: OutboundPolicy, route: _Route
) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """The URL rewritten to the one address it will use, with the headers and
    extensions that keep the name for the Host header and TLS. `route` learns
    whether that address is a loopback, private or link-local one."""
    if url.scheme not in ("http", "https") or not url.host:
        raise OutboundError("is not an http(s) URL with a host")
    port = url.port or (443 if url.scheme == "https" else 80)
    if policy.local_only and not is_loopback_name(url.host):
        raise DestinationRefused("is not on this machine, and nothing beyond it is reached here")
    lookup = functools.partial(socket.getaddrinfo, url.host, port, type=socket.SOCK_STREAM)
    try:
        infos = await asyncio.get_running_loop().run_in_executor(_RESOLVER, lookup)
    except (OSError, UnicodeError):
        raise Unreachable(policy.failure) from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise Unreachable(policy.failure)
    private = any(is_refused_address(a) for a in addresses)
    if private and not policy.allow_private:
        raise DestinationRefused("names a loopback, private or link-local address, which this server does not reach")
    route.private = route.private or private  # where it goes, not where it was refused
    host_header = url.host if url.port is None else f"{url.host}:{url.port}"
    if ":" in url.host:
        host_header = f"[{url.host}]" if url.port is None else f"[{url.host}]:{url.port}"
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return url.copy_with(host=addresses[0]), {"host": host_header}, extensions


async def _send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    policy: OutboundPolicy,
    *,
    follow: bool,
    route: _Route | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """The response, streaming, its headers read."""
    target = httpx.URL(url)
    extra_headers = kwargs.pop("headers", {})
    route = _Route() if route is None else route
    for _ in range(policy.max_redirects + 1):
        pinned, headers, extensions = await _pinned(target, policy, route)
        request = client.build_request(
            method, pinned, headers={**extra_headers, **headers}, extensions=extensions, **kwargs
        )
        response = await client.send(request, stream=True)
        location = response.headers.get("location")
        if not follow or response.status_code not in _REDIRECTS or not location:
            return response
        await response.aclose()
        target = target.join(location)
        if response.status_code == 303:
            method, kwargs = "GET", {}
    raise OutboundError(f"could not be fetched: more than {policy.max_redirects} redirects")


async def _read_capped(response: httpx.Response, policy: OutboundPolicy, prefix: int | None) -> tuple[bytes, int, bool]:
    """The body, decoded, under the cap; with a `prefix`, reading stops once
    more than that many decoded bytes are in (the caller then closes the
    connection mid-body) and the first `prefix` come back. Also the count of
    raw bytes received, and whether the body ended (False: cut short)."""
    encodings = [
        name
        for name in (part.strip().lower() for part in response.headers.get("content-encoding", "").split(","))
        if name and name != "identity"
    ]
    if len(encodings) > 1:
        raise OutboundError(f"could not be fetched: more than one content encoding ({', '.join(encodings)})")
    if encodings and encodings[0] not in _DECODERS:
        raise OutboundError(f"could not be fetched: unsupported content encoding {encodings[0]!r}")
    decoder = zlib.decompressobj(_DECODERS[encodings[0]]) if encodings else None
    enough = policy.max_bytes if prefix is None else min(prefix, policy.max_bytes)
    parts: list[bytes] = []
    size = received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received > policy.max_bytes:
            raise TooLarge(policy.max_bytes)
        while chunk and size <= enough:
            if decoder is None:
                piece, chunk = chunk, b""
            else:
                # max_length: never more than one byte past what is wanted comes out at once.
                try:
                    piece = decoder.decompress(chunk, enough - size + 1)
                except zlib.error:
                    raise OutboundError("could not be fetched: its compressed body is corrupt") from None
                chunk = decoder.unconsumed_tail
            size += len(piece)
            parts.append(piece)
        if size > enough:
            if prefix is None or prefix >= policy.max_bytes:
                raise TooLarge(policy.max_bytes)
            return b"".join(parts)[:prefix], received, False
    return b"".join(parts), received, True


# A 206's Content-Range for a range that starts at the first byte: its last byte and the whole length.
_CONTENT_RANGE = re.compile(r"bytes\s+0-(\d+)/(\d+|\*)\s*$")


def new_client() -> httpx.AsyncClient:
    """A client for `post_json` (and `get_bytes`'), to be used inside one event loop.
    No proxies or certificates from the environment: where a request goes is the policy's business."""
    return httpx.AsyncClient(timeout=None, trust_env=False, follow_redirects=False)


async def _get(url: str, policy: OutboundPolicy, route: _Route, prefix: int | None = None) -> Download | None:
    """A GET's body; with a `prefix`, its first bytes only: `Range: bytes=0-N`
    is asked for, and a 206 or a 200 read no further than needed. None where
    the server has no such range to give (416, or a range that does not start
    at 0): the caller then asks for the whole body."""
    headers = {"accept-encoding": "gzip, deflate"}
    if prefix is not None:
        headers["range"] = f"bytes=0-{prefix - 1}"
    async with new_client() as client:
        response = await _send(client, "GET", url, policy, follow=True, route=route, headers=headers)
        try:
            status = response.status_code
            total: int | None = None  # of the (encoded) body, where the answer says
            if prefix is not None and status == 206:
                match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
                if match is None:
                    return None
                total = int(match.group(2)) if match.group(2) != "*" else None
            elif prefix is not None and status == 416:
                return None
            elif status != 200:
                raise OutboundError(f"could not be fetched: HTTP {status}")
            else:
                declared = response.headers.get("content-length", "")
                total = int(declared) if declared.isdigit() else None
            if total is not None and total > policy.max_bytes and "content-encoding" not in response.headers:
                raise TooLarge(policy.max_bytes)
            data, received, ended = await _read_capped(response, policy, prefix)
            # A 206 that ended holds all of the body only if its range covered the whole length.
            whole = ended and (status == 200 or (total is not None and received >= total))
            return Download(data, route.private, whole)
        finally:
            await response.aclose()  # mid-body after a prefix: httpx drops the connection


def get_bytes(url: str, policy: OutboundPolicy) -> bytes:
    """The body of a GET, decompressed, under the policy's deadline and cap."""
    return fetch(url, policy).data


def fetch(url: str, policy: OutboundPolicy, prefix: int | None = None) -> Download:
    """`get_bytes`, saying too whether the answer (or, in the OutboundError,
    the failure) came from a loopback, private or link-local address. With a
    `prefix`, only the body's first `prefix` bytes are fetched where the
    server allows (`Download.complete` says whether they are all of it)."""
    route = _Route()

    async def bounded() -> Download:
        async with asyncio.timeout(policy.deadline_s):
            found = await _get(url, policy, route, prefix)
            if found is None:  # no range from the start: the whole body, within the same deadline
                found = await _get(url, policy, route)
            assert found is not None
            return found

    try:
        return _run_to_end(bounded)
    except OutboundError as exc:
        exc.private = exc.private or route.private
        raise
    except Exception:  # timeouts, transport errors, and what a malformed URL makes httpx raise
        raise Unreachable(policy.failure, private=route.private) from None


def _run_to_end(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end from synchronous code, also when the caller's
    thread already runs an event loop (an async app calling `render`, a
    notebook), where asyncio.run refuses: then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, make()).result()


async def post_json(client: httpx.AsyncClient, url: str, payload: Any, policy: OutboundPolicy) -> int:
    """POST `payload` as JSON; the HTTP status, once the answer's headers are
    in (the body is not waited for). Redirects are not followed."""
    try:
        async with asyncio.timeout(policy.deadline_s):
            response = await _send(client, "POST", url, policy, follow=False, json=payload)
            await response.aclose()
            return response.status_code
    except OutboundError:
        raise
    except Exception:  # timeouts, transport errors, and what a malformed URL makes httpx raise
        raise Unreachable(policy.failure) from None
