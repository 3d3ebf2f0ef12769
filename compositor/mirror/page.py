"""The offline preview page and the endpoints it calls. HTTP only: renders,
upload checks and pre-flight's header reads run on the mirror's preview
worker (never in the server process), validation through `compositor.validate`.

The verdict (`/preview/validate`) reads no source, so it stays fast and never
waits for a page slot; pre-flight (`/preview/preflight`) is a separate call the
page makes once a body is valid, beside its render: it reads the sources'
headers as a job would (the mirror's SourcePolicy, its thresholds) and answers
the verdict's envelope with what they predict added (see `compositor.preflight`).

No account is needed from loopback; from anywhere else these endpoints want
a client's `x-api-key`, like the API itself."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import ipaddress
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from compositor.errors import ApiCode, CompositorError
from compositor.mirror.api_error import ApiError
from compositor.mirror.config import key_header_file
from compositor.mirror.database import StoreError, StoreFullError
from compositor.mirror.downloads import open_file_response
from compositor.mirror.middleware import read_json
from compositor.mirror.sameorigin import LOOPBACK_NAMES, cross_site_problem, host_problem
from compositor.mirror.service import UPLOAD_PARTIAL_PREFIX, Mirror
from compositor.mirror.worker import probe_upload, render_preview
from compositor.pool import WorkerDied, WorkerError
from compositor.preflight import envelope as preflight_envelope
from compositor.preflight import preflight
from compositor.request import validate
from compositor.sources import sniff_type
from compositor.weights import load_manifest, model_names, status

PREVIEW_MAX_SIDE = 1024
# Page tasks (previews, upload checks) waiting or running at once; past this
# the page is told to slow down (1005) rather than queue without end.
PAGE_TASKS = 4
_STATIC = resources.files("compositor.mirror") / "static"
# The page's icon, inline (nothing to package): the canvas, the template, the foreground.
_FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" fill="#1d2b53"/>'
    '<rect x="5" y="5" width="16" height="16" fill="#2f7ae0"/>'
    '<rect x="12" y="12" width="15" height="15" fill="#e0306c"/></svg>'
)
_UPLOAD_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


class CrossSiteError(Exception):
    """A request the page could not have made: another site's, or through a foreign host name."""


def add_page(app: FastAPI, mirror: Mirror) -> None:
    settings = mirror.settings
    uploads = settings.uploads_dir
    allowed_hosts = LOOPBACK_NAMES | {name.lower() for name in settings.page_hosts}
    tasks = asyncio.Semaphore(PAGE_TASKS)
    header_file = _client_key_file(settings.data_dir, {client.client_secret for client in settings.clients})

    @app.exception_handler(CrossSiteError)
    async def cross_site(_: Request, exc: CrossSiteError) -> JSONResponse:
        return JSONResponse({"code": int(ApiCode.INVALID_AUTHORIZATION), "msg": str(exc)}, status_code=403)

    def check_host(request: Request) -> None:
        """A loopback name (or a configured one) in the Host header: no DNS rebinding."""
        problem = host_problem(request.headers, allowed_hosts)
        if problem is not None:
            raise CrossSiteError(f"the page {problem} (see --page-host)")

    def check_caller(request: Request, content_types: tuple[str, ...]) -> None:
        """The page's endpoints render and read files without an account on
        loopback, so any web page the developer opens could call them. A call
        with credentials (x-api-key, Bearer) is a program's, since a browser
        sends no such header cross-site without asking first: it is
        authenticated like the API. Without them, only the page itself may
        call, from loopback: the Host must be a loopback name (or configured:
        no DNS rebinding), an Origin must be one of those, and the body's
        type one that a cross-site form cannot send."""
        authorization, api_key = request.headers.get("authorization"), request.headers.get("x-api-key")
        if authorization or api_key:
            mirror.authenticate(authorization, api_key)
            return
        peer = request.client.host if request.client else ""
        try:
            loopback_peer = ipaddress.ip_address(peer).is_loopback
        except ValueError:
            loopback_peer = False
        if not loopback_peer:
            mirror.authenticate(None, None)  # 1102: authorization cannot be empty
        check_host(request)
        problem = cross_site_problem(request.headers, allowed_hosts, content_types)
        if problem is not None:
            raise CrossSiteError(problem)

    @contextlib.asynccontextmanager
    async def page_slot() -> AsyncIterator[None]:
        """One of the few page tasks that may be under way, taken before the
        request's body is read, so waiting uploads are not held in memory."""
        if tasks.locked():
            raise ApiError(ApiCode.TOO_FREQUENT, "operation is too frequent: previews are still rendering")
        async with tasks:
            yield

    async def on_page_worker(fn: Any, *args: Any) -> Any:
        """Run a page task on the preview worker; a worker that dies or fails is a 1206."""
        try:
            return await asyncio.wrap_future(mirror.preview(fn, *args))
        except (WorkerDied, WorkerError) as exc:
            raise ApiError(ApiCode.BACKGROUND_CHANGE_ERROR, f"the preview failed: {exc}") from None

    async def request_body(request: Request) -> object:
        payload = await read_json(request)
        return payload.get("body") if isinstance(payload, dict) else None

    async def render_response(request: Request, max_side: int | None) -> Response:
        check_caller(request, ("application/json",))
        async with page_slot():
            payload = await read_json(request)
            body = payload.get("body") if isinstance(payload, dict) else None
            # The page's removeBg model (beside the body: upstream's body has no field for it); the server's by default.
            model = (payload.get("model") if isinstance(payload, dict) else None) or settings.model
            if model not in model_names():
                raise ApiError(ApiCode.PARAMETER_ERROR, f"model: must be one of {', '.join(model_names())}")
            report = validate(body, limits=settings.limits)
            if not report.ok:
                return JSONResponse(report.envelope())
            budget = settings.memory_budget
            answer = await on_page_worker(render_preview, body, max_side, mirror.sources, budget, model)
        if isinstance(answer, dict):
            return JSONResponse(answer)
        return Response(answer, media_type="image/png")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((_STATIC / "index.html").read_text())

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        """What a browser asks for on its own (an SVG: browsers take one at this path too)."""
        return Response(_FAVICON, media_type="image/svg+xml", headers={"cache-control": "max-age=86400"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        kinds = {".js": "text/javascript", ".css": "text/css", ".json": "application/json"}
        resource = _STATIC / name
        try:
            found = Path(name).suffix in kinds and "/" not in name and "\0" not in name and resource.is_file()
        except (OSError, ValueError):  # a name too long for the file system
            found = False
        if not found:
            return JSONResponse({"code": 1003, "msg": "not found"}, status_code=404)
        return Response(resource.read_text(), media_type=kinds[Path(name).suffix])

    @app.get("/preview/source", include_in_schema=False)
    async def preview_source(request: Request, url: str = "") -> Response:
        """A source the page shows but the browser cannot fetch (a mapped CDN URL,
        offline): served from the file the source map names, and nothing else."""
        check_host(request)
        source_map = mirror.sources.source_map
        try:
            path = source_map.resolve(url, "url") if source_map is not None else None
            found = path is not None and path.is_file()
        except (CompositorError, OSError, ValueError):
            found = False
        if not found:
            return JSONResponse({"code": 1003, "msg": "url: not a source this mirror maps to a file"}, status_code=404)
        return FileResponse(path)  # type: ignore[arg-type]

    @app.get("/preview/models", include_in_schema=False)
    async def preview_models(request: Request) -> JSONResponse:
        """The removeBg models for the page's choice: the server's default, and which are installed."""
        check_host(request)
        listed = [
            {"name": spec.name, "good_for": spec.good_for, "installed": status(spec).state == "verified"}
            for spec in load_manifest().values()
        ]
        return JSONResponse({"default": settings.model, "models": listed})

    @app.get("/preview/settings", include_in_schema=False)
    async def preview_settings(request: Request) -> JSONResponse:
        """What the page's curl lines and notes need: the file that holds a
        configured client's key as a header line (as the start banner names it;
        never the key), and where this mirror's uploads live."""
        check_host(request)
        shown = str(header_file) if header_file is not None else None
        return JSONResponse({"key_header_file": shown, "uploads_url": f"{settings.public_base_url}/uploads/"})

    @app.post("/preview/validate", include_in_schema=False)
    async def preview_validate(request: Request) -> JSONResponse:
        check_caller(request, ("application/json",))
        return JSONResponse(validate(await request_body(request), limits=settings.limits).envelope())

    @app.post("/preview/preflight", include_in_schema=False)
    async def preview_preflight(request: Request) -> JSONResponse:
        """The verdict's envelope and, for a valid body, pre-flight's: its
        sources' headers read on the preview worker, as a job reads them (the
        mirror's sources and thresholds). A source that cannot be read is an
        error on its field, and the answer's code 1108 when no other error
        stands; what the headers predict is in `data.warnings`."""
        check_caller(request, ("application/json",))
        async with page_slot():
            report = validate(await request_body(request), limits=settings.limits)
            if report.request is None:
                return JSONResponse(report.envelope())
            unreadable, found = await on_page_worker(preflight, report.request, mirror.sources, settings.preflight)
        report.errors.extend(unreadable)
        report.warnings.extend(found)
        return JSONResponse(preflight_envelope(report, unreadable))

    @app.post("/preview/render", include_in_schema=False)
    async def preview_render(request: Request) -> Response:
        return await render_response(request, PREVIEW_MAX_SIDE)

    @app.post("/preview/full", include_in_schema=False)
    async def preview_full(request: Request) -> Response:
        return await render_response(request, None)

    @app.post("/uploads", include_in_schema=False)
    async def upload(request: Request) -> JSONResponse:
        check_caller(request, ("image/", "application/octet-stream"))
        async with page_slot():
            # Streamed to a file as it arrives: the server holds a chunk, never the upload.
            with _store_failure():
                handle, partial_name = tempfile.mkstemp(dir=uploads, prefix=UPLOAD_PARTIAL_PREFIX)
                os.close(handle)
                partial = Path(partial_name)
            try:
                digest, head = hashlib.sha256(), b""
                with _store_failure(), partial.open("wb") as sink:
                    async for chunk in request.stream():
                        digest.update(chunk)
                        head = head or chunk[:16]
                        sink.write(chunk)
                max_pixels = mirror.sources.max_pixels
                probed = await on_page_worker(probe_upload, str(partial), max_pixels, settings.memory_budget)
                if "code" in probed:
                    raise ApiError(ApiCode.PARAMETER_ERROR, probed["msg"])
                name = digest.hexdigest()[:32] + _UPLOAD_TYPES.get(sniff_type(head), ".png")
                with _store_failure():
                    mirror.store_upload(partial, name)
            finally:
                partial.unlink(missing_ok=True)
        url = f"{settings.public_base_url}/uploads/{name}"
        return JSONResponse({"code": 1000, "msg": "OK", "data": {"url": url, **probed}})

    @app.get("/uploads/{name}", include_in_schema=False)
    async def uploaded(name: str) -> Response:
        return open_file_response(
            mirror.upload_file(name),
            None,
            lambda: JSONResponse({"code": 1003, "msg": "no such upload, or it has expired"}, status_code=404),
        )


def _client_key_file(data_dir: Path, secrets: set[str]) -> Path | None:
    """The development client's header file (`x-api-key: KEY`, for `curl -H @FILE`),
    when the key it holds is one this server accepts: a file left by an earlier
    run in development mode, when clients are configured now, is not offered."""
    path = key_header_file(data_dir).resolve()
    try:
        name, _, key = path.read_text().partition(":")
    except (OSError, UnicodeDecodeError):
        return None
    return path if name.strip().lower() == "x-api-key" and key.strip() in secrets else None


@contextlib.contextmanager
def _store_failure() -> Iterator[None]:
    """A file that cannot be written in the data dir is the store's trouble, answered like the API's (503)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError("the disk under the data dir is full") from None
        raise StoreError("cannot store the upload") from None
