"""Reading request bodies safely, and two guards around the whole HTTP app, below routing, so that they hold for
every path, known or not:

- `BodyLimit`: a request body over its cap is refused with 413 before it is
  read whole: at once when Content-Length says so, else as soon as the bytes
  received pass the cap (`BodyTooLarge`, which the app answers).
- `ErrorEnvelope`: an exception nothing else handled becomes HTTP 500 with
  the envelope and a request id, and is logged with that id; the server goes on.
  Starlette answers through `internal_error` and then raises the exception
  again for the server to log: here it has been logged already, so it stops.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from compositor import text
from compositor.errors import ApiCode
from compositor.mirror.api_error import ApiError
from compositor.mirror.controls import Journal

log = logging.getLogger("compositor.mirror")

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]
App = Callable[[Scope, Receive, Send], Any]


class InvalidTextBody(ApiError):
    """A JSON body with a string that is not valid Unicode (`text.py`): a 1003 naming where it is."""

    def __init__(self, field: str) -> None:
        self.field = field
        super().__init__(ApiCode.PARAMETER_ERROR, f"{field}: {text.MESSAGE}")


async def read_json(request: Request) -> object:
    """The request's JSON body (None when empty). Anything that is not JSON,
    or that Python will not hold (integers over 4,300 digits, nesting deeper
    than the interpreter's stack), is a 1003 on `body`; a string in it that is
    not valid Unicode (the escape of a lone surrogate) is a 1003 naming its
    field. This is the one door of every JSON body: the API's, the page's and
    the control plane's."""
    raw = await request.body()
    try:
        parsed = json.loads(raw) if raw else None
    except UnicodeDecodeError:
        raise ApiError(ApiCode.PARAMETER_ERROR, "body: is not UTF-8 text") from None
    except RecursionError:
        raise ApiError(ApiCode.PARAMETER_ERROR, "body: is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int()'s digit limit
        raise ApiError(ApiCode.PARAMETER_ERROR, f"body: is not valid JSON: {str(exc)[:200]}") from None
    field = text.unencodable_field(parsed)
    if field is not None:
        raise InvalidTextBody(field)
    return parsed


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"body: larger than the limit of {limit} bytes")


CONTROL_PREFIX = "/_mirror/"  # the test controls answer plain JSON, not the API's envelope


async def send_envelope(send: Send, status: int, code: int, msg: str, data: Any = None) -> None:
    content: dict[str, Any] = {"code": code, "msg": msg}
    if data is not None:
        content["data"] = data
    await send_json(send, status, content)


async def send_json(send: Send, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    def __init__(self, app: App, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            if scope.get("path", "").startswith(CONTROL_PREFIX):
                await send_json(send, 413, {"error": str(BodyTooLarge(limit)), "field": "body"})
            else:
                await send_envelope(send, 413, 1003, str(BodyTooLarge(limit)))
            return
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return dict(message)

        # The BodyTooLarge raised here is answered by the app's handler for it.
        await self.app(scope, counted, send)


access_log = logging.getLogger("compositor.access")


class AccessLog:
    """One line per request: method, path, HTTP status, the envelope's code,
    the client, the time taken. Never a header, a query's secret or a body.
    An API call (a route that set `state.operation`) also goes into the
    test controls' journal, with the fault rule that answered it."""

    def __init__(self, app: App, journal: Journal | None = None) -> None:
        self.app = app
        self.journal = journal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": None, "json": False, "head": b""}

        async def watched(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["json"] = any(
                    k == b"content-type" and v.startswith(b"application/json") for k, v in message.get("headers", [])
                )
            elif message["type"] == "http.response.body" and seen["json"] and len(seen["head"]) < 64:
                seen["head"] += message.get("body", b"")[:64]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            code = _code_of(seen["head"]) if seen["json"] else None
            state = scope.get("state", {})
            elapsed_ms = (time.perf_counter() - started) * 1000
            fields = {"status": seen["status"], "code": code, "client_id": state.get("client_id")}
            if state.get("fault"):
                fields["fault"] = state["fault"]
            access_log.info(
                "%s %s", scope.get("method"), scope.get("path"), extra={"fields": fields | {"ms": round(elapsed_ms, 1)}}
            )
            if self.journal is not None and state.get("operation"):
                self.journal.record(
                    method=str(scope.get("method")),
                    path=str(scope.get("path")),
                    operation=state["operation"],
                    client_id=state.get("client_id"),
                    http_status=seen["status"],
                    code=code,
                    latency_ms=elapsed_ms,
                    fault=state.get("fault"),
                )


def _code_of(head: bytes) -> int | None:
    """The envelope's code from the first bytes of a JSON answer ({"code": N, ...})."""
    match = re.match(rb'\{"code":\s*(\d+)', head)
    return int(match.group(1)) if match else None


class ErrorEnvelope:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if not started:
                request_id = log_failure(scope.get("method"), scope.get("path"), exc)
                await send_envelope(send, 500, 1206, *internal_error_message(request_id))


def log_failure(method: object, path: object, exc: BaseException) -> str:
    """Log an unexpected failure under a new request id, and return the id."""
    request_id = secrets.token_hex(8)
    log.error("request %s: %s %s failed", request_id, method, path, exc_info=exc)
    return request_id


def internal_error_message(request_id: str) -> tuple[str, dict[str, str]]:
    return f"internal error (request id {request_id})", {"request_id": request_id}
