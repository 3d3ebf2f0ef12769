"""The local mirror, driven over HTTP against a real server process on loopback."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import jwt
import numpy as np
import pytest
from Crypto.Cipher import AES  # pycryptodome: an AES independent of the server's
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from compositor import RenderOptions, SourcePolicy, render
from tests.conftest import FIXTURES, IMAGES, serving

SUBMIT = "/api/open/v3/content/image/bg/replace"
INFO = "/api/open/v3/content/image/infobymodelid"
TOKEN = "/api/open/v3/getToken"
SECRET = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-0032"  # 32 bytes: an AES-256 key
# What a wait for something that takes a second or so may take on a loaded 2-core machine before it fails.
START_DEADLINE_S = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    base: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    argv: list[str]
    log: Path

    def kill_hard(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill_hard()


def start_server(
    data_dir: Path, config: str, *extra: str, port: int | None = None, env: dict[str, str] | None = None
) -> Server:
    """`compositor serve` on `port` (a free one if None), returned once it answers. The server takes no port 0,
    so a free port is probed for and may be taken by another process before the server binds it: then (and
    only for a port chosen here) it is started again on another."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "mirror.toml").write_text(config)
    for _ in range(5):
        chosen = port or free_port()
        argv = [sys.executable, "-m", "compositor.cli", "serve", "--port", str(chosen), "--data-dir", str(data_dir)]
        argv += ["--workers", "2", "--config", str(data_dir / "mirror.toml"), "--allow-file-root", str(FIXTURES)]
        argv += list(extra)
        log = data_dir / f"server-{chosen}-{time.monotonic_ns()}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
            )
        base = f"http://127.0.0.1:{chosen}"
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                said = log.read_text()
                if port is None and "cannot listen on" in said:
                    break  # the probed port was taken meanwhile: another one
                raise RuntimeError(f"server exited ({process.returncode}): {said[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/openapi.json", timeout=5).status_code == 200:
                    return Server(base, data_dir, process, argv, log)
            time.sleep(0.2)
        else:
            Server(base, data_dir, process, argv, log).kill_hard()
            raise RuntimeError(f"server did not answer within {START_DEADLINE_S:.0f} s: {log.read_text()[-2000:]}")
    raise RuntimeError("server: every probed port was taken before it could bind it")


def run_serve_on_a_free_port(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`argv` (a `serve` that is expected to stop by itself) with `--port` and a free port added; run again on
    another if the probed one was taken by another process before the server could bind it."""
    for _ in range(5):
        done = subprocess.run([*argv, "--port", str(free_port())], capture_output=True, text=True, timeout=timeout)
        if "cannot listen on" not in done.stderr:
            return done
    raise AssertionError(f"every probed port was taken before the server bound it: {done.stderr}")


def start_development_server(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """`compositor serve` with no client configured (development mode, as `make
    serve` starts it), its output piped; returned once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "compositor.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/openapi.json", timeout=5).status_code == 200:
                return process, base
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    said = process.communicate(timeout=60)[0][-2000:]
    raise RuntimeError(f"the development server did not answer within {START_DEADLINE_S:.0f} s: {said}")


CONFIG = f"""
expiry_interval_s = 0.5
webhook_first_delay_s = 0.2
webhook_attempts = 6

[[client]]
id = "alpha"
secret = "{SECRET}"

[[client]]
id = "banned"
secret = "{"b" * 32}"
banned = true

[[client]]
id = "metered"
secret = "{"q" * 16}"
quota = 8

[[client]]
id = "hasty"
secret = "{"r" * 24}"
rate_limit_per_minute = 3
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("mirror"), CONFIG)
    yield running
    running.stop()


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "canvas_size": "320x240",
        "color_code": "#203040",
        "template_url": (IMAGES / "template.jpg").as_uri(),
        "modify_template_size": "200x220",
        "overlay_template_x": 140,
        "overlay_template_y": -10,
        "origin_img": (IMAGES / "foreground.png").as_uri(),
        "modify_origin_img_size": "160x200",
        "overlay_origin_x": -20,
        "overlay_origin_y": 30,
    }
    base.update(overrides)
    return base


def call(server: Server, method: str, path: str, key: str | None = SECRET, **kwargs: Any) -> dict[str, Any]:
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["x-api-key"] = key
    response = httpx.request(method, server.base + path, headers=headers, timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for(server: Server, job_id: str, statuses: tuple[int, ...] = (3, 4), timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    answer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = call(server, "GET", INFO, params={"image_model_id": job_id})
        if answer["code"] == 1000 and answer["data"]["image_status"] in statuses:
            return dict(answer["data"])
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout:.0f} s for job {job_id} to reach a status in {statuses}; last: {answer}")


def wait_until(condition: Any, what: str, timeout: float = 90) -> None:
    """Polls `condition` until it holds; fails naming `what` after `timeout` seconds (generous: for an event
    that takes about a second on an idle machine)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.1)


# --- auth -------------------------------------------------------------------


def test_no_credentials_is_1102(server: Server) -> None:
    assert call(server, "POST", SUBMIT, key=None, json=body())["code"] == 1102


def test_an_unknown_api_key_is_1101(server: Server) -> None:
    assert call(server, "POST", SUBMIT, key="x" * 32, json=body())["code"] == 1101


def test_get_token_gives_a_bearer_token_that_works(server: Server) -> None:
    answer = call(server, "POST", TOKEN, key=None, json={"clientId": "alpha", "clientSecret": SECRET})
    assert answer["code"] == 1000
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] > 365 * 24 * 3600
    headers = {"authorization": f"Bearer {answer['token']}"}
    assert call(server, "POST", SUBMIT, key=None, headers=headers, json=body())["code"] == 1000


def test_get_token_with_a_wrong_secret_is_1101(server: Server) -> None:
    assert call(server, "POST", TOKEN, key=None, json={"clientId": "alpha", "clientSecret": "no"})["code"] == 1101


def test_bearer_wins_over_the_api_key(server: Server) -> None:
    token = call(server, "POST", TOKEN, key=None, json={"clientId": "alpha", "clientSecret": SECRET})["token"]
    good_token = {"authorization": f"Bearer {token}"}
    assert call(server, "POST", SUBMIT, key="wrong", headers=good_token, json=body())["code"] == 1000
    bad_token = {"authorization": "Bearer not-a-token"}
    assert call(server, "POST", SUBMIT, key=SECRET, headers=bad_token, json=body())["code"] == 1101


def test_an_expired_token_is_1101(server: Server) -> None:
    key = (server.data_dir / "signing.key").read_bytes()
    expired = jwt.encode({"clientId": "alpha", "iat": 1, "exp": 2}, key, algorithm="HS256")
    answer = call(server, "POST", SUBMIT, key=None, headers={"authorization": f"Bearer {expired}"}, json=body())
    assert answer["code"] == 1101 and "expired" in answer["msg"]


def test_a_banned_account_is_1200(server: Server) -> None:
    assert call(server, "POST", SUBMIT, key="b" * 32, json=body())["code"] == 1200


def test_the_rate_limit_is_1005(server: Server) -> None:
    codes = [call(server, "POST", SUBMIT, key="r" * 24, json=body())["code"] for _ in range(4)]
    assert codes == [1000, 1000, 1000, 1005]


def test_the_quota_is_1006_once_spent(server: Server) -> None:
    codes = [call(server, "POST", SUBMIT, key="q" * 16, json=body())["code"] for _ in range(3)]
    assert codes == [1000, 1000, 1006]


# --- bodies and jobs ----------------------------------------------------------


def test_a_bad_body_is_1003_naming_the_field(server: Server) -> None:
    answer = call(server, "POST", SUBMIT, json=body(canvas_size="big"))
    assert answer["code"] == 1003 and answer["msg"].startswith("canvas_size")
    assert answer["data"]["errors"][0]["field"] == "canvas_size"


def test_a_body_that_is_not_json_is_1003(server: Server) -> None:
    answer = call(server, "POST", SUBMIT, content=b"{nope", headers={"content-type": "application/json"})
    assert answer["code"] == 1003 and answer["msg"].startswith("body")


def test_a_job_goes_from_queued_to_a_result_equal_to_the_engines(server: Server) -> None:
    answer = call(server, "POST", SUBMIT, json=body())
    record = answer["data"]
    assert answer["code"] == 1000 and record["image_status"] == 1
    assert len(record["_id"]) == 24 and int(record["_id"], 16) >= 0
    assert record["deduction_credit"] == 4 and record["type"] == 3 and record["__v"] == 0
    for name in ("image_id", "create_time", "uid", "buttons", "used_buttons", "upscaled_urls", "error_reasons"):
        assert name in record
    done = wait_for(server, record["_id"])
    assert done["image_status"] == 3 and done["image"] == done["external_img"]
    picture = Image.open(__import__("io").BytesIO(httpx.get(done["image"], timeout=30).content))
    expected = render(body(), options=RenderOptions(sources=SourcePolicy()))
    assert np.array_equal(np.asarray(picture), np.asarray(expected))


def test_an_unreachable_source_fails_the_job_with_a_reason(server: Server) -> None:
    job = call(server, "POST", SUBMIT, json=body(origin_img=f"http://127.0.0.1:{free_port()}/gone.png"))["data"]
    done = wait_for(server, job["_id"])
    assert done["image_status"] == 4
    assert "origin_img" in done["error_reasons"][0] and "could not be fetched" in done["error_reasons"][0]


def test_a_file_outside_the_allowed_roots_fails_the_job(server: Server, tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "private.png")
    job = call(server, "POST", SUBMIT, json=body(origin_img=(tmp_path / "private.png").as_uri()))["data"]
    assert "outside the directories" in wait_for(server, job["_id"])["error_reasons"][0]


def test_another_clients_job_cannot_be_read(server: Server) -> None:
    job = call(server, "POST", SUBMIT, json=body())["data"]
    answer = call(server, "GET", INFO, key="r" * 24, params={"image_model_id": job["_id"]})
    assert answer["code"] in (1003, 1005)


def test_fifty_jobs_from_ten_threads_all_complete_once(server: Server) -> None:
    small = body(canvas_size="96x96", modify_template_size="60x60", modify_origin_img_size="50x60")

    def submit(_: int) -> str:
        return str(call(server, "POST", SUBMIT, json=small)["data"]["_id"])

    with ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(submit, range(50)))
    assert len(set(ids)) == 50
    finished = [wait_for(server, job_id, timeout=120) for job_id in ids]
    assert all(job["image_status"] == 3 for job in finished)
    assert len({job["image"] for job in finished}) == 50


def test_the_openapi_schema_lists_the_mirrored_endpoints(server: Server) -> None:
    paths = httpx.get(server.base + "/openapi.json").json()["paths"]
    assert {SUBMIT, INFO, TOKEN} <= set(paths)
    assert httpx.get(server.base + "/docs").status_code == 200


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(payload=json_values | st.fixed_dictionaries({}, optional={k: json_values for k in body()}))
def test_random_bodies_never_get_a_server_error(server: Server, payload: object) -> None:
    response = httpx.post(server.base + SUBMIT, headers={"x-api-key": SECRET}, json=payload, timeout=60)
    assert response.status_code == 200
    assert response.json()["code"] in (1000, 1003)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(payload=json_values)
def test_random_token_requests_never_get_a_server_error(server: Server, payload: object) -> None:
    response = httpx.post(server.base + TOKEN, json=payload, timeout=60)
    assert response.status_code == 200 and response.json()["code"] in (1003, 1101)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(job_id=st.text(max_size=40), key=st.sampled_from([SECRET, "", "x" * 32]), bearer=st.text(max_size=30))
def test_random_polls_and_headers_never_get_a_server_error(server: Server, job_id: str, key: str, bearer: str) -> None:
    headers = {"x-api-key": key} if key else {}
    if bearer.isascii() and bearer.isprintable() and bearer.strip():
        headers["authorization"] = f"Bearer {bearer.strip()}"
    response = httpx.get(server.base + INFO, params={"image_model_id": job_id}, headers=headers, timeout=60)
    assert response.status_code == 200
    assert response.json()["code"] in (1003, 1101, 1102)


# --- webhooks ------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    payloads: list[dict[str, Any]] = field(default_factory=list)
    failures_left: int = 0


class _Hook(http.server.BaseHTTPRequestHandler):
    receiver: ClassVar[Receiver]

    def do_POST(self) -> None:
        data = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.receiver.failures_left > 0:
            self.receiver.failures_left -= 1
            self.send_response(503)
        else:
            self.receiver.payloads.append(data)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving(_Hook) as base:
        _Hook.receiver = Receiver(f"{base}/hook")
        yield _Hook.receiver


def decrypt(data_encrypt: str, client_id: str, secret: str) -> dict[str, Any]:
    iv = client_id.encode()[:16].ljust(16, b"\0")
    plain = AES.new(secret.encode(), AES.MODE_CBC, iv).decrypt(base64.b64decode(data_encrypt))
    return dict(json.loads(plain[: -plain[-1]]))


def test_webhooks_are_signed_and_encrypted_as_documented(server: Server, receiver: Receiver) -> None:
    job = call(server, "POST", SUBMIT, json=body(webhookUrl=receiver.url))["data"]
    done = wait_for(server, job["_id"])
    wait_until(lambda: len(receiver.payloads) >= 2, "the job's two webhooks (status 2 and 3)")
    messages = []
    for payload in receiver.payloads:
        parts = sorted(["alpha", str(payload["timestamp"]), payload["nonce"], payload["dataEncrypt"]])
        assert payload["signature"] == hashlib.sha1("".join(parts).encode()).hexdigest()
        messages.append(decrypt(payload["dataEncrypt"], "alpha", SECRET))
    assert [m["status"] for m in messages] == [2, 3]
    assert all(m["_id"] == job["_id"] and m["type"] == "background change" for m in messages)
    assert messages[-1]["url"] == done["image"]


def test_a_receiver_that_is_down_gets_the_webhook_once_it_is_up(server: Server, receiver: Receiver) -> None:
    receiver.failures_left = 3
    job = call(server, "POST", SUBMIT, json=body(webhookUrl=receiver.url))["data"]
    wait_for(server, job["_id"])
    wait_until(lambda: len(receiver.payloads) >= 2, "the job's two webhooks, past the receiver's three 503s")
    statuses = [decrypt(p["dataEncrypt"], "alpha", SECRET)["status"] for p in receiver.payloads]
    assert sorted(statuses) == [2, 3] and receiver.failures_left == 0


# --- durability -------------------------------------------------------------------


class _Slow(http.server.BaseHTTPRequestHandler):
    calls: ClassVar[int] = 0
    fetching: ClassVar[threading.Event] = threading.Event()  # the first fetch has arrived
    release: ClassVar[threading.Event] = threading.Event()  # the first fetch may be answered

    def do_GET(self) -> None:
        type(self).calls += 1
        if type(self).calls == 1:
            type(self).fetching.set()
            type(self).release.wait(300)  # the first render is still fetching when the server is killed
        data = (IMAGES / "foreground.png").read_bytes()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_a_job_interrupted_by_kill_9_completes_after_a_restart(tmp_path: Path) -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    first = start_server(tmp_path / "data", CONFIG)
    try:
        source = f"http://127.0.0.1:{httpd.server_address[1]}/slow.png"
        job = call(first, "POST", SUBMIT, json=body(origin_img=source))["data"]
        assert _Slow.fetching.wait(120), "waited 120 s for the first render to fetch its source"
        first.kill_hard()
        second = start_server(tmp_path / "data", CONFIG, port=int(first.base.rsplit(":", 1)[1]))
        try:
            done = wait_for(second, job["_id"])
            assert done["image_status"] == 3
            assert httpx.get(done["image"]).status_code == 200
        finally:
            second.stop()
    finally:
        first.stop()
        _Slow.release.set()
        httpd.shutdown()


def test_results_expire_after_their_time_to_live(tmp_path: Path) -> None:
    # 2 s: time enough, on a loaded machine, for a poll to see the result before it expires.
    short = start_server(tmp_path / "data", CONFIG, "--result-ttl", "2")
    try:
        job = call(short, "POST", SUBMIT, json=body())["data"]
        done = wait_for(short, job["_id"])
        result = done["image"]

        def expired() -> bool:
            return bool(call(short, "GET", INFO, params={"image_model_id": job["_id"]})["data"].get("expired"))

        wait_until(expired, "the result (time to live 2 s) to expire")
        record = call(short, "GET", INFO, params={"image_model_id": job["_id"]})["data"]
        assert record.get("expired") is True and record["image"] == ""
        assert httpx.get(result).status_code == 404
        assert list((tmp_path / "data" / "results").glob("*.png")) == []
    finally:
        short.stop()


def test_remove_bg_without_a_model_fails_the_job_naming_the_fix(tmp_path: Path) -> None:
    empty_home = tmp_path / "no-models"
    empty_home.mkdir()
    bare = start_server(tmp_path / "data", CONFIG, env={"COMPOSITOR_MODEL_HOME": str(empty_home)})
    try:
        job = call(bare, "POST", SUBMIT, json=body(removeBg=True))["data"]
        done = wait_for(bare, job["_id"])
        assert done["image_status"] == 4
        assert "compositor models fetch u2netp" in done["error_reasons"][0]
    finally:
        bare.stop()


def test_the_submit_command_renders_through_the_mirror(server: Server, tmp_path: Path) -> None:
    request = tmp_path / "body.json"
    request.write_text(json.dumps(body(template_url=str(IMAGES / "template.jpg"), origin_img="fg.png")))
    (tmp_path / "fg.png").write_bytes((IMAGES / "foreground.png").read_bytes())
    out = tmp_path / "out.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "compositor.cli",
            "submit",
            str(request),
            "--base-url",
            server.base,
            "--api-key",
            SECRET,
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    local = render(json.loads(request.read_text()), options=RenderOptions(sources=SourcePolicy(base_dir=tmp_path)))
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(local))
