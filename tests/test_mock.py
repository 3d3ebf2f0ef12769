"""What only the in-process mock does (the controls it shares with the server are in test_controls.py)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import runpy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from PIL import Image

from compositor.testing import mock_background_change
from tests.conftest import FIXTURES, serving
from tests.test_controls import FOREGROUND, INFO, MOCK_KEY, SUBMIT, body

UPSTREAM = "https://openapi.akool.com"
HEADERS = {"x-api-key": MOCK_KEY}


def submit_and_poll(payload: dict[str, Any], base: str = UPSTREAM, prefix: str = "/api/open/v3") -> dict[str, Any]:
    submitted = requests.post(f"{base}{prefix}/content/image/bg/replace", json=payload, headers=HEADERS).json()
    assert submitted["code"] == 1000, submitted
    polled = requests.get(
        f"{base}{prefix}/content/image/infobymodelid",
        params={"image_model_id": submitted["data"]["_id"]},
        headers=HEADERS,
    ).json()
    return dict(polled["data"])


def test_the_docs_python_sample_runs_unchanged_to_a_downloadable_result() -> None:
    with mock_background_change() as mock:
        mock.add_source_map(FIXTURES / "source-map.json")
        sample = runpy.run_path(str(FIXTURES / "samples" / "akool_docs_sample.py"))
        result = sample["result"]
        assert result["image_status"] == 3, result
        downloaded = requests.get(result["image"])
        assert downloaded.status_code == 200 and downloaded.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(downloaded.content)).size == (3840, 3840)


def test_a_job_finishes_on_its_first_poll() -> None:
    with mock_background_change():
        assert submit_and_poll(body())["image_status"] == 3


def test_an_unmapped_remote_url_fails_the_job_and_is_never_fetched() -> None:
    with mock_background_change():
        job = submit_and_poll(body(origin_img="https://cdn.example.com/cat.png"))
        assert job["image_status"] == 4
        assert "origin_img" in job["error_reasons"][0] and "not on this machine" in job["error_reasons"][0]


def test_add_source_maps_a_url_to_bytes_or_a_folder(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30), "blue").save(tmp_path / "cat.png")
    with mock_background_change() as mock:
        mock.add_source("https://cdn.example.com/img/", tmp_path)
        mock.add_source("https://cdn.example.com/dog.png", (tmp_path / "cat.png").read_bytes())
        assert submit_and_poll(body(origin_img="https://cdn.example.com/img/cat.png"))["image_status"] == 3
        assert submit_and_poll(body(origin_img="https://cdn.example.com/dog.png"))["image_status"] == 3
        with pytest.raises(FileNotFoundError):
            mock.add_source("https://cdn.example.com/x.png", tmp_path / "missing.png")


def test_the_java_samples_host_and_path_are_answered_too() -> None:
    with mock_background_change():
        job = submit_and_poll(body(), base="https://contentapi.akool.com", prefix="/api/v3")
        assert job["image_status"] == 3


def test_any_key_is_a_client_and_get_token_takes_any_aes_length_secret() -> None:
    with mock_background_change() as mock:
        token = requests.post(
            f"{UPSTREAM}/api/open/v3/getToken", json={"clientId": "team-a", "clientSecret": "s" * 24}
        ).json()["token"]
        answer = requests.post(f"{UPSTREAM}{SUBMIT}", json=body(), headers={"authorization": f"Bearer {token}"})
        assert answer.json()["code"] == 1000
        assert [job["client_id"] for job in mock.jobs()] == ["team-a"]
        short = requests.post(f"{UPSTREAM}/api/open/v3/getToken", json={"clientId": "team-b", "clientSecret": "short"})
        assert short.json()["code"] == 1101
        assert requests.post(f"{UPSTREAM}{SUBMIT}", json=body()).json()["code"] == 1102


def test_httpx_sync_and_async_clients_are_answered() -> None:
    async def run_async() -> int:
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"{UPSTREAM}{SUBMIT}", json=body(), headers=HEADERS)
            job_id = answer.json()["data"]["_id"]
            polled = await client.get(f"{UPSTREAM}{INFO}", params={"image_model_id": job_id}, headers=HEADERS)
            return int(polled.json()["data"]["image_status"])

    with mock_background_change():
        assert httpx.post(f"{UPSTREAM}{SUBMIT}", json=body(), headers=HEADERS).json()["code"] == 1000
        assert asyncio.run(run_async()) == 3


@mock_background_change()
def _decorated() -> int:
    return int(submit_and_poll(body())["image_status"])


@mock_background_change()
async def _decorated_async() -> int:
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{UPSTREAM}{SUBMIT}", json=body(), headers=HEADERS)
        return int(answer.json()["code"])


def test_the_decorator_gives_each_call_a_fresh_mock() -> None:
    assert _decorated() == 3
    assert _decorated() == 3
    assert asyncio.run(_decorated_async()) == 1000


def test_other_hosts_are_refused_so_nothing_leaves_the_machine() -> None:
    with mock_background_change():
        with pytest.raises(requests.ConnectionError):
            requests.get("https://example.com/")
        with pytest.raises(httpx.ConnectError):
            httpx.get("https://example.com/")


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    with serving(_Hello) as base:
        yield f"{base}/"


def test_loopback_calls_pass_through(local_server: str) -> None:
    with mock_background_change():
        assert requests.get(local_server).text == "hello"
        assert httpx.get(local_server).text == "hello"


def test_leaving_the_mock_restores_the_real_clients(local_server: str) -> None:
    original, original_get_adapter = requests.adapters.HTTPAdapter.send, requests.Session.get_adapter
    with mock_background_change():
        # requests: the mock chooses the adapter (it leaves HTTPAdapter.send to the test's own `responses` mocks).
        assert requests.Session.get_adapter is not original_get_adapter
    assert requests.adapters.HTTPAdapter.send is original and requests.Session.get_adapter is original_get_adapter
    with contextlib.suppress(httpx.HTTPError):  # offline: a real attempt fails; what matters is that it was real
        answer = httpx.get(f"{UPSTREAM}{INFO}", timeout=2)
        assert answer.status_code != 200 or "data" not in answer.text


def test_a_local_data_uri_source_needs_no_mapping() -> None:
    with mock_background_change():
        assert submit_and_poll(body(origin_img=FOREGROUND))["image_status"] == 3


@pytest.mark.parametrize("first_out", ["outer", "inner"])
def test_overlapping_mocks_restore_the_clients_in_either_order(local_server: str, first_out: str) -> None:
    original = requests.adapters.HTTPAdapter.send
    outer, inner = mock_background_change(), mock_background_change()
    outer_mock, inner_mock = outer.__enter__(), inner.__enter__()
    submit_and_poll(body())
    assert inner_mock.jobs() and not outer_mock.jobs()  # the newest open mock answers
    for context in (outer, inner) if first_out == "outer" else (inner, outer):
        context.__exit__(None, None, None)
    assert requests.adapters.HTTPAdapter.send is original
    assert requests.get(local_server).text == "hello"


def test_each_thread_is_answered_by_the_mock_it_opened() -> None:

    results: dict[int, tuple[int, int]] = {}
    ready = threading.Barrier(2)

    def worker(index: int) -> None:
        with mock_background_change() as mock:
            ready.wait()
            job = submit_and_poll(body())
            results[index] = (job["image_status"], len(mock.jobs()))
            ready.wait()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {0: (3, 1), 1: (3, 1)}


def test_entering_the_same_mock_twice_gives_two_and_closes_both() -> None:
    original = requests.adapters.HTTPAdapter.send
    context = mock_background_change()
    with context as first, context as second:
        assert first is not second
    assert requests.adapters.HTTPAdapter.send is original


class _Missing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "7")
        self.end_headers()
        self.wfile.write(b"missing")

    def log_message(self, *args: object) -> None:
        pass


def test_a_job_cannot_tell_a_loopback_404_from_a_closed_port(local_server: str) -> None:
    import socket

    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    with serving(_Missing) as missing_base, mock_background_change():
        missing = submit_and_poll(body(origin_img=f"{missing_base}/cat.png"))
        refused = submit_and_poll(body(origin_img=f"http://127.0.0.1:{closed_port}/cat.png"))
        not_image = submit_and_poll(body(origin_img=f"{local_server}cat.png"))  # 200 "hello"
    assert missing["image_status"] == refused["image_status"] == not_image["image_status"] == 4
    assert missing["error_reasons"] == refused["error_reasons"] == not_image["error_reasons"]


@pytest.fixture
def no_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that would go out for real fails here instead of looking a name up."""
    import socket

    real = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("localhost", "127.0.0.1", "::1", b"localhost", b"127.0.0.1"):
            raise socket.gaierror(socket.EAI_NONAME, f"the test looks up no name but loopback's, not {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


@contextlib.contextmanager
def _clients_put_back() -> Iterator[tuple[Any, Any]]:
    """The real `send` and `get_adapter` of requests, put back whatever a failed test left."""
    send, get_adapter = requests.adapters.HTTPAdapter.send, requests.Session.get_adapter
    try:
        yield send, get_adapter
    finally:
        requests.adapters.HTTPAdapter.send = send  # type: ignore[method-assign]
        requests.Session.get_adapter = get_adapter  # type: ignore[method-assign]


def _closed_port() -> int:
    import socket

    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    return port


@pytest.mark.usefixtures("no_lookups")
def test_our_mock_inside_a_users_responses_mock_stopped_first_by_theirs(local_server: str) -> None:
    import responses

    theirs_url = f"http://127.0.0.1:{_closed_port()}/theirs"  # what their mock answers (nothing listens there)
    with _clients_put_back() as (send, get_adapter):
        theirs = responses.RequestsMock(assert_all_requests_are_fired=False)
        ours = mock_background_change()
        try:
            theirs.start()
            theirs.add(responses.GET, theirs_url, json={"theirs": True})
            ours.__enter__()
            assert submit_and_poll(body())["image_status"] == 3
            assert requests.get(theirs_url).json() == {"theirs": True}
            theirs.stop()
            assert submit_and_poll(body())["image_status"] == 3  # ours still answers
            with pytest.raises(requests.ConnectionError):
                requests.get(theirs_url)  # for real now: a closed port
        finally:
            theirs.stop()
            ours.__exit__(None, None, None)
        assert requests.adapters.HTTPAdapter.send is send and requests.Session.get_adapter is get_adapter
        assert requests.get(local_server).text == "hello"


@pytest.mark.usefixtures("no_lookups")
def test_a_users_responses_mock_inside_ours_stopped_after_it(local_server: str) -> None:
    import responses

    theirs_url = f"http://127.0.0.1:{_closed_port()}/theirs"
    with _clients_put_back() as (send, get_adapter):
        ours = mock_background_change()
        try:
            ours.__enter__()
            responses.start()  # the module's own default mock, as `responses.start()` users have it
            responses.add(responses.GET, theirs_url, json={"theirs": True})
            assert submit_and_poll(body())["image_status"] == 3
            assert requests.get(theirs_url).json() == {"theirs": True}
            ours.__exit__(None, None, None)
            assert requests.get(theirs_url).json() == {"theirs": True}  # theirs still answers
            with pytest.raises(requests.ConnectionError):
                requests.get(local_server)  # theirs refuses what it was not given, as it always does
        finally:
            ours.__exit__(None, None, None)
            responses.stop()
            responses.reset()
        assert requests.adapters.HTTPAdapter.send is send and requests.Session.get_adapter is get_adapter
        assert requests.get(local_server).text == "hello"


def test_a_sessions_own_retries_run_as_they_are() -> None:
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    session.mount("https://", HTTPAdapter(max_retries=Retry(total=2, status_forcelist=[503], allowed_methods=None)))
    with mock_background_change() as mock:
        mock.add_fault(operation="replace", http_status=503, times=2)
        answer = session.post(f"{UPSTREAM}{SUBMIT}", json=body(), headers=HEADERS)
        assert answer.status_code == 200 and answer.json()["code"] == 1000
        assert [call["code"] for call in mock.requests()][-1] == 1000 and len(mock.requests()) == 3
