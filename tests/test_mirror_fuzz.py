"""Requests generated from the mirror's own OpenAPI schema, every operation
(the API, its /api/v3 aliases, results and the test controls), positive and
negative data: every answer must conform to the document (status, content
type, headers, schema), no operation may answer a server error or hang
(every call has a 60 s timeout: only a hang exceeds it), an unsupported method is a 405 with Allow.

Every Schemathesis check runs but two that expect a 4xx where upstream, and
so the mirror, answers HTTP 200 with the failure's code (docs/contract.md):
negative-data rejection (a body that is not valid is 1003) and ignored auth
(missing credentials are 1102, wrong ones 1101). What the mirror does
instead is asserted here for every secured operation.

Schemathesis's pytest plugin does not run under pytest 9, so each operation's
strategy is driven by hypothesis directly."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import ignored_auth, negative_data_rejection
from schemathesis.generation import GenerationMode

from tests.conftest import IMAGES
from tests.test_mirror import SECRET, Server, server  # noqa: F401  (a server of this module's own)

EXAMPLES = 30  # per operation and generation mode
SOURCE_FIELDS = ("origin_img", "template_url", "webhookUrl")
UPSTREAM_WAYS = [negative_data_rejection, ignored_auth]


def keep_on_loopback(case: schemathesis.Case, base: str) -> None:
    """Tests look up no outside host: a generated body's URL fields that would
    reach past loopback point at the fixtures, or at the server itself."""
    if not isinstance(case.body, dict):
        return
    for name in SOURCE_FIELDS:
        value = case.body.get(name)
        if isinstance(value, str) and ("//" in value or re.match(r"\s*[a-zA-Z][a-zA-Z0-9+.-]*:", value)):
            case.body[name] = f"{base}/webhook" if name == "webhookUrl" else str(IMAGES / "foreground.png")


def test_every_operation_conforms_to_the_document(server: Server) -> None:  # noqa: F811
    schema = schemathesis.openapi.from_url(server.base + "/openapi.json")
    document = httpx.get(server.base + "/openapi.json", timeout=60).json()
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    labels = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {
        "POST /api/open/v3/getToken",
        "POST /api/open/v3/content/image/bg/replace",
        "GET /api/open/v3/content/image/infobymodelid",
        "POST /api/v3/content/image/bg/replace",
        "POST /_mirror/faults",
        "POST /_mirror/jobs/{job_id}/fail",
    } <= labels
    counts: Counter[str] = Counter()
    for operation in operations:
        described = document["paths"][operation.path][operation.method.lower()]
        takes_input = "parameters" in described or "requestBody" in described
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,):

            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=operation.as_strategy(generation_mode=mode))
            def conforms(case: schemathesis.Case) -> None:
                # Faults, policies and jobs of one example must not answer for the next.
                httpx.post(server.base + "/_mirror/reset", json={}, timeout=60).raise_for_status()
                keep_on_loopback(case, server.base)
                headers: dict[str, Any] = {"x-api-key": SECRET}
                response = case.call(base_url=server.base, headers=headers, timeout=60)
                counts[case.operation.label] += 1
                case.validate_response(response, excluded_checks=UPSTREAM_WAYS, headers=headers)

            conforms()
        if document["paths"][operation.path][operation.method.lower()].get("security") and operation.path.startswith(
            "/api/"
        ):
            refused_without_credentials(server, operation.method.upper(), operation.path)
    print(f"schemathesis: {len(operations)} operations, {sum(counts.values())} examples, 0 failures")
    assert len(counts) == len(operations)


def refused_without_credentials(server: Server, method: str, path: str) -> None:  # noqa: F811
    """What ignored_auth would want a 401 for: HTTP 200, 1102 without credentials and 1101 with wrong ones."""
    body: dict[str, Any] | None = {} if method == "POST" else None
    for headers, code in (({}, 1102), ({"x-api-key": "not-a-key"}, 1101), ({"authorization": "Bearer x.y.z"}, 1101)):
        answer = httpx.request(method, server.base + path, json=body, headers=headers, timeout=60)
        assert (answer.status_code, answer.json()["code"]) == (200, code), (path, headers, answer.text)
