"""The mirror's OpenAPI document (GET /openapi.json, /docs, /redoc), written
out rather than inferred from the route functions, so that it says what the
mirror answers and nothing else: every API answer is the `{code, msg, data}`
envelope, HTTP 200 for every business outcome (upstream's way, failures
included) and 413/500/503 where those apply; the control plane answers plain
JSON with HTTP statuses. The replace body's fields come from
`compositor.request.BODY_FIELDS`, the table validation itself reads.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

from compositor.errors import ApiCode
from compositor.mirror.controls import (
    API_OPERATIONS,
    FAULT_CODES,
    FAULT_HTTP_STATUSES,
    MAX_CLIENT_ID_CHARS,
    MAX_LATENCY_MS,
    MAX_REASON_CHARS,
    OPERATIONS,
)
from compositor.request import BODY_FIELDS

API_PREFIX = "/api/open/v3"
ALIAS_PREFIX = "/api/v3"  # the docs' Java sample: contentapi.akool.com/api/v3/... (the mock intercepts that host)
TOKEN_PATH = f"{API_PREFIX}/getToken"
REPLACE_PATH = f"{API_PREFIX}/content/image/bg/replace"
INFO_PATH = f"{API_PREFIX}/content/image/infobymodelid"

# The docs' example 3 (template and colour), verbatim, from the page's examples (package data that tests
# compare with fixtures/requests/): "Try it out" sends it.
_PAGE_EXAMPLES = resources.files("compositor.mirror.static").joinpath("examples.json")
EXAMPLE_3: dict[str, Any] = json.loads(_PAGE_EXAMPLES.read_text())["example-3-template-and-color"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_INT = {"type": "integer"}
_STR = {"type": "string"}
_STATUS = {"type": "integer", "enum": [1, 2, 3, 4], "description": "1 queueing, 2 processing, 3 completed, 4 failed"}
_CODES = [int(code) for code in ApiCode]
_RESULT_NAME = "^[0-9a-f]{24}[.]png$"  # a job's _id: what data.image names


def request_body_schema() -> dict[str, Any]:
    """The replace body's JSON Schema, from the table validation reads."""
    properties = {spec.name: {**copy.deepcopy(spec.schema), "description": spec.description} for spec in BODY_FIELDS}
    return {
        "type": "object",
        "description": "Fields not listed here are ignored, with a warning in data.warnings.",
        "required": [spec.name for spec in BODY_FIELDS if spec.required],
        "properties": properties,
    }


def _schemas() -> dict[str, Any]:
    problem = {
        "type": "object",
        "required": ["field", "message"],
        "properties": {"field": _STR, "message": _STR},
    }
    job_record = {
        "type": "object",
        "description": "A job's record, as upstream's docs show it.",
        "required": [
            "_id",
            "uid",
            "type",
            "faceswap_quality",
            "image_id",
            "image_sub_status",
            "image_status",
            "deduction_credit",
            "buttons",
            "used_buttons",
            "upscaled_urls",
            "error_reasons",
            "create_time",
            "__v",
        ],
        "properties": {
            "_id": {"type": "string", "pattern": "^[0-9a-f]{24}$", "description": "the job's id (image_model_id)"},
            "uid": _INT,
            "type": {"type": "integer", "enum": [3]},
            "faceswap_quality": {"type": "integer", "enum": [2]},
            "image_id": {"type": "string", "format": "uuid"},
            "image_sub_status": _STATUS,
            "image_status": _STATUS,
            "deduction_credit": {"type": "integer", "enum": [4]},
            "buttons": {"type": "array", "items": {}},
            "used_buttons": {"type": "array", "items": {}},
            "upscaled_urls": {"type": "array", "items": _STR},
            "error_reasons": {"type": "array", "items": _STR, "description": "why a failed job failed"},
            "create_time": {"type": "integer", "description": "ms since the epoch"},
            "__v": {"type": "integer", "enum": [0]},
            "image": {"type": "string", "description": "the result's URL (completed jobs; empty once expired)"},
            "external_img": {"type": "string", "description": "the result's URL (completed jobs; empty once expired)"},
            "expired": {"type": "boolean", "description": "the mirror's: the result is past its time-to-live"},
            "warnings": {
                "type": "array",
                "items": _ref("Problem"),
                "description": "the mirror's, absent when there are none: the body's (fields ignored, layers"
                " off the canvas) and pre-flight's from the sources' headers (a layer stretched, enlarged or cut"
                " off, canvas left transparent, removeBg over alpha). The replace answer has those of the sources"
                " read without the network (data: URIs, uploads, mapped URLs, local files); the job keeps them,"
                " and a poll adds those of its http(s) sources once a worker has downloaded them to render",
            },
        },
    }
    report = {
        "type": "object",
        "description": "Why a body was refused (code 1003): every problem, by field.",
        "required": ["errors", "warnings"],
        "properties": {
            "errors": {"type": "array", "items": _ref("Problem")},
            "warnings": {"type": "array", "items": _ref("Problem")},
        },
    }

    def envelope(data: dict[str, Any] | None, description: str) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "code": {"type": "integer", "enum": _CODES, "description": "1000 success; anything else a failure"},
            "msg": _STR,
        }
        if data is not None:
            properties["data"] = data
        return {"type": "object", "description": description, "required": ["code", "msg"], "properties": properties}

    return {
        "Problem": problem,
        "JobRecord": job_record,
        "ValidationReport": report,
        "Envelope": envelope(None, "An answer with no data: a failure (code is not 1000)."),
        "JobEnvelope": envelope(
            {"anyOf": [_ref("JobRecord"), _ref("ValidationReport")]},
            "The job's record with code 1000; on a failure no data, or (1003 for a body) the problems.",
        ),
        "TokenRequest": {
            "type": "object",
            "required": ["clientId", "clientSecret"],
            "properties": {"clientId": _STR, "clientSecret": _STR},
        },
        "TokenAnswer": {
            "type": "object",
            "description": "The token with code 1000; on a failure only code and msg.",
            "required": ["code", "msg"],
            "properties": {
                "code": {"type": "integer", "enum": _CODES},
                "msg": _STR,
                "token": {"type": "string", "description": "an HS256 JWT: send it as Authorization: Bearer TOKEN"},
            },
        },
        "ReplaceRequest": request_body_schema(),
        **_control_schemas(),
    }


def _control_schemas() -> dict[str, Any]:
    api_operations = [*API_OPERATIONS, "*"]
    common = {
        "client_id": {"type": "string", "minLength": 1, "maxLength": MAX_CLIENT_ID_CHARS},
        "latency_ms": {"type": "number", "minimum": 0, "maximum": MAX_LATENCY_MS},
        "probability": {"type": "number", "minimum": 0, "maximum": 1},
        "seed": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
        "times": {"type": "integer", "minimum": 1, "maximum": 2**31},
    }

    def variant(description: str, required: list[str], operations: list[str], **own: Any) -> dict[str, Any]:
        return {
            "type": "object",
            "title": description,
            "required": required,
            "additionalProperties": False,
            "properties": {"operation": {"type": "string", "enum": operations}, **common, **own},
        }

    # Not blank: a character Python's str.strip keeps (ECMA's \s leaves out \x1c-\x1f and \x85).
    reason = {"type": "string", "minLength": 1, "maxLength": MAX_REASON_CHARS, "pattern": r"[^\s\u001c-\u001f\u0085]"}
    job_id = {"type": "string", "pattern": "^[0-9a-f]{24}$"}
    return {
        "ControlError": {
            "type": "object",
            "description": "A control call refused: what is wrong, and the field at fault where there is one.",
            "required": ["error"],
            "properties": {"error": _STR, "field": _STR},
        },
        "FaultRuleInput": {
            "description": "A fault rule: one effect (code, http_status, drop or tamper), or latency alone;"
            ' operation "*" (the default) matches the three API operations.',
            "anyOf": [
                variant(
                    "answer a code",
                    ["code"],
                    api_operations,
                    code={"type": "integer", "enum": [int(code) for code in FAULT_CODES]},
                ),
                variant(
                    "answer an HTTP status",
                    ["http_status"],
                    api_operations,
                    http_status={"type": "integer", "enum": list(FAULT_HTTP_STATUSES)},
                ),
                variant("drop the connection", ["drop"], list(OPERATIONS), drop={"type": "boolean", "enum": [True]}),
                {
                    **variant(
                        "tamper with webhooks",
                        ["tamper", "operation"],
                        ["webhook"],
                        tamper={"type": "boolean", "enum": [True]},
                    ),
                },
                variant(
                    "latency alone",
                    ["latency_ms"],
                    list(OPERATIONS),
                    latency_ms={"type": "number", "exclusiveMinimum": 0, "maximum": MAX_LATENCY_MS},
                ),
            ],
        },
        "FaultRule": {
            "type": "object",
            "required": ["id", "operation", "client_id", "latency_ms", "probability", "seed", "times", "hits"],
            "properties": {
                "id": {"type": "string", "pattern": "^fault-[0-9]+$"},
                "operation": {"type": "string", "enum": list(OPERATIONS)},
                "client_id": _nullable(_STR),
                "code": _INT,
                "http_status": _INT,
                "drop": {"type": "boolean"},
                "tamper": {"type": "boolean"},
                "latency_ms": {"type": "number"},
                "probability": {"type": "number"},
                "seed": _nullable(_INT),
                "times": _nullable(_INT),
                "hits": _INT,
            },
        },
        "FaultRules": {
            "type": "object",
            "required": ["faults"],
            "properties": {"faults": {"type": "array", "items": _ref("FaultRule")}},
        },
        "JobPolicyInput": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "queueing_polls": {"type": "integer", "minimum": 0, "maximum": 10_000},
                "processing_polls": {"type": "integer", "minimum": 0, "maximum": 10_000},
                "fail": _nullable(reason),
                "times": {"type": "integer", "minimum": 1, "maximum": 2**31},
            },
        },
        "JobPolicy": {
            "type": "object",
            "required": ["queueing_polls", "processing_polls", "fail", "times"],
            "properties": {
                "queueing_polls": _INT,
                "processing_polls": _INT,
                "fail": _nullable(_STR),
                "times": _nullable(_INT),
            },
        },
        "JobFailure": {
            "type": "object",
            "required": ["reason"],
            "additionalProperties": False,
            "properties": {"reason": reason},
        },
        "JobSummary": {
            "type": "object",
            "required": ["_id", "client_id", "image_status", "create_time", "error_reasons"],
            "properties": {
                "_id": job_id,
                "client_id": _STR,
                "image_status": _STATUS,
                "create_time": _INT,
                "error_reasons": {"type": "array", "items": _STR},
            },
        },
        "JobList": {
            "type": "object",
            "required": ["jobs"],
            "properties": {"jobs": {"type": "array", "items": _ref("JobSummary")}},
        },
        "JournalEntry": {
            "type": "object",
            "required": ["time", "method", "path", "operation", "client_id", "http_status", "code", "latency_ms"],
            "properties": {
                "time": _INT,
                "method": _STR,
                "path": _STR,
                "operation": _STR,
                "client_id": _nullable(_STR),
                "http_status": _nullable(_INT),
                "code": _nullable(_INT),
                "latency_ms": {"type": "number"},
                "fault": _nullable(_STR),
            },
        },
        "Journal": {
            "type": "object",
            "required": ["requests"],
            "properties": {"requests": {"type": "array", "items": _ref("JournalEntry")}},
        },
        "Delivery": {
            "type": "object",
            "required": ["job_id", "url", "status", "attempts", "last_http_status", "last_error", "delivered"],
            "properties": {
                "job_id": _STR,
                "url": _STR,
                "status": _INT,
                "attempts": _INT,
                "last_http_status": _nullable(_INT),
                "last_error": _nullable(_STR),
                "delivered": {"type": "boolean"},
            },
        },
        "Deliveries": {
            "type": "object",
            "required": ["deliveries"],
            "properties": {"deliveries": {"type": "array", "items": _ref("Delivery")}},
        },
        "Removed": {"type": "object", "required": ["removed"], "properties": {"removed": _STR}},
        "ResetRequest": {
            "type": "object",
            "description": "Ignored: a control POST carries a JSON body (no cross-site form can send one).",
        },
        "ResetDone": {"type": "object", "required": ["reset"], "properties": {"reset": {"type": "boolean"}}},
    }


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def _api_responses(body: bool, store: bool, ok: dict[str, Any]) -> dict[str, Any]:
    """The statuses an API operation answers: 200 for every business outcome, and the mirror's own."""
    envelope = _ref("Envelope")
    responses: dict[str, Any] = {"200": ok}
    if body:
        responses["413"] = _json(envelope, "The body is over the mirror's cap (1 MiB by default): code 1003.")
    responses["500"] = _json(envelope, "An unexpected error: code 1206, the message naming a request id.")
    if store:
        responses["503"] = _json(
            envelope,
            "The job store cannot be written (a full disk): code 1206; try again.",
            headers={"Retry-After": {"description": "seconds", "schema": _INT, "required": True}},
        )
    return responses


def _api_paths(prefix: str, alias: bool) -> dict[str, Any]:
    security: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
    suffix = "_v3_alias" if alias else ""
    note = (
        " The same operation at the path of the docs' Java sample (contentapi.akool.com/api/v3/..., without /open)."
        if alias
        else ""
    )
    tags = ["upstream paths (Java sample)"] if alias else ["Background Change API"]
    job_ok = _json(
        _ref("JobEnvelope"),
        "Every outcome, success or failure: code 1000 with the job's record, else the failure's code"
        " (1003 parameter, 1005 too frequent, 1006 quota, 1101/1102 authorization, 1200 banned).",
    )
    return {
        f"{prefix}/getToken": {
            "post": {
                "operationId": f"get_token{suffix}",
                "tags": tags,
                "summary": "A token for Authorization: Bearer",
                "description": "An HS256 JWT for the client whose id and secret are given." + note,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TokenRequest")}}},
                "responses": _api_responses(
                    body=True, store=False, ok=_json(_ref("TokenAnswer"), "code 1000 with the token, else a failure")
                ),
            }
        },
        f"{prefix}/content/image/bg/replace": {
            "post": {
                "operationId": f"replace_background{suffix}",
                "tags": tags,
                "summary": "Queue a background change job",
                "description": "Queues the composite and answers the job's record (status 1); a body that is not"
                " valid is refused with 1003 and data.errors by field, and makes no job." + note,
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("ReplaceRequest"), "example": copy.deepcopy(EXAMPLE_3)},
                    },
                },
                "responses": _api_responses(body=True, store=True, ok=job_ok),
            }
        },
        f"{prefix}/content/image/infobymodelid": {
            "get": {
                "operationId": f"job_info{suffix}",
                "tags": tags,
                "summary": "A job's record",
                "description": "Poll it until image_status is 3 (completed: data.image) or 4 (failed)." + note,
                "security": security,
                "parameters": [
                    {
                        "name": "image_model_id",
                        "in": "query",
                        "required": False,
                        "description": "the job's _id (missing or unknown: code 1003)",
                        "schema": _STR,
                    }
                ],
                "responses": _api_responses(body=False, store=True, ok=job_ok),
            }
        },
    }


def _control_paths(admin: bool) -> dict[str, Any]:
    def error(description: str) -> dict[str, Any]:
        return _json(_ref("ControlError"), description)

    def operation(
        summary: str,
        operation_id: str,
        answer: str,
        *,
        body: str | None = None,
        errors: tuple[int, ...] = (),
        parameter: tuple[str, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        responses: dict[str, Any] = {"200": _json(_ref(answer), summary)}
        for status in errors:
            responses[str(status)] = error(_CONTROL_ERRORS[status])
        if body is not None and body != "ResetRequest":
            responses["400"] = error(_CONTROL_ERRORS[400])
        if body is not None:
            responses["413"] = error("The body is over the mirror's cap; field: body.")
        responses[("401" if admin else "403")] = error(_CONTROL_ERRORS[401 if admin else 403])
        described: dict[str, Any] = {
            "operationId": operation_id,
            "tags": ["test controls"],
            "summary": summary,
            "responses": dict(sorted(responses.items())),
        }
        if admin:
            described["security"] = [{"mirrorAdmin": []}]
        if body is not None:
            described["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(body)}},
            }
        if parameter is not None:
            name, schema = parameter
            described["parameters"] = [{"name": name, "in": "path", "required": True, "schema": schema}]
        return described

    rule_id = ("rule_id", {"type": "string", "pattern": "^fault-[0-9]+$"})
    job_id = ("job_id", {"type": "string", "pattern": "^[0-9a-f]{24}$"})
    return {
        "/_mirror/faults": {
            "post": operation("Add a fault rule", "add_fault", "FaultRule", body="FaultRuleInput"),
            "get": operation("The fault rules, with their hits", "list_faults", "FaultRules"),
            "delete": operation("Remove every fault rule", "clear_faults", "FaultRules"),
        },
        "/_mirror/faults/{rule_id}": {
            "delete": operation("Remove one fault rule", "remove_fault", "Removed", errors=(404,), parameter=rule_id),
        },
        "/_mirror/jobs/policy": {
            "post": operation(
                "How the next jobs progress (an empty object: the default)",
                "set_policy",
                "JobPolicy",
                body="JobPolicyInput",
            ),
            "get": operation("The job policy now", "get_policy", "JobPolicy"),
        },
        "/_mirror/jobs/{job_id}/fail": {
            "post": operation(
                "End an unfinished job with status 4",
                "fail_job",
                "JobSummary",
                body="JobFailure",
                errors=(404, 409),
                parameter=job_id,
            ),
        },
        "/_mirror/jobs": {"get": operation("Every job", "list_jobs", "JobList")},
        "/_mirror/requests": {"get": operation("The journal: the last 1,000 API calls", "journal", "Journal")},
        "/_mirror/webhooks": {"get": operation("Webhook deliveries", "deliveries", "Deliveries")},
        "/_mirror/reset": {
            "post": operation(
                "Forget jobs, results, faults, policies and journals", "reset", "ResetDone", body="ResetRequest"
            )
        },
    }


_CONTROL_ERRORS = {
    400: "The input is refused, nothing changed: the field at fault is named.",
    401: "The admin token is missing or wrong (x-mirror-admin).",
    403: "A request that may be a web page's in a browser is refused: a cross-site Origin, a Host that is not"
    " loopback's, or a POST whose Content-Type is not application/json.",
    404: "No such rule or job; field names the id.",
    409: "The job has already ended; field: job_id.",
}


def openapi_document(
    *, title: str, version: str, controls: bool, admin: bool, results_in_bucket: bool = False
) -> dict[str, Any]:
    """The whole document; the control plane's paths only when it is served, and
    the result's 503 only when results are kept in object storage."""
    paths: dict[str, Any] = {**_api_paths(API_PREFIX, alias=False), **_api_paths(ALIAS_PREFIX, alias=True)}
    paths["/results/{name}"] = {
        "get": {
            "operationId": "result",
            "tags": ["Background Change API"],
            "summary": "A completed job's result (its data.image URL)",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": _RESULT_NAME}}
            ],
            "responses": {
                "200": {
                    "description": "The PNG",
                    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                },
                "404": _json(_ref("Envelope"), "No such result, or it has expired: code 1003."),
            },
        }
    }
    if results_in_bucket:
        paths["/results/{name}"]["get"]["responses"]["503"] = _json(
            _ref("Envelope"),
            "The bucket that keeps the results cannot be read right now: code 1206, with Retry-After.",
        )
    security_schemes: dict[str, Any] = {
        "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "the clientSecret"},
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "a token from getToken"},
    }
    if controls:
        paths.update(_control_paths(admin))
        if admin:
            security_schemes["mirrorAdmin"] = {"type": "apiKey", "in": "header", "name": "x-mirror-admin"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": _DESCRIPTION,
        },
        "paths": paths,
        "components": {"schemas": _schemas(), "securitySchemes": security_schemes},
        "tags": [
            {"name": "Background Change API", "description": "Upstream's paths, headers, envelope and codes."},
            {"name": "upstream paths (Java sample)", "description": "The same operations under /api/v3."},
            {"name": "test controls", "description": "The mirror's own: plain JSON and HTTP statuses."},
        ],
    }


_DESCRIPTION = """Same paths, headers, envelope, codes, job states and webhooks as upstream; rendered locally.

Every answer of the API is the `{code, msg, data}` envelope. Every business outcome, failures included, is
HTTP 200 with its code in `code` (1000 success), as upstream answers: a body that is not valid is 1003, not a
4xx. The mirror's own statuses, also with the envelope: 404 for an unknown path, 405 (with `Allow`) for a
method a path does not take, 413 for a body over the cap, 503 while jobs cannot be stored, 500 for an
unexpected error. Fault rules of the test controls can make an operation answer other codes and statuses,
or drop the connection: that is their point.
"""
