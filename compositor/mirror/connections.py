"""Dropping a connection with no answer, as a dead proxy or a crashed peer
does (the fault rule `"drop": true`).

ASGI gives an app no way to close its connection without answering: an app
that returns without a response gets a 500 from the server. So the server
runs uvicorn's own HTTP protocol with one addition (`droppable_protocol`):
each connection's transport is kept by the peer's address, and
`DropConnection`, raised anywhere in the app, reaches `Dropper` at the top,
which aborts that transport. In-process (the mock, over no socket) there is
no transport: `Dropper` raises `ConnectionDropped` for the mock to turn into
what `requests` or `httpx` raise for a dropped connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from compositor.mirror.middleware import App, Receive, Scope, Send

_OPEN: dict[tuple[str, int], asyncio.Transport] = {}


class DropConnection(BaseException):
    """Close this request's connection with no answer. A BaseException, so
    that no handler on the way up (FastAPI's, Starlette's, the envelope's)
    turns it into a 500."""


class ConnectionDropped(Exception):
    """The app dropped the connection of an in-process request."""


def droppable_protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, keeping each open connection's transport by its peer's address."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class DroppableHTTPProtocol(AutoHTTPProtocol):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if self.client is not None:
                _OPEN[tuple(self.client)] = transport

        def connection_lost(self, exc: Exception | None) -> None:
            if self.client is not None and _OPEN.get(tuple(self.client)) is self.transport:
                del _OPEN[tuple(self.client)]
            super().connection_lost(exc)

    return DroppableHTTPProtocol


class Dropper:
    """The outermost layer: carries out a DropConnection."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except DropConnection:
            client = scope.get("client")
            transport = _OPEN.get(tuple(client)) if client else None
            if transport is None:
                raise ConnectionDropped("the connection was closed with no answer") from None
            transport.abort()
            # Let the server see the connection lost before the app returns, so it sends no 500 of its own.
            await asyncio.sleep(0)
