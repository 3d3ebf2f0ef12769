"""HTTP in, calls on the `Mirror` out. Upstream answers HTTP 200 and puts the
outcome in `code`, so every business outcome here is a 200 with the
`{code, msg, data}` envelope; only unknown paths and methods are HTTP errors.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from compositor.errors import ApiCode, InvalidRequestError
from compositor.mirror.models import ApiError
from compositor.mirror.page import add_page
from compositor.mirror.service import Mirror

_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["canvas_size", "origin_img", "modify_origin_img_size", "overlay_origin_x", "overlay_origin_y"],
    "properties": {
        "canvas_size": {"type": "string", "example": "3840x3840"},
        "origin_img": {"type": "string", "description": "foreground image URL"},
        "modify_origin_img_size": {"type": "string", "example": "3031x2894"},
        "overlay_origin_x": {"type": "integer", "example": 205},
        "overlay_origin_y": {"type": "integer", "example": 497},
        "color_code": {"type": "string", "example": "#aafbe3"},
        "template_url": {"type": "string"},
        "modify_template_size": {"type": "string", "example": "3031x3372"},
        "overlay_template_x": {"type": "integer"},
        "overlay_template_y": {"type": "integer"},
        "removeBg": {"type": "boolean", "default": False},
        "webhookUrl": {"type": "string"},
    },
}
_TOKEN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["clientId", "clientSecret"],
    "properties": {"clientId": {"type": "string"}, "clientSecret": {"type": "string"}},
}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def envelope(code: int, msg: str, data: Any = None) -> JSONResponse:
    content: dict[str, Any] = {"code": code, "msg": msg}
    if data is not None:
        content["data"] = data
    return JSONResponse(content)


async def _read_json(request: Request) -> object:
    raw = await request.body()
    try:
        return json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(ApiCode.PARAMETER_ERROR, f"body: is not valid JSON: {exc}") from None


def create_app(mirror: Mirror) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        mirror.start()
        try:
            yield
        finally:
            mirror.stop()

    app = FastAPI(
        title="compositor mirror of Akool's Background Change API",
        version="0.1.0",
        description="Same paths, headers, envelope, codes, job states and webhooks as upstream; rendered locally.",
        lifespan=lifespan,
    )

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return envelope(int(exc.code), exc.message)

    @app.exception_handler(InvalidRequestError)
    async def invalid_request(_: Request, exc: InvalidRequestError) -> JSONResponse:
        report = exc.report.envelope()
        return envelope(report["code"], report["msg"], report["data"])

    @app.post("/api/open/v3/getToken", openapi_extra=_json_body(_TOKEN_SCHEMA))
    async def get_token(request: Request) -> JSONResponse:
        body = await _read_json(request)
        if not isinstance(body, dict):
            raise ApiError(ApiCode.PARAMETER_ERROR, "body: must be a JSON object with clientId and clientSecret")
        token = mirror.issue_token(body.get("clientId"), body.get("clientSecret"))
        return JSONResponse({"code": 1000, "msg": "OK", "token": token})

    @app.post("/api/open/v3/content/image/bg/replace", openapi_extra=_json_body(_BODY_SCHEMA))
    async def replace_background(
        request: Request,
        authorization: str | None = Header(default=None),
        x_api_key: str | None = Header(default=None, alias="x-api-key"),
    ) -> JSONResponse:
        client = mirror.authenticate(authorization, x_api_key)
        body = await _read_json(request)
        job = await run_in_threadpool(mirror.submit, client, body)
        return envelope(1000, "OK", job.to_api())

    @app.get("/api/open/v3/content/image/infobymodelid")
    async def job_info(
        image_model_id: str | None = Query(default=None),
        authorization: str | None = Header(default=None),
        x_api_key: str | None = Header(default=None, alias="x-api-key"),
    ) -> JSONResponse:
        client = mirror.authenticate(authorization, x_api_key)
        job = await run_in_threadpool(mirror.info, client, image_model_id)
        return envelope(1000, "OK", job.to_api())

    @app.get("/results/{name}", response_class=FileResponse, responses={404: {"description": "no such result"}})
    async def result(name: str) -> Response:
        path = mirror.result_file(name)
        if path is None:
            return JSONResponse({"code": 1003, "msg": "no such result, or it has expired"}, status_code=404)
        return FileResponse(path, media_type="image/png")

    add_page(app, mirror)
    return app
