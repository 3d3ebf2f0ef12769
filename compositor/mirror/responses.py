"""HTTP in, calls on the `Mirror` out. Upstream answers HTTP 200 and puts the
outcome in `code`, so every business outcome here is a 200 with the
`{code, msg, data}` envelope. Every other answer is the envelope too, with
an HTTP status that says what happened: 404 and 405 for unknown paths and
methods, 413 for a body over its cap, 503 while the job store cannot be
written (a full disk), 500 with a request id for anything unexpected.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any

import fastapi_offline
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from compositor.errors import ApiCode, InvalidRequestError
from compositor.mirror.api_error import ApiError
from compositor.mirror.connections import DropConnection, Dropper
from compositor.mirror.control_routes import add_controls
from compositor.mirror.database import StoreError
from compositor.mirror.downloads import CHUNK_BYTES, open_file_response
from compositor.mirror.jobs import Job
from compositor.mirror.middleware import (
    CONTROL_PREFIX,
    AccessLog,
    BodyLimit,
    BodyTooLarge,
    ErrorEnvelope,
    internal_error_message,
    log_failure,
    read_json,
)
from compositor.mirror.openapi import ALIAS_PREFIX, API_PREFIX, openapi_document
from compositor.mirror.page import add_page
from compositor.mirror.service import Mirror
from compositor.storage import StorageError


def envelope(code: int, msg: str, data: Any = None) -> JSONResponse:
    content: dict[str, Any] = {"code": code, "msg": msg}
    if data is not None:
        content["data"] = data
    return JSONResponse(content)


def _accepted(job: Job, warnings: list[dict[str, str]]) -> JSONResponse:
    """The 1000 answer to a submit, encoded here: the back end calls this before it commits the job. The
    record carries `warnings`, the same as given here: the job keeps them, so a poll answers them too."""
    return envelope(1000, "OK", job.to_api())


def create_app(mirror: Mirror) -> Dropper:
    """The mirror as an ASGI app: the FastAPI routes inside the guards of
    `middleware` (the FastAPI app itself is `.app.app`)."""
    app = _routes(mirror)
    upload_limit = mirror.settings.upload_limit
    body_limit = mirror.settings.body_limit
    routes: Any = app  # Starlette's own ASGI types are narrower than the plain callables here
    limited = BodyLimit(routes, lambda path: upload_limit if path == "/uploads" else body_limit)
    return Dropper(ErrorEnvelope(AccessLog(limited, mirror.controls.journal)))


def _also_without_open(path: str) -> str:
    """The docs' Java sample calls upstream (contentapi.akool.com) without `/open` in the path: the same
    operation, answered and documented (the in-process mock intercepts that host, so its clients reach it)."""
    return path.replace(API_PREFIX + "/", ALIAS_PREFIX + "/")


def _routes(mirror: Mirror) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        mirror.start()
        try:
            yield
        finally:
            mirror.stop()

    # /docs and /redoc with their scripts served from the package: the default
    # pages load them from a CDN, and are blank offline.
    app = FastAPIOffline(
        title="compositor mirror of Akool's Background Change API",
        version="0.1.0",
        description="Same paths, headers, envelope, codes, job states and webhooks as upstream; rendered locally.",
        lifespan=lifespan,
        # No 307 to the path without its trailing slash: an answer with no body is not the envelope.
        redirect_slashes=False,
        redoc_url=None,  # its own, below: the packaged bundle loads Redocly's logo from their CDN
    )
    _add_redoc(app)

    @app.exception_handler(StoreError)
    async def store_failed(_: Request, exc: StoreError) -> JSONResponse:
        # Not the caller's fault and it may pass (a full disk): say so, and when to try again.
        response = envelope(
            int(ApiCode.BACKGROUND_CHANGE_ERROR), f"the mirror cannot store jobs right now: {exc.reason}"
        )
        response.status_code = 503
        response.headers["retry-after"] = "5"
        return response

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        if request.url.path.startswith(CONTROL_PREFIX):
            return JSONResponse({"error": str(exc), "field": "body"}, status_code=413)
        response = envelope(int(ApiCode.PARAMETER_ERROR), str(exc))
        response.status_code = 413
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {404: "no such endpoint", 405: "method not allowed for this endpoint"}
        response = envelope(int(ApiCode.PARAMETER_ERROR), messages.get(exc.status_code, str(exc.detail)))
        response.status_code = exc.status_code
        if exc.status_code == 405:  # RFC 9110: a 405 says which methods the resource takes
            response.headers["allow"] = _allowed_methods(app, request)
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return envelope(int(ApiCode.PARAMETER_ERROR), f"{field}: {first.get('msg', 'is not valid')}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = log_failure(request.method, request.url.path, exc)
        response = envelope(int(ApiCode.BACKGROUND_CHANGE_ERROR), *internal_error_message(request_id))
        response.status_code = 500
        return response

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return envelope(int(exc.code), exc.message)

    @app.exception_handler(InvalidRequestError)
    async def invalid_request(_: Request, exc: InvalidRequestError) -> JSONResponse:
        report = exc.report.envelope()
        return envelope(report["code"], report["msg"], report["data"])

    async def faulted(
        request: Request, operation: str, caller: Callable[[], str | None], shown: object = ...
    ) -> JSONResponse | None:
        """What a fault rule answers instead of the API, if one fires for this call (after its latency).
        `caller` names the calling client for matching; it is asked only while there are rules to match.
        The access log and the journal get `shown` when given, else that name."""
        request.state.operation = operation
        if not mirror.controls.faults.any():
            return None
        client_id = caller()
        request.state.client_id = client_id if shown is ... else shown
        rule = mirror.controls.faults.fire(operation, client_id)
        if rule is None:
            return None
        request.state.fault = rule.id
        if rule.latency_ms:
            await asyncio.sleep(rule.latency_ms / 1000)
        if rule.drop:
            raise DropConnection
        if rule.code is not None:
            return envelope(rule.code, rule.message)
        if rule.http_status is not None:
            phrase = HTTPStatus(rule.http_status).phrase
            return JSONResponse({"error": phrase, "fault": rule.id}, status_code=rule.http_status)
        return None  # latency alone: the call goes on, slower

    token_path = "/api/open/v3/getToken"

    @app.post(_also_without_open(token_path))
    @app.post(token_path)
    async def get_token(request: Request) -> JSONResponse:
        request.state.operation = "getToken"  # journaled even when its body is not JSON
        body = await read_json(request)
        claimed = body.get("clientId") if isinstance(body, dict) else None
        claimed = claimed if isinstance(claimed, str) else None
        # Journaled only when it names a client: a caller who swapped id and secret must not get the secret stored.
        known = claimed if claimed is not None and mirror.accounts.get(claimed) else None
        request.state.client_id = known
        fault = await faulted(request, "getToken", lambda: claimed, known)
        if fault is not None:
            return fault
        if not isinstance(body, dict):
            raise ApiError(ApiCode.PARAMETER_ERROR, "body: must be a JSON object with clientId and clientSecret")
        token = mirror.issue_token(body.get("clientId"), body.get("clientSecret"))
        request.state.client_id = claimed  # a token was issued: it names a client
        return JSONResponse({"code": 1000, "msg": "OK", "token": token})

    replace_path = "/api/open/v3/content/image/bg/replace"

    @app.post(_also_without_open(replace_path))
    @app.post(replace_path)
    async def replace_background(
        request: Request,
        authorization: str | None = Header(default=None),
        x_api_key: str | None = Header(default=None, alias="x-api-key"),
    ) -> JSONResponse:
        # A fault answers before anything is stored: a refused submit makes no job and spends no credit.
        fault = await faulted(request, "replace", lambda: mirror.identify(authorization, x_api_key))
        if fault is not None:
            return fault
        client = mirror.authenticate(authorization, x_api_key)
        request.state.client_id = client.client_id  # for the access log and the journal
        body = await read_json(request)
        return await run_in_threadpool(mirror.submit, client, body, _accepted)

    info_path = "/api/open/v3/content/image/infobymodelid"

    @app.get(_also_without_open(info_path))
    @app.get(info_path)
    async def job_info(
        request: Request,
        image_model_id: str | None = Query(default=None),
        authorization: str | None = Header(default=None),
        x_api_key: str | None = Header(default=None, alias="x-api-key"),
    ) -> JSONResponse:
        fault = await faulted(request, "info", lambda: mirror.identify(authorization, x_api_key))
        if fault is not None:
            return fault
        client = mirror.authenticate(authorization, x_api_key)
        request.state.client_id = client.client_id  # for the access log and the journal
        job = await run_in_threadpool(mirror.info, client, image_model_id)
        return envelope(1000, "OK", job.to_api())

    @app.get("/results/{name}", response_class=FileResponse)
    async def result(name: str) -> Response:
        if mirror.results_in_bucket:
            return await run_in_threadpool(_result_object, mirror, name)
        return open_file_response(
            mirror.result_file(name),
            "image/png",
            lambda: JSONResponse({"code": 1003, "msg": "no such result, or it has expired"}, status_code=404),
        )

    add_page(app, mirror)
    if mirror.settings.controls_enabled:
        add_controls(app, mirror)

    # The document is written out (`openapi.py`), not inferred from the functions above: they take the raw
    # request, and FastAPI would describe what they do not answer (a 422) and leave out what they do.
    document = openapi_document(
        title=app.title,
        version=app.version,
        controls=mirror.settings.controls_enabled,
        admin=mirror.settings.admin_token is not None,
        results_in_bucket=mirror.results_in_bucket,
    )

    def openapi() -> dict[str, Any]:
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _result_object(mirror: Mirror, name: str) -> Response:
    """A result kept in object storage, streamed from the bucket through the mirror (a client needs no
    credentials of the bucket's): a 404 when there is none, a 503 while the bucket cannot be read."""
    try:
        opened = mirror.open_result_object(name, CHUNK_BYTES)
    except StorageError:  # logged, with the URL, by the back end: the caller learns nothing of the bucket
        response = envelope(int(ApiCode.BACKGROUND_CHANGE_ERROR), "the mirror cannot read its results right now")
        response.status_code = 503
        response.headers["retry-after"] = "5"
        return response
    if opened is None:
        return JSONResponse({"code": 1003, "msg": "no such result, or it has expired"}, status_code=404)
    size, head, stream = opened
    return StreamingResponse(
        _object_chunks(head, stream), media_type="image/png", headers={"content-length": str(size)}
    )


async def _object_chunks(head: bytes, stream: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        if head:
            yield head
        while chunk := await run_in_threadpool(stream.read, CHUNK_BYTES):
            yield chunk
    finally:
        stream.close()


REDOC_BUNDLE = Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
# A blank 1x1 image in place of that logo: the page fetches nothing from outside the mirror.
BLANK_IMAGE = "data:image/svg+xml,%3Csvg xmlns=%27http://www.w3.org/2000/svg%27 width=%271%27 height=%271%27/%3E"


def _add_redoc(app: FastAPI) -> None:
    """/redoc with ReDoc's bundle served from the package, its one outside fetch (a logo) made local."""

    @app.get("/redoc", include_in_schema=False)
    async def redoc_page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=app.title + " - ReDoc",
            redoc_js_url=f"{root}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}/static-offline-docs/favicon.png",
            with_google_fonts=False,
        )

    @app.get("/redoc/redoc.standalone.js", include_in_schema=False)
    async def redoc_script() -> Response:
        return Response(_redoc_bundle(), media_type="text/javascript", headers={"cache-control": "max-age=3600"})


@functools.cache
def _redoc_bundle() -> bytes:
    """ReDoc's script with its logo's URL replaced, read once a process, when the page first asks for it."""
    return REDOC_BUNDLE.read_text(encoding="utf-8").replace(REDOC_LOGO, BLANK_IMAGE).encode()


def _allowed_methods(app: FastAPI, request: Request) -> str:
    """Every method some route of this path takes (a path's methods may be spread over several routes)."""
    allowed: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            allowed |= set(getattr(route, "methods", None) or ())
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return ", ".join(sorted(allowed, key=lambda method: (order.index(method) if method in order else 99, method)))
