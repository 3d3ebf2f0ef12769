"""The test controls (SPEC: Test controls), each exercised twice: through a
real server (the plugin's `bg_mirror` fixture) and through the in-process
mock (`mock_background_change`), with the same calls made with `requests`,
the library of the docs' own sample."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from PIL import Image

from compositor.client import MirrorControl, MirrorControlError
from tests.test_mirror import Receiver, decrypt, receiver  # noqa: F401  (receiver is a fixture)

MOCK_KEY = "mock-key-0123456789abcdef-012345"  # 32 bytes: the mock uses it as the webhook secret
SUBMIT = "/api/open/v3/content/image/bg/replace"
INFO = "/api/open/v3/content/image/infobymodelid"
TOKEN = "/api/open/v3/getToken"


def _png_data_uri(color: tuple[int, int, int, int], size: tuple[int, int] = (24, 16)) -> str:
    buffer = io.BytesIO()
    Image.new("RGBA", size, color).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


FOREGROUND = _png_data_uri((200, 40, 40, 255))


def body(**overrides: Any) -> dict[str, Any]:
    return {
        "canvas_size": "64x48",
        "color_code": "#102030",
        "origin_img": FOREGROUND,
        "modify_origin_img_size": "32x20",
        "overlay_origin_x": 8,
        "overlay_origin_y": 10,
        **overrides,
    }


@dataclass
class Upstream:
    """One way to reach the mirror: its API's base URL, a key, and its controls."""

    kind: str
    base: str
    key: str
    client_id: str
    secret: str  # the webhook secret of that client
    control: MirrorControl

    def call(self, method: str, path: str, *, key: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"x-api-key": key or self.key, **kwargs.pop("headers", {})}
        return requests.request(method, self.base + path, headers=headers, timeout=30, **kwargs)

    def submit(self, **overrides: Any) -> dict[str, Any]:
        answer = self.call("POST", SUBMIT, json=body(**overrides)).json()
        assert answer["code"] == 1000, answer
        return dict(answer["data"])

    def poll(self, job_id: str) -> dict[str, Any]:
        answer = self.call("GET", INFO, params={"image_model_id": job_id}).json()
        assert answer["code"] == 1000, answer
        return dict(answer["data"])

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.poll(job_id)
            if job["image_status"] in (3, 4):
                return job
            time.sleep(0.05)
        raise AssertionError(f"waited {timeout:.0f} s for job {job_id} to end (status 3 or 4)")


@pytest.fixture(params=["server", "mock"])
def upstream(request: pytest.FixtureRequest) -> Upstream:
    if request.param == "server":
        mirror = request.getfixturevalue("bg_mirror")
        return Upstream("server", mirror.base_url, mirror.api_key, mirror.client_id, mirror.client_secret, mirror)
    mock = request.getfixturevalue("mock_background_change")
    client_id = mock.client_id_for(MOCK_KEY)
    return Upstream("mock", "https://openapi.akool.com", MOCK_KEY, client_id, MOCK_KEY, mock)


def wait_until(check: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


# --- fault rules ---------------------------------------------------------------


@pytest.mark.parametrize("code", [1003, 1005, 1006, 1101, 1102, 1200])
def test_a_code_fault_answers_the_envelope_and_creates_no_job(upstream: Upstream, code: int) -> None:
    rule = upstream.control.add_fault(operation="replace", code=code)
    response = upstream.call("POST", SUBMIT, json=body())
    assert response.status_code == 200
    assert response.json()["code"] == code and response.json()["msg"]
    assert upstream.control.jobs() == []
    assert upstream.control.faults()[0]["hits"] == 1 and rule["id"]


def test_a_refused_submit_spends_no_credit(upstream: Upstream) -> None:
    upstream.control.add_fault(operation="replace", code=1006, times=3)
    for _ in range(3):
        assert upstream.call("POST", SUBMIT, json=body()).json()["code"] == 1006
    job = upstream.submit()
    assert [j["_id"] for j in upstream.control.jobs()] == [job["_id"]]


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_an_http_status_fault_answers_that_status(upstream: Upstream, status: int) -> None:
    upstream.control.add_fault(operation="info", http_status=status)
    response = upstream.call("GET", INFO, params={"image_model_id": "x"})
    assert response.status_code == status
    assert response.json()["fault"]


def test_a_drop_fault_closes_the_connection_with_no_answer(upstream: Upstream) -> None:
    upstream.control.add_fault(operation="replace", drop=True, times=1)
    with pytest.raises(requests.ConnectionError):
        upstream.call("POST", SUBMIT, json=body())
    assert upstream.control.jobs() == []
    upstream.submit()  # the rule is spent: the next call is answered


def test_a_drop_fault_is_a_dropped_connection_for_httpx_too(upstream: Upstream) -> None:
    import httpx

    upstream.control.add_fault(operation="info", drop=True)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(upstream.base + INFO, params={"image_model_id": "x"}, headers={"x-api-key": upstream.key})


def test_latency_alone_slows_the_call_and_it_still_succeeds(upstream: Upstream) -> None:
    upstream.control.add_fault(operation="replace", latency_ms=400)
    started = time.monotonic()
    upstream.submit()
    assert time.monotonic() - started >= 0.4


def test_a_rule_for_one_client_leaves_the_others_alone(upstream: Upstream) -> None:
    upstream.control.add_fault(client_id="someone-else", code=1200)
    upstream.submit()
    upstream.control.add_fault(client_id=upstream.client_id, code=1200)
    assert upstream.call("POST", SUBMIT, json=body()).json()["code"] == 1200


def test_get_token_faults_match_the_client_id_in_the_body(upstream: Upstream) -> None:
    upstream.control.add_fault(operation="getToken", client_id=upstream.client_id, code=1101)
    answer = upstream.call("POST", TOKEN, json={"clientId": upstream.client_id, "clientSecret": upstream.secret})
    assert answer.json()["code"] == 1101


def test_a_seeded_probability_repeats_its_sequence(upstream: Upstream) -> None:
    def run() -> list[int]:
        upstream.control.clear_faults()
        upstream.control.add_fault(operation="info", code=1005, probability=0.5, seed=7)
        return [upstream.call("GET", INFO, params={"image_model_id": "x"}).json()["code"] for _ in range(24)]

    first, second = run(), run()
    assert first == second
    assert set(first) == {1005, 1003}  # both drawn: some calls faulted, the rest answered (no such job)


def test_rules_apply_in_the_order_added_and_times_spends_them(upstream: Upstream) -> None:
    upstream.control.add_fault(operation="replace", code=1005, times=2)
    upstream.control.add_fault(operation="replace", code=1006)
    codes = [upstream.call("POST", SUBMIT, json=body()).json()["code"] for _ in range(4)]
    assert codes == [1005, 1005, 1006, 1006]
    assert [rule["hits"] for rule in upstream.control.faults()] == [2, 2]


def test_a_rule_can_be_removed_alone_or_with_all_the_others(upstream: Upstream) -> None:
    first = upstream.control.add_fault(operation="info", code=1005)
    upstream.control.add_fault(operation="replace", code=1005)
    upstream.control.remove_fault(first["id"])
    assert [rule["operation"] for rule in upstream.control.faults()] == ["replace"]
    upstream.control.clear_faults()
    assert upstream.control.faults() == []
    with pytest.raises(MirrorControlError) as refused:
        upstream.control.remove_fault(first["id"])
    assert refused.value.status == 404


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"operation": "upload", "code": 1005}, "operation"),
        ({"code": 1005, "probability": 2}, "probability"),
        ({"code": 1234}, "code"),
        ({"code": 1005, "drop": True}, "drop"),
        ({"http_status": 418}, "http_status"),
        ({"operation": "webhook", "code": 1005}, "code"),
        ({"operation": "replace", "tamper": True}, "tamper"),
        ({"code": 1005, "times": 0}, "times"),
        ({"code": 1005, "latency_ms": -1}, "latency_ms"),
        ({"code": 1005, "colour": "red"}, "colour"),
        ({}, "code"),
    ],
)
def test_bad_control_input_is_400_naming_the_field_and_changes_nothing(
    upstream: Upstream, rule: dict[str, Any], field: str
) -> None:
    upstream.control.add_fault(operation="info", code=1005)
    before = upstream.control.faults()
    with pytest.raises(MirrorControlError) as refused:
        upstream.control.add_fault(**rule)
    assert refused.value.status == 400 and refused.value.field == field, refused.value
    assert field in str(refused.value)
    assert upstream.control.faults() == before


def test_a_bad_job_policy_is_400_naming_the_field(upstream: Upstream) -> None:
    with pytest.raises(MirrorControlError) as refused:
        upstream.control.set_job_policy(queueing_polls=-1)
    assert refused.value.status == 400 and refused.value.field == "queueing_polls"
    job = upstream.submit()
    assert upstream.wait(job["_id"])["image_status"] == 3  # the default policy still holds


# --- job policies and failing a job ----------------------------------------------


def test_a_job_policy_holds_jobs_in_queueing_then_processing(upstream: Upstream) -> None:
    upstream.control.set_job_policy(queueing_polls=2, processing_polls=2)
    job = upstream.submit()
    assert [upstream.poll(job["_id"])["image_status"] for _ in range(4)] == [1, 1, 2, 2]
    done = upstream.wait(job["_id"])
    assert done["image_status"] == 3 and done["image"]


def test_a_job_policy_can_fail_jobs_with_a_reason(upstream: Upstream) -> None:
    upstream.control.set_job_policy(queueing_polls=1, fail="the GPU caught fire")
    job = upstream.submit()
    assert upstream.poll(job["_id"])["image_status"] == 1
    failed = upstream.poll(job["_id"])
    assert failed["image_status"] == 4 and failed["error_reasons"] == ["the GPU caught fire"]


def test_a_failing_policy_with_no_polls_fails_without_waiting_for_one(upstream: Upstream) -> None:
    upstream.control.set_job_policy(fail="no capacity")
    job = upstream.submit()
    done = upstream.wait(job["_id"])
    assert done["image_status"] == 4 and done["error_reasons"] == ["no capacity"]


def test_a_job_policy_with_times_applies_to_that_many_jobs(upstream: Upstream) -> None:
    upstream.control.set_job_policy(fail="refused", times=2)
    jobs = [upstream.submit() for _ in range(3)]
    ends = [upstream.wait(job["_id"])["image_status"] for job in jobs]
    assert ends == [4, 4, 3]


def test_an_empty_policy_restores_the_default(upstream: Upstream) -> None:
    upstream.control.set_job_policy(queueing_polls=50)
    upstream.control.set_job_policy()
    job = upstream.submit()
    assert upstream.wait(job["_id"])["image_status"] == 3


def test_failing_a_job_by_hand_ends_it_with_the_reason_and_its_webhook(upstream: Upstream, receiver: Receiver) -> None:  # noqa: F811
    upstream.control.set_job_policy(queueing_polls=100)
    job = upstream.submit(webhookUrl=receiver.url)
    upstream.control.fail_job(job["_id"], "cancelled by the test")
    failed = upstream.poll(job["_id"])
    assert failed["image_status"] == 4 and failed["error_reasons"] == ["cancelled by the test"]
    wait_until(lambda: receiver.payloads, "the failed job's webhook")
    message = decrypt(receiver.payloads[-1]["dataEncrypt"], upstream.client_id, upstream.secret)
    assert message == {"_id": job["_id"], "status": 4, "type": "background change"}
    with pytest.raises(MirrorControlError) as finished:
        upstream.control.fail_job(job["_id"], "again")
    assert finished.value.status == 409
    with pytest.raises(MirrorControlError) as unknown:
        upstream.control.fail_job("0" * 24, "no such job")
    assert unknown.value.status == 404


def test_the_job_list_shows_each_jobs_state(upstream: Upstream) -> None:
    done = upstream.submit()
    upstream.wait(done["_id"])
    upstream.control.set_job_policy(queueing_polls=5)
    held = upstream.submit()
    listed = {job["_id"]: job for job in upstream.control.jobs()}
    assert listed[done["_id"]]["image_status"] == 3 and listed[held["_id"]]["image_status"] == 1
    assert set(listed[held["_id"]]) == {"_id", "client_id", "image_status", "create_time", "error_reasons"}
    assert listed[held["_id"]]["client_id"] == upstream.client_id


# --- the journal -----------------------------------------------------------------


def test_the_journal_lists_api_calls_with_their_outcome_and_fault(upstream: Upstream) -> None:
    rule = upstream.control.add_fault(operation="info", code=1005, times=1)
    job = upstream.submit()
    assert upstream.call("GET", INFO, params={"image_model_id": job["_id"]}).json()["code"] == 1005
    upstream.wait(job["_id"])
    journal = upstream.control.requests()
    assert journal[0]["operation"] == "replace" and journal[0]["code"] == 1000 and journal[0]["http_status"] == 200
    assert journal[1]["operation"] == "info" and journal[1]["code"] == 1005 and journal[1]["fault"] == rule["id"]
    assert all(entry["client_id"] == upstream.client_id for entry in journal)
    assert set(journal[0]) == {
        "time",
        "method",
        "path",
        "operation",
        "client_id",
        "http_status",
        "code",
        "latency_ms",
        "fault",
    }


def test_the_journal_never_holds_a_key_a_token_or_a_secret(upstream: Upstream) -> None:
    token_answer = upstream.call("POST", TOKEN, json={"clientId": upstream.client_id, "clientSecret": upstream.secret})
    token = token_answer.json()["token"]
    requests.post(upstream.base + SUBMIT, json=body(), headers={"authorization": f"Bearer {token}"}, timeout=30)
    upstream.call("GET", INFO, params={"image_model_id": upstream.key})  # a key even in the query
    upstream.call("POST", SUBMIT, json=body(), key="wrong-" + upstream.key)
    text = json.dumps(upstream.control.requests())
    assert len(upstream.control.requests()) == 4
    for secret in (upstream.key, upstream.secret, token, token.split(".")[2]):
        assert secret not in text


def test_the_journal_keeps_the_last_1000_calls(mock_background_change: Any) -> None:
    # One journal serves the server and the mock: 1,001 calls are quicker in-process.
    for index in range(1001):
        requests.get(f"https://openapi.akool.com{INFO}?image_model_id={index}", headers={"x-api-key": MOCK_KEY})
    journal = mock_background_change.requests()
    assert len(journal) == 1000 and journal[0]["code"] == 1003


# --- webhooks --------------------------------------------------------------------


def _verifies(payload: dict[str, Any], client_id: str) -> bool:
    parts = sorted([client_id, str(payload["timestamp"]), payload["nonce"], payload["dataEncrypt"]])
    return bool(payload["signature"] == hashlib.sha1("".join(parts).encode()).hexdigest())


def test_webhook_deliveries_are_listed(upstream: Upstream, receiver: Receiver) -> None:  # noqa: F811
    job = upstream.submit(webhookUrl=receiver.url)
    upstream.wait(job["_id"])
    wait_until(lambda: sum(d["delivered"] for d in upstream.control.webhooks()) == 2, "both webhooks delivered")
    deliveries = upstream.control.webhooks()
    assert [d["status"] for d in deliveries] == [2, 3]
    assert all(d["job_id"] == job["_id"] and d["url"] == receiver.url and d["attempts"] == 1 for d in deliveries)
    assert all(d["last_http_status"] == 200 and d["last_error"] is None for d in deliveries)


def test_a_dropped_webhook_is_not_delivered(upstream: Upstream, receiver: Receiver) -> None:  # noqa: F811
    rule = upstream.control.add_fault(operation="webhook", drop=True)
    job = upstream.submit(webhookUrl=receiver.url)
    upstream.wait(job["_id"])
    # A job's notices go in order: its status 3 waits behind the status 2 that keeps being dropped.
    wait_until(lambda: upstream.control.webhooks()[0]["attempts"] >= 2, "a second attempt at the dropped webhook")
    deliveries = upstream.control.webhooks()
    assert not any(d["delivered"] for d in deliveries)
    assert rule["id"] in deliveries[0]["last_error"]
    assert receiver.payloads == []


def test_a_dropped_webhook_with_times_is_delivered_on_its_retry(upstream: Upstream, receiver: Receiver) -> None:  # noqa: F811
    upstream.control.add_fault(operation="webhook", drop=True, times=1)
    job = upstream.submit(webhookUrl=receiver.url)
    upstream.wait(job["_id"])
    wait_until(lambda: len(receiver.payloads) == 2, "both webhooks, the dropped one on its retry")
    # The receiver has them before the mirror has recorded its answer to the last one: wait for that too.
    wait_until(lambda: all(d["delivered"] for d in upstream.control.webhooks()), "both deliveries recorded")
    assert sorted(d["attempts"] for d in upstream.control.webhooks()) == [1, 2]


def test_a_tampered_webhook_carries_a_signature_that_does_not_verify(upstream: Upstream, receiver: Receiver) -> None:  # noqa: F811
    upstream.control.add_fault(operation="webhook", tamper=True, times=1)
    job = upstream.submit(webhookUrl=receiver.url)
    upstream.wait(job["_id"])
    wait_until(lambda: len(receiver.payloads) == 2, "both webhooks, the tampered one and the next")
    checks = [_verifies(payload, upstream.client_id) for payload in receiver.payloads]
    assert checks == [False, True]


def test_a_delayed_webhook_arrives_late(upstream: Upstream, receiver: Receiver) -> None:  # noqa: F811
    upstream.control.add_fault(operation="webhook", latency_ms=1500, times=1)
    started = time.monotonic()
    job = upstream.submit(webhookUrl=receiver.url)
    upstream.wait(job["_id"])
    wait_until(lambda: receiver.payloads, "the delayed webhook")
    assert time.monotonic() - started >= 1.5


# --- reset -----------------------------------------------------------------------


def test_reset_forgets_everything_but_the_clients(upstream: Upstream) -> None:
    job = upstream.wait(upstream.submit()["_id"])
    upstream.control.add_fault(operation="info", latency_ms=1)
    upstream.control.set_job_policy(queueing_polls=3)
    upstream.control.reset()
    assert upstream.control.jobs() == []
    assert upstream.control.faults() == []
    assert upstream.control.requests() == []
    assert upstream.control.webhooks() == []
    assert requests.get(job["image"], timeout=30).status_code == 404
    fresh = upstream.submit()  # the key still works, and the default policy is back
    assert upstream.wait(fresh["_id"])["image_status"] == 3


# --- found by trying to break it ---------------------------------------------------


def test_reset_cancels_a_webhook_waiting_on_its_latency(upstream: Upstream, receiver: Receiver) -> None:  # noqa: F811
    # 4 s: a loaded machine must still reach the reset while the first delivery waits on its latency.
    latency_s = 4.0
    submitted = time.monotonic()
    upstream.control.add_fault(operation="webhook", latency_ms=int(latency_s * 1000))
    job = upstream.submit(webhookUrl=receiver.url)
    upstream.wait(job["_id"])
    upstream.control.reset()
    assert time.monotonic() - submitted < latency_s, "the reset came too late to show anything"
    time.sleep(max(0.0, submitted + latency_s + 1.0 - time.monotonic()))  # past when it would have gone out
    assert receiver.payloads == []


def test_a_secret_sent_as_the_client_id_is_not_journaled(bg_mirror: Any) -> None:
    # (The mock takes any id as a new client's, so there a swapped pair is a client of its own.)
    swapped = {"clientId": bg_mirror.client_secret, "clientSecret": bg_mirror.client_id}
    assert requests.post(bg_mirror.base_url + TOKEN, json=swapped, timeout=30).json()["code"] == 1101
    assert bg_mirror.client_secret not in json.dumps(bg_mirror.requests())


def test_a_non_ascii_secret_is_1101_not_a_server_error(upstream: Upstream) -> None:
    upstream.call("GET", INFO, params={"image_model_id": "x"})  # the mock knows a key's client once it has called
    answer = upstream.call("POST", TOKEN, json={"clientId": upstream.client_id, "clientSecret": "é" * 8})
    assert answer.status_code == 200 and answer.json()["code"] == 1101


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c._call("POST", "/jobs/abc/fail", {"reason": "x", "z": 1}), "z"),
        (lambda c: c.add_fault(code=1005, latency_ms=float("nan")), "latency_ms"),
        (lambda c: c.add_fault(code=1005, probability=float("inf")), "probability"),
    ],
)
def test_more_bad_control_input_names_its_field(upstream: Upstream, call: Any, field: str) -> None:
    with pytest.raises(MirrorControlError) as refused:
        call(upstream.control)
    assert refused.value.status == 400 and refused.value.field == field


def test_an_id_with_a_slash_cannot_reach_another_control(upstream: Upstream) -> None:
    upstream.control.add_fault(operation="info", code=1005)
    with pytest.raises(MirrorControlError) as refused:
        upstream.control.remove_fault("../faults")
    assert refused.value.status == 404
    assert len(upstream.control.faults()) == 1


def test_the_range_of_times_is_said_in_whole_numbers(upstream: Upstream) -> None:
    with pytest.raises(MirrorControlError, match="from 1 to 2147483648"):
        upstream.control.add_fault(code=1005, times=0)


@pytest.mark.parametrize("content", [b"", b"null", b"[1]"])
def test_a_fault_rule_must_be_a_json_object(upstream: Upstream, content: bytes) -> None:
    http = upstream.control._http
    answer = http.request(
        "POST",
        upstream.control.base_url + "/_mirror/faults",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 400 and answer.json()["field"] == "body"
