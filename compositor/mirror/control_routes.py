"""The test controls over HTTP, under `/_mirror/`: plain JSON and HTTP
status codes (not the API's envelope, which is upstream's and would hide the
difference between the controls and the API under test). Every call turns
into one call on the back end (`Mirror`) or its `Controls`.

Who may call: with an admin token configured, only a request carrying it in
`x-mirror-admin` (401 otherwise, loopback or not; a browser sends no such
header cross-site without asking first); without one, the programs of the
machine a loopback-bound server runs on, and not a web page open in its
browser (`sameorigin.py`: 403). Elsewhere the routes do not exist (404).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from compositor import text
from compositor.mirror.api_error import ApiError
from compositor.mirror.controls import MAX_REASON_CHARS, ControlInputError
from compositor.mirror.middleware import InvalidTextBody, read_json
from compositor.mirror.sameorigin import LOOPBACK_NAMES, cross_site_problem
from compositor.mirror.service import Mirror

ADMIN_HEADER = "x-mirror-admin"
Handler = Callable[[Request], Awaitable[Any]]


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    content: dict[str, Any] = {"error": message}
    if field is not None:
        content["field"] = field
    return JSONResponse(content, status_code=status)


async def _body(request: Request, *, empty: object = None) -> object:
    """The JSON body; `empty` for none at all (None: a body is needed)."""
    try:
        body = await read_json(request)
    except InvalidTextBody as exc:
        raise ControlInputError(exc.field, text.MESSAGE) from None
    except ApiError as exc:
        raise ControlInputError("body", exc.message.removeprefix("body: ")) from None
    if body is None:
        if empty is None:
            raise ControlInputError("body", "is empty: a JSON object is needed")
        return empty
    if isinstance(body, dict):
        # JSON has one number type: 3.0 is the integer 3 (as JSON Schema's "integer" and the API's offsets have it).
        body = {name: int(value) if _integral_float(value) else value for name, value in body.items()}
    return body


def _integral_float(value: object) -> bool:
    return isinstance(value, float) and value.is_integer()


def add_controls(app: FastAPI, mirror: Mirror) -> None:
    token = mirror.settings.admin_token
    controls = mirror.controls
    allowed_hosts = LOOPBACK_NAMES | {name.lower() for name in mirror.settings.page_hosts}

    def control(method: str, path: str, summary: str) -> Callable[[Handler], Handler]:
        """A control route: the admin check first, then the handler; bad input is a 400 naming the field."""

        def register(handler: Handler) -> Handler:
            async def guarded(request: Request) -> Any:
                if token is not None:
                    given = request.headers.get(ADMIN_HEADER, "")
                    if not secrets.compare_digest(given.encode(), token.encode()):
                        return _error(401, f"the control plane needs the {ADMIN_HEADER} header with the admin token")
                else:
                    body_types = ("application/json",) if method == "POST" else None
                    problem = cross_site_problem(request.headers, allowed_hosts, body_types)
                    if problem is not None:
                        return _error(403, f"the control plane {problem}")
                try:
                    return await handler(request)
                except ControlInputError as exc:
                    return _error(400, str(exc), exc.field)

            guarded.__name__ = handler.__name__
            app.add_api_route(path, guarded, methods=[method], summary=summary, tags=["test controls"])
            return handler

        return register

    @control("POST", "/_mirror/faults", "Add a fault rule")
    async def add_fault(request: Request) -> Any:
        return controls.faults.add(await _body(request)).as_dict()

    @control("GET", "/_mirror/faults", "The fault rules, with their hits")
    async def list_faults(request: Request) -> Any:
        return {"faults": controls.faults.rules()}

    @control("DELETE", "/_mirror/faults", "Remove every fault rule")
    async def clear_faults(request: Request) -> Any:
        controls.faults.clear()
        return {"faults": []}

    @control("DELETE", "/_mirror/faults/{rule_id}", "Remove one fault rule")
    async def remove_fault(request: Request) -> Any:
        rule_id = request.path_params["rule_id"]
        if not controls.faults.remove(rule_id):
            return _error(404, f"no fault rule {rule_id!r}", "id")
        return {"removed": rule_id}

    @control("POST", "/_mirror/jobs/policy", "How the next jobs progress")
    async def set_policy(request: Request) -> Any:
        return controls.policies.set(await _body(request, empty={}))

    @control("GET", "/_mirror/jobs/policy", "The job policy now")
    async def get_policy(request: Request) -> Any:
        return controls.policies.current()

    @control("POST", "/_mirror/jobs/{job_id}/fail", "End an unfinished job with status 4")
    async def fail_job(request: Request) -> Any:
        body = await _body(request)
        if not isinstance(body, dict) or set(body) - {"reason"}:
            unknown = sorted(set(body) - {"reason"}) if isinstance(body, dict) else []
            field = unknown[0] if unknown else "body"
            raise ControlInputError(field, "is not a field of a failure (known: reason)")
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_CHARS:
            raise ControlInputError("reason", f"must be a non-empty string of at most {MAX_REASON_CHARS} characters")
        job_id = request.path_params["job_id"]
        try:
            job = await run_in_threadpool(mirror.fail_job, job_id, reason)
        except KeyError:
            return _error(404, f"no job {job_id!r}", "job_id")
        if job is None:
            return _error(409, f"job {job_id!r} has already ended", "job_id")
        return job.summary()

    @control("GET", "/_mirror/jobs", "Every job")
    async def list_jobs(request: Request) -> Any:
        return {"jobs": await run_in_threadpool(mirror.jobs)}

    @control("GET", "/_mirror/requests", "The journal: the last 1,000 API calls")
    async def journal(request: Request) -> Any:
        return {"requests": controls.journal.entries()}

    @control("GET", "/_mirror/webhooks", "Webhook deliveries")
    async def deliveries(request: Request) -> Any:
        return {"deliveries": await run_in_threadpool(mirror.deliveries)}

    @control("POST", "/_mirror/reset", "Forget jobs, results, faults, policies and journals")
    async def reset(request: Request) -> Any:
        await run_in_threadpool(mirror.reset)
        return {"reset": True}
