"""The mirror's OpenAPI document says what the mirror answers: a valid
document, the envelope on every 200, no status the mirror does not send, the
body's fields from the table validation reads with the docs' example 3, the
aliases and the control plane documented, 405 with Allow, pages that fetch
nothing from outside, and a client generated from it that works."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate as validate_spec

from compositor.request import BODY_FIELDS, KNOWN_FIELDS, REQUIRED_FIELDS, validate
from tests.conftest import REQUESTS, SOURCE_MAP_FILE
from tests.inprocess import KEY, in_process_mirror
from tests.test_mirror import CONFIG, SECRET, Server, start_server

API_OPERATIONS = {
    ("post", "/api/open/v3/getToken"),
    ("post", "/api/open/v3/content/image/bg/replace"),
    ("get", "/api/open/v3/content/image/infobymodelid"),
}
ALIASES = {(method, path.replace("/api/open/v3/", "/api/v3/")) for method, path in API_OPERATIONS}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    with in_process_mirror(tmp_path_factory.mktemp("openapi")) as (mirror, client):
        yield mirror, client


@pytest.fixture(scope="module")
def document(in_process: tuple[Any, Any]) -> dict[str, Any]:
    answer = in_process[1].request("GET", "/openapi.json")
    assert answer.status_code == 200
    return dict(answer.json())


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_the_document_passes_the_openapi_spec_validator(document: dict[str, Any]) -> None:
    validate_spec(document)


def test_every_api_operation_answers_the_envelope_and_no_status_it_never_sends(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in json.dumps(document)
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "x-api-key"}
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "bearer"
    seen = set()
    for method, path, operation in operations(document):
        if not path.startswith("/api/"):
            continue
        seen.add((method, path))
        assert set(operation["responses"]) <= {"200", "413", "500", "503"}, (path, operation["responses"])
        ok = resolve(document, operation["responses"]["200"]["content"]["application/json"]["schema"])
        assert ok["required"] == ["code", "msg"]
        assert set(ok["properties"]) == (
            {"code", "msg", "token"} if path.endswith("getToken") else {"code", "msg", "data"}
        )
        if path.endswith("getToken"):
            assert "security" not in operation
        else:
            assert operation["security"] == [{"apiKey": []}, {"bearer": []}]
            data = ok["properties"]["data"]["anyOf"]
            assert [resolve(document, part)["required"][0] for part in data] == ["_id", "errors"]
            assert not any(parameter["in"] == "header" for parameter in operation.get("parameters", []))
        for status, response in operation["responses"].items():
            if status != "200":
                assert resolve(document, response["content"]["application/json"]["schema"])["required"] == [
                    "code",
                    "msg",
                ]
    assert seen == API_OPERATIONS | ALIASES


def test_the_replace_body_is_the_table_validation_reads_with_the_docs_example_3(document: dict[str, Any]) -> None:
    content = document["paths"]["/api/open/v3/content/image/bg/replace"]["post"]["requestBody"]["content"]
    schema = resolve(document, content["application/json"]["schema"])
    assert schema["required"] == list(REQUIRED_FIELDS)
    assert set(schema["properties"]) == set(KNOWN_FIELDS) == {spec.name for spec in BODY_FIELDS}
    example = content["application/json"]["example"]
    assert example == json.loads((REQUESTS / "example-3-template-and-color.json").read_text())
    report = validate(example)
    assert report.ok and not report.warnings


def test_a_405_names_the_methods_the_path_takes(in_process: tuple[Any, Any], document: dict[str, Any]) -> None:
    client = in_process[1]
    concrete = {"{rule_id}": "fault-1", "{job_id}": "0" * 24, "{name}": "x.png"}
    for path, item in document["paths"].items():
        url = path
        for placeholder, value in concrete.items():
            url = url.replace(placeholder, value)
        declared = {method.upper() for method in item if method in METHODS}
        answer = client.request("PATCH", url, headers=KEY)
        assert answer.status_code == 405, (path, answer.status_code)
        assert answer.json()["code"] == 1003
        assert set(answer.headers["allow"].split(", ")) == declared, (path, answer.headers.get("allow"))


def test_every_route_is_documented_and_every_documented_operation_is_routed(
    in_process: tuple[Any, Any], document: dict[str, Any]
) -> None:
    routed = set()
    fastapi_app = _fastapi_app(in_process[1])
    for route in fastapi_app.routes:
        if getattr(route, "include_in_schema", False) and getattr(route, "methods", None):
            routed |= {(method.lower(), route.path) for method in route.methods}
    documented = {(method, path) for method, path, _ in operations(document)}
    assert routed == documented


def _fastapi_app(client: Any) -> Any:
    """The FastAPI app inside the guards the in-process client drives."""
    from fastapi import FastAPI

    seen: list[Any] = [client]
    while seen:
        item = seen.pop()
        if isinstance(item, FastAPI):
            return item
        seen += (
            [value for name, value in vars(item).items() if not name.startswith("__")]
            if hasattr(item, "__dict__")
            else []
        )
    raise AssertionError("no FastAPI app inside the client")


def test_the_control_plane_is_documented_with_its_error_shape(document: dict[str, Any]) -> None:
    control = [(method, path, op) for method, path, op in operations(document) if path.startswith("/_mirror/")]
    assert len(control) == 11
    error = document["components"]["schemas"]["ControlError"]
    assert error["required"] == ["error"] and set(error["properties"]) == {"error", "field"}
    for method, path, operation in control:
        ok = resolve(document, operation["responses"]["200"]["content"]["application/json"]["schema"])
        assert ok.get("properties"), (method, path)
        statuses = set(operation["responses"]) - {"200"}
        assert "403" in statuses  # a loopback server without an admin token refuses cross-site calls
        for status in statuses:
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ControlError"}
    by_operation = {(m, p): set(op["responses"]) for m, p, op in control}
    assert by_operation[("post", "/_mirror/jobs/{job_id}/fail")] == {"200", "400", "403", "404", "409", "413"}
    assert by_operation[("delete", "/_mirror/faults/{rule_id}")] == {"200", "403", "404"}


def test_with_an_admin_token_the_control_plane_documents_401_and_its_header(tmp_path: Path) -> None:
    with in_process_mirror(tmp_path, admin_token="t" * 32) as (_, client):
        document = client.request("GET", "/openapi.json").json()
    assert document["components"]["securitySchemes"]["mirrorAdmin"]["name"] == "x-mirror-admin"
    for _, path, operation in operations(document):
        if path.startswith("/_mirror/"):
            assert operation["security"] == [{"mirrorAdmin": []}]
            assert "401" in operation["responses"] and "403" not in operation["responses"]


def test_without_controls_the_document_has_no_control_paths(tmp_path: Path) -> None:
    with in_process_mirror(tmp_path, controls_open=False) as (_, client):
        document = client.request("GET", "/openapi.json").json()
    assert not [path for path in document["paths"] if path.startswith("/_mirror")]
    validate_spec(document)


def test_the_doc_pages_name_no_url_outside_the_mirror(in_process: tuple[Any, Any]) -> None:
    client = in_process[1]
    for page in ("/docs", "/redoc"):
        html = client.request("GET", page).text
        outside = [url for url in re.findall(r"""https?://[^\s"'<>)]+""", html)]
        assert outside == [], (page, outside)
        for asset in re.findall(r"""(?:src|href)="(/[^"]+)\"""", html):
            assert client.request("GET", asset).status_code == 200, asset


# --- against a real server on loopback -------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("mirror"), CONFIG, "--source-map", str(SOURCE_MAP_FILE))
    yield running
    running.stop()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_doc_pages_fetch_nothing_from_outside_the_mirror(server: Server, page: str) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from tests.test_page import FLAGS

    outside: list[str] = []

    def only_the_mirror(route: Any) -> None:
        url = route.request.url
        if url.startswith(server.base) or url.startswith("data:"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page()
        tab.route("**/*", only_the_mirror)
        tab.goto(server.base + page, wait_until="networkidle")
        selector = ".swagger-ui .info .title" if page == "/docs" else "h1"
        tab.wait_for_selector(selector, timeout=20000)
        assert "compositor mirror" in (tab.text_content(selector) or "")
        browser.close()
    assert outside == []


def generate_client(base: str, into: Path) -> Any:
    """A client package generated from the server's /openapi.json by openapi-python-client, imported."""
    (into / "openapi.json").write_text(httpx.get(base + "/openapi.json").text)
    # The generator reads only JSON bodies and application/octet-stream: the PNG is bytes either way.
    (into / "config.yaml").write_text('content_type_overrides:\n  "image/png": "application/octet-stream"\n')
    package = into / "mirror_client"
    generator = Path(sys.executable).with_name("openapi-python-client")
    command = [str(generator), "generate", "--path", str(into / "openapi.json"), "--meta", "none"]
    done = subprocess.run(
        [*command, "--output-path", str(package), "--config", str(into / "config.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Cannot parse" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(into))
    try:
        return importlib.import_module("mirror_client")
    finally:
        sys.path.remove(str(into))


def test_a_generated_client_submits_polls_and_downloads_a_job(server: Server, tmp_path: Path) -> None:
    generated = generate_client(server.base, tmp_path)
    from mirror_client.api.background_change_api import get_token, job_info, replace_background, result

    models = importlib.import_module("mirror_client.models")
    keyed = generated.AuthenticatedClient(base_url=server.base, token=SECRET, prefix="", auth_header_name="x-api-key")
    document = httpx.get(server.base + "/openapi.json").json()
    example = document["paths"]["/api/open/v3/content/image/bg/replace"]["post"]["requestBody"]["content"]
    body = models.ReplaceRequest.from_dict(example["application/json"]["example"])

    submitted = replace_background.sync(client=keyed, body=body)
    assert submitted.code == 1000, submitted
    job_id = submitted.data.field_id
    assert submitted.data.image_status in (1, 2, 3)

    answer = get_token.sync(client=generated.Client(base_url=server.base), body=models.TokenRequest("alpha", SECRET))
    assert answer.code == 1000 and answer.token
    bearer = generated.AuthenticatedClient(base_url=server.base, token=answer.token)

    deadline = time.monotonic() + 120
    while True:
        record = job_info.sync(client=bearer, image_model_id=job_id).data
        if record.image_status in (3, 4) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert record.image_status == 3, record.error_reasons
    name = record.image.rsplit("/", 1)[1]
    png = result.sync_detailed(name=name, client=generated.Client(base_url=server.base))
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG\r\n\x1a\n")

    wrong = models.ReplaceRequest.from_dict({**example["application/json"]["example"], "canvas_size": "0x0"})
    refused = replace_background.sync(client=keyed, body=wrong)
    assert refused.code == 1003 and refused.data.errors[0].field == "canvas_size"


def test_a_server_with_local_results_documents_no_503_for_them() -> None:
    from compositor.mirror.openapi import openapi_document

    local = openapi_document(title="t", version="1", controls=False, admin=False)
    bucket = openapi_document(title="t", version="1", controls=False, admin=False, results_in_bucket=True)
    assert "503" not in local["paths"]["/results/{name}"]["get"]["responses"]
    assert "503" in bucket["paths"]["/results/{name}"]["get"]["responses"]
