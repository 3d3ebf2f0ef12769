"""Requests generated from the mirror's own OpenAPI schema: no operation may
answer with a server error or hang (every call has a 10 s timeout).

Schemathesis's pytest plugin does not run under pytest 9, so each operation's
strategy is driven by hypothesis directly."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.test_mirror import SECRET, Server, server  # noqa: F401  (a server of this module's own)


def test_no_operation_answers_a_server_error(server: Server) -> None:  # noqa: F811
    schema = schemathesis.openapi.from_url(server.base + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/api/open/v3/getToken",
        "/api/open/v3/content/image/bg/replace",
        "/api/open/v3/content/image/infobymodelid",
    }
    for operation in operations:

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def no_server_error(case: schemathesis.Case) -> None:
            response = case.call(base_url=server.base, headers={"x-api-key": SECRET}, timeout=10)
            case.validate_response(response, checks=[not_a_server_error])

        no_server_error()
