"""The offline preview page and the endpoints it calls. HTTP only: renders
go through the engine, validation through `compositor.validate`.

No account is needed from loopback; from anywhere else these endpoints want
a client's `x-api-key`, like the API itself."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from compositor.encode import encode
from compositor.engine import RenderOptions, render_array
from compositor.errors import ApiCode, CompositorError
from compositor.mirror.models import ApiError
from compositor.mirror.service import Mirror
from compositor.preview import scaled_body
from compositor.request import validate
from compositor.sources import SourcePolicy, decode_image

PREVIEW_MAX_SIDE = 1024
UPLOAD_LIMIT = 64 * 1024 * 1024
_STATIC = resources.files("compositor.mirror") / "static"
_UPLOAD_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


def add_page(app: FastAPI, mirror: Mirror) -> None:
    uploads = mirror.settings.data_dir / "uploads"
    policy = SourcePolicy(file_roots=mirror.settings.file_roots)

    def check_caller(request: Request) -> None:
        host = request.client.host if request.client else ""
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
        mirror.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))

    async def request_body(request: Request) -> object:
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(ApiCode.PARAMETER_ERROR, f"body: is not valid JSON: {exc}") from None
        return payload.get("body") if isinstance(payload, dict) else None

    def render_png(body: dict[str, Any], max_side: int | None) -> bytes:
        if max_side is not None:
            body, _ = scaled_body(body, max_side, policy)
        return encode(render_array(body, options=RenderOptions(sources=policy)))

    async def render_response(request: Request, max_side: int | None) -> Response:
        check_caller(request)
        body = await request_body(request)
        report = validate(body)
        if not report.ok:
            return JSONResponse(report.envelope())
        assert isinstance(body, dict)
        try:
            png = await run_in_threadpool(render_png, body, max_side)
        except CompositorError as exc:
            return JSONResponse({"code": int(exc.code), "msg": str(exc)})
        return Response(png, media_type="image/png")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((_STATIC / "index.html").read_text())

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        kinds = {".js": "text/javascript", ".css": "text/css"}
        resource = _STATIC / name
        if Path(name).suffix not in kinds or "/" in name or not resource.is_file():
            return JSONResponse({"code": 1003, "msg": "not found"}, status_code=404)
        return Response(resource.read_text(), media_type=kinds[Path(name).suffix])

    @app.post("/preview/validate", include_in_schema=False)
    async def preview_validate(request: Request) -> JSONResponse:
        check_caller(request)
        return JSONResponse(validate(await request_body(request)).envelope())

    @app.post("/preview/render", include_in_schema=False)
    async def preview_render(request: Request) -> Response:
        return await render_response(request, PREVIEW_MAX_SIDE)

    @app.post("/preview/full", include_in_schema=False)
    async def preview_full(request: Request) -> Response:
        return await render_response(request, None)

    @app.post("/uploads", include_in_schema=False)
    async def upload(request: Request) -> JSONResponse:
        check_caller(request)
        data = await request.body()
        if len(data) > UPLOAD_LIMIT:
            raise ApiError(ApiCode.PARAMETER_ERROR, f"upload: larger than {UPLOAD_LIMIT} bytes")
        try:
            image = await run_in_threadpool(decode_image, data, "upload", max_pixels=100_000_000)
        except CompositorError as exc:
            raise ApiError(ApiCode.PARAMETER_ERROR, str(exc)) from None
        suffix = _UPLOAD_TYPES.get(sniff_type(data), ".png")
        name = hashlib.sha256(data).hexdigest()[:32] + suffix
        uploads.mkdir(parents=True, exist_ok=True)
        (uploads / name).write_bytes(data)
        url = f"{mirror.settings.public_base_url}/uploads/{name}"
        return JSONResponse(
            {"code": 1000, "msg": "OK", "data": {"url": url, "width": image.width, "height": image.height}}
        )

    @app.get("/uploads/{name}", include_in_schema=False)
    async def uploaded(name: str) -> Response:
        path = (uploads / name).resolve()
        if path.parent != uploads.resolve() or not path.is_file():
            return JSONResponse({"code": 1003, "msg": "no such upload"}, status_code=404)
        return FileResponse(path)


def sniff_type(data: bytes) -> str:
    """The MIME type an image's first bytes announce."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:3] == b"GIF":
        return "image/gif"
    return "application/octet-stream"
