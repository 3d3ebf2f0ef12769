"""The offline preview page and the endpoints it calls. HTTP only: renders
and upload checks run on the mirror's preview worker (never in the server
process), validation through `compositor.validate`.

No account is needed from loopback; from anywhere else these endpoints want
a client's `x-api-key`, like the API itself."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from compositor.errors import ApiCode
from compositor.files import write_atomically
from compositor.mirror.middleware import read_json
from compositor.mirror.models import ApiError
from compositor.mirror.pool import WorkerDied
from compositor.mirror.service import Mirror
from compositor.mirror.worker import probe_upload, render_preview
from compositor.request import validate
from compositor.sources import sniff_type

PREVIEW_MAX_SIDE = 1024
# Page tasks (previews, upload checks) waiting or running at once; past this
# the page is told to slow down (1005) rather than queue without end.
PAGE_TASKS = 4
_STATIC = resources.files("compositor.mirror") / "static"
_UPLOAD_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


class CrossSiteError(Exception):
    """A request the page could not have made: another site's, or through a foreign host name."""


def add_page(app: FastAPI, mirror: Mirror) -> None:
    settings = mirror.settings
    uploads = settings.uploads_dir
    allowed_hosts = _LOOPBACK_NAMES | {name.lower() for name in settings.page_hosts}
    tasks = asyncio.Semaphore(PAGE_TASKS)

    @app.exception_handler(CrossSiteError)
    async def cross_site(_: Request, exc: CrossSiteError) -> JSONResponse:
        return JSONResponse({"code": int(ApiCode.INVALID_AUTHORIZATION), "msg": str(exc)}, status_code=403)

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
        host = _hostname(request.headers.get("host", ""))
        if host not in allowed_hosts:
            raise CrossSiteError(f"the page answers on loopback names only, not host {host!r} (see --page-host)")
        origin = request.headers.get("origin")
        if origin is not None and (origin == "null" or _hostname(urlsplit(origin).netloc) not in allowed_hosts):
            raise CrossSiteError("cross-site requests are refused")
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise CrossSiteError("cross-site requests are refused")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not kind.startswith(content_types):
            raise CrossSiteError(f"wants a body of type {' or '.join(content_types)}, not {kind or 'none'!r}")

    async def on_page_worker(fn: Any, *args: Any) -> Any:
        """Run a page task on the preview worker, a few at a time."""
        if tasks.locked():
            raise ApiError(ApiCode.TOO_FREQUENT, "operation is too frequent: previews are still rendering")
        async with tasks:
            return await asyncio.wrap_future(mirror.preview(fn, *args))

    async def request_body(request: Request) -> object:
        payload = await read_json(request)
        return payload.get("body") if isinstance(payload, dict) else None

    async def render_response(request: Request, max_side: int | None) -> Response:
        check_caller(request, ("application/json",))
        body = await request_body(request)
        report = validate(body, limits=settings.limits)
        if not report.ok:
            return JSONResponse(report.envelope())
        try:
            answer = await on_page_worker(render_preview, body, max_side, settings.sources, settings.memory_budget)
        except WorkerDied as exc:
            return JSONResponse({"code": int(ApiCode.BACKGROUND_CHANGE_ERROR), "msg": str(exc)})
        if isinstance(answer, dict):
            return JSONResponse(answer)
        return Response(answer, media_type="image/png")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((_STATIC / "index.html").read_text())

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        kinds = {".js": "text/javascript", ".css": "text/css"}
        resource = _STATIC / name
        if Path(name).suffix not in kinds or "/" in name or "\0" in name or not resource.is_file():
            return JSONResponse({"code": 1003, "msg": "not found"}, status_code=404)
        return Response(resource.read_text(), media_type=kinds[Path(name).suffix])

    @app.post("/preview/validate", include_in_schema=False)
    async def preview_validate(request: Request) -> JSONResponse:
        check_caller(request, ("application/json",))
        return JSONResponse(validate(await request_body(request), limits=settings.limits).envelope())

    @app.post("/preview/render", include_in_schema=False)
    async def preview_render(request: Request) -> Response:
        return await render_response(request, PREVIEW_MAX_SIDE)

    @app.post("/preview/full", include_in_schema=False)
    async def preview_full(request: Request) -> Response:
        return await render_response(request, None)

    @app.post("/uploads", include_in_schema=False)
    async def upload(request: Request) -> JSONResponse:
        check_caller(request, ("image/", "application/octet-stream"))
        data = await request.body()
        try:
            probed = await on_page_worker(probe_upload, data, settings.sources.max_pixels, settings.memory_budget)
        except WorkerDied as exc:
            raise ApiError(ApiCode.PARAMETER_ERROR, f"upload: {exc}") from None
        if "code" in probed:
            raise ApiError(ApiCode.PARAMETER_ERROR, probed["msg"])
        suffix = _UPLOAD_TYPES.get(sniff_type(data), ".png")
        name = hashlib.sha256(data).hexdigest()[:32] + suffix
        uploads.mkdir(parents=True, exist_ok=True)
        await run_in_threadpool(write_atomically, uploads / name, data)
        url = f"{settings.public_base_url}/uploads/{name}"
        return JSONResponse({"code": 1000, "msg": "OK", "data": {"url": url, **probed}})

    @app.get("/uploads/{name}", include_in_schema=False)
    async def uploaded(name: str) -> Response:
        path = mirror.upload_file(name)
        if path is None:
            return JSONResponse({"code": 1003, "msg": "no such upload, or it has expired"}, status_code=404)
        return FileResponse(path)


def _hostname(netloc: str) -> str:
    """The host of a Host header or an origin's netloc, lower case, without the port."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[: netloc.find("]") + 1] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
