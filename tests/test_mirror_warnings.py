"""Pre-flight's warnings in the mirror's answers (issue 22): what the sources'
headers predict (stretched, enlarged, cut-off layers, a transparent canvas,
removeBg over alpha) reaches `data.warnings` of the replace answer for the
sources read without the network (data: URIs, uploads, mapped URLs, local
files), and of the poll answer once the worker has read the others (http(s)
sources, downloaded once, right before the render). The job record keeps
them; a data dir from before still opens."""

from __future__ import annotations

import base64
import http.server
import io
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pytest
from PIL import Image

from compositor import preflight as preflight_module
from compositor.mirror.jobs import JobStore
from compositor.preflight import PreflightThresholds
from tests.conftest import FIXTURES, serving
from tests.inprocess import CLIENT, INFO, KEY, SUBMIT, in_process_mirror

STRETCH = "stretches 100x50 to 100x100"


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (200, 10, 10, 255)[: len(mode)]).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_uri(size: tuple[int, int], mode: str = "RGB") -> str:
    return "data:image/png;base64," + base64.b64encode(_png(size, mode)).decode()


def _body(origin_img: str, **overrides: Any) -> dict[str, Any]:
    """A 100x100 foreground slot on a coloured 100x100 canvas: clean for a 100x100 picture, stretched for 100x50."""
    return {
        "canvas_size": "100x100",
        "color_code": "#336699",
        "origin_img": origin_img,
        "modify_origin_img_size": "100x100",
        "overlay_origin_x": 0,
        "overlay_origin_y": 0,
    } | overrides


def _submit(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.request("POST", SUBMIT, headers=KEY, content=json.dumps(body))
    assert answer.status_code == 200
    envelope: dict[str, Any] = answer.json()
    assert envelope["code"] == 1000, envelope
    return envelope


def _poll(client: Any, job_id: str) -> dict[str, Any]:
    answer = client.request("GET", INFO, headers=KEY, params={"image_model_id": job_id})
    assert answer.status_code == 200
    envelope: dict[str, Any] = answer.json()
    assert envelope["code"] == 1000, envelope
    return envelope


def _messages(envelope: dict[str, Any]) -> list[str]:
    return [warning["message"] for warning in envelope["data"].get("warnings", [])]


class _Counting(http.server.BaseHTTPRequestHandler):
    """Serves a 100x50 PNG at any path and counts the requests."""

    requests: ClassVar[list[str]] = []
    lock = threading.Lock()
    picture = _png((100, 50))

    def do_GET(self) -> None:
        with self.lock:
            self.requests.append(self.path)
        self.send_response(200)
        self.send_header("content-type", "image/png")
        self.send_header("content-length", str(len(self.picture)))
        self.end_headers()
        self.wfile.write(self.picture)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def loopback() -> Iterator[str]:
    _Counting.requests.clear()
    with serving(_Counting) as base:
        yield base


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    with in_process_mirror(tmp_path / "data") as pair:
        yield pair


def test_a_stretched_data_uri_foreground_warns_in_the_replace_answer(mirror: tuple[Any, Any]) -> None:
    _, client = mirror
    accepted = _submit(client, _body(_data_uri((100, 50))))
    [warning] = accepted["data"]["warnings"]
    assert warning["field"] == "modify_origin_img_size"
    assert STRETCH in warning["message"]


def test_a_clean_body_gets_no_warnings(mirror: tuple[Any, Any]) -> None:
    _, client = mirror
    accepted = _submit(client, _body(_data_uri((100, 100))))
    assert "warnings" not in accepted["data"]
    polled = _poll(client, accepted["data"]["_id"])
    assert polled["data"]["image_status"] == 3 and "warnings" not in polled["data"]


def test_the_poll_answer_shows_the_same_warnings(mirror: tuple[Any, Any]) -> None:
    _, client = mirror
    # A body-level warning (an ignored field) and two header ones (stretched, removeBg over alpha).
    body = _body(_data_uri((100, 50), "RGBA"), removeBg=True, colour="red")
    accepted = _submit(client, body)
    fields = [warning["field"] for warning in accepted["data"]["warnings"]]
    assert {"colour", "modify_origin_img_size", "removeBg"} <= set(fields)
    polled = _poll(client, accepted["data"]["_id"])
    assert polled["data"]["warnings"] == accepted["data"]["warnings"]


def test_a_local_file_and_a_mapped_url_are_read_at_accept(mirror: tuple[Any, Any], tmp_path: Path) -> None:
    backend, client = mirror
    picture = FIXTURES / "images" / "foreground.png"
    with Image.open(picture) as image:
        width, height = image.size
    stretched = f"{width * 2}x{height}"
    accepted = _submit(client, _body(str(picture), modify_origin_img_size=stretched, canvas_size=stretched))
    assert any("stretches" in message for message in _messages(accepted))
    from compositor.sourcemap import SourceMap

    (tmp_path / "mapped.png").write_bytes(_png((100, 50)))
    backend.add_sources(SourceMap.from_entries({"https://cdn.example.invalid/cat.png": tmp_path / "mapped.png"}))
    accepted = _submit(client, _body("https://cdn.example.invalid/cat.png"))
    assert any(STRETCH in message for message in _messages(accepted))


def test_an_http_source_is_read_on_the_worker_not_at_accept(mirror: tuple[Any, Any], loopback: str) -> None:
    backend, client = mirror
    # The held job runs on the third poll: the answers before it come from the record alone.
    backend.controls.policies.set({"queueing_polls": 1, "processing_polls": 1})
    accepted = _submit(client, _body(f"{loopback}/fg.png"))
    assert "warnings" not in accepted["data"]
    assert _Counting.requests == []  # the accept answer did not wait on the source's server
    waiting = _poll(client, accepted["data"]["_id"])
    assert waiting["data"]["image_status"] == 1 and "warnings" not in waiting["data"]
    assert _Counting.requests == []
    _poll(client, accepted["data"]["_id"])
    done = _poll(client, accepted["data"]["_id"])
    assert done["data"]["image_status"] == 3, done
    [warning] = done["data"]["warnings"]
    assert warning["field"] == "modify_origin_img_size" and STRETCH in warning["message"]
    assert _Counting.requests == ["/fg.png"]  # downloaded once: the header and the render share it
    assert _poll(client, accepted["data"]["_id"])["data"]["warnings"] == done["data"]["warnings"]


def test_the_worker_adds_to_the_warnings_from_accept(mirror: tuple[Any, Any], loopback: str) -> None:
    """A stretched data: template at accept; the stretched http foreground, and the transparency that
    only all the headers together can tell, once the worker has read it."""
    _, client = mirror
    body = _body(
        f"{loopback}/fg.png",
        template_url=_data_uri((100, 50)),
        modify_template_size="50x50",
        overlay_template_x=0,
        overlay_template_y=0,
        modify_origin_img_size="50x50",
    )
    body.pop("color_code")
    accepted = _submit(client, body)
    assert [warning["field"] for warning in accepted["data"]["warnings"]] == ["modify_template_size"]
    done = _poll(client, accepted["data"]["_id"])
    assert done["data"]["image_status"] == 3, done
    warnings = done["data"]["warnings"]
    assert warnings[0] == accepted["data"]["warnings"][0]
    assert [warning["field"] for warning in warnings[1:]] == ["modify_origin_img_size", "color_code"]
    assert len(_Counting.requests) == 1


@pytest.mark.parametrize("where", ["data-uri", "http"])
def test_thresholds_come_from_the_settings(tmp_path: Path, loopback: str, where: str) -> None:
    source = _data_uri((100, 50)) if where == "data-uri" else f"{loopback}/fg.png"
    lenient = PreflightThresholds(max_aspect_change=1.5)
    with in_process_mirror(tmp_path / "data", preflight=lenient) as (_, client):
        accepted = _submit(client, _body(source))
        done = _poll(client, accepted["data"]["_id"])
    assert done["data"]["image_status"] == 3
    assert "warnings" not in accepted["data"] and "warnings" not in done["data"]
    strict = PreflightThresholds(max_aspect_change=0.5)
    with in_process_mirror(tmp_path / "data2", preflight=strict) as (_, client):
        accepted = _submit(client, _body(source))
        done = _poll(client, accepted["data"]["_id"])
    assert any(STRETCH in message for message in _messages(done))


def test_a_source_that_raises_at_accept_costs_only_its_warnings(
    mirror: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, client = mirror

    def explode(*_: object, **__: object) -> Any:
        raise RuntimeError("a header reader that breaks")

    monkeypatch.setattr(preflight_module, "read_header", explode)
    with caplog.at_level(logging.ERROR, logger="compositor.mirror.service"):
        accepted = _submit(client, _body(_data_uri((100, 50)), colour="red"))
    assert [warning["field"] for warning in accepted["data"]["warnings"]] == ["colour"]  # the body's own, still
    assert any("pre-flight" in record.getMessage() for record in caplog.records)
    monkeypatch.undo()
    assert _poll(client, accepted["data"]["_id"])["data"]["image_status"] == 3


def test_an_unreadable_source_is_accepted_and_fails_on_the_worker(mirror: tuple[Any, Any]) -> None:
    _, client = mirror
    accepted = _submit(client, _body(str(FIXTURES / "images" / "no-such-picture.png")))
    assert "warnings" not in accepted["data"]
    done = _poll(client, accepted["data"]["_id"])
    assert done["data"]["image_status"] == 4
    assert done["data"]["error_reasons"] == ["origin_img: names a local file that does not exist"]


def test_a_failing_http_source_fails_the_job_with_its_reason_once(mirror: tuple[Any, Any], loopback: str) -> None:
    """A loopback source that is not an image: the one reason every failing private source gets, as before."""
    _, client = mirror
    _Counting.picture, picture = b"not a picture", _Counting.picture
    try:
        accepted = _submit(client, _body(f"{loopback}/broken.png"))
        done = _poll(client, accepted["data"]["_id"])
    finally:
        _Counting.picture = picture
    assert done["data"]["image_status"] == 4
    [reason] = done["data"]["error_reasons"]
    assert reason.startswith("origin_img: could not be fetched"), reason
    assert "warnings" not in done["data"]
    assert _Counting.requests == ["/broken.png"]


def test_the_answers_match_the_openapi_document(mirror: tuple[Any, Any], loopback: str) -> None:
    _, client = mirror
    document = client.request("GET", "/openapi.json").json()
    schema = {"$ref": "#/components/schemas/JobEnvelope", "components": document["components"]}
    described = document["components"]["schemas"]["JobRecord"]["properties"]["warnings"]["description"]
    assert "pre-flight" in described
    for source in (_data_uri((100, 50)), f"{loopback}/fg.png"):
        accepted = _submit(client, _body(source, colour="red"))
        jsonschema.validate(accepted, schema)
        jsonschema.validate(_poll(client, accepted["data"]["_id"]), schema)


# The jobs table as data dirs made before warnings were stored have it.
_OLD_JOBS = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, image_id TEXT NOT NULL, client_id TEXT NOT NULL, uid INTEGER NOT NULL,
    body TEXT NOT NULL, status INTEGER NOT NULL, create_time INTEGER NOT NULL, updated_time INTEGER NOT NULL,
    image_url TEXT, result_path TEXT, error_reasons TEXT NOT NULL DEFAULT '[]',
    expired INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    queueing_polls INTEGER NOT NULL DEFAULT 0, processing_polls INTEGER NOT NULL DEFAULT 0, fail_reason TEXT,
    polls INTEGER NOT NULL DEFAULT 0, release_polls INTEGER NOT NULL DEFAULT 0,
    not_before_ms INTEGER NOT NULL DEFAULT 0, setbacks INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_status ON jobs (status, create_time);
CREATE TABLE credits (client_id TEXT PRIMARY KEY, used INTEGER NOT NULL);
"""


def test_a_data_dir_from_before_stored_warnings_still_opens(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    old = sqlite3.connect(data_dir / "jobs.sqlite3")
    old.executescript(_OLD_JOBS)
    body = _body(_data_uri((100, 50)))
    old.execute(
        "INSERT INTO jobs (id, image_id, client_id, uid, body, status, create_time, updated_time)"
        " VALUES (?, ?, ?, ?, ?, 1, 1, 1)",
        (
            "0123456789abcdef01234567",
            "00000000-0000-4000-8000-000000000000",
            CLIENT.client_id,
            CLIENT.uid,
            json.dumps(body),
        ),
    )
    old.commit()
    old.close()
    with in_process_mirror(data_dir) as (_, client):
        done = _poll(client, "0123456789abcdef01234567")
        assert done["data"]["image_status"] == 3 and "warnings" not in done["data"]  # stored before: none kept
        accepted = _submit(client, body)
        assert _poll(client, accepted["data"]["_id"])["data"]["warnings"] == accepted["data"]["warnings"]
    store = JobStore(data_dir / "jobs.sqlite3")
    try:
        assert [bool(job.warnings) for job in store.jobs()] == [False, True]
    finally:
        store.close()
