"""One rule for text at the door (`compositor/text.py`): every string that
enters is valid Unicode or is refused where it enters, with the API's code
(1003 naming the field), a 400 naming the field on the control plane, or a
one-line start-up error. Nothing that cannot be encoded reaches the store, a
log line or an answer, so no call answers a 5xx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compositor import text
from compositor.mirror import config
from compositor.mirror.controls import ControlInputError, load_scenario
from tests.inprocess import INFO, KEY, SECRET, SUBMIT, TOKEN, body, credits_used, in_process_mirror

JSON = {"content-type": "application/json"}
LONE = "\udc80"


def post(client, path: str, payload: object, headers: dict[str, str] | None = None):
    return client.request("POST", path, content=json.dumps(payload), headers={**JSON, **(headers or {})})


def test_the_walk_names_the_first_bad_key_or_value() -> None:
    assert text.unencodable_field({"a": [1, {"b": "ok"}, {"c": "x" + LONE}]}) == "a[2].c"
    assert text.unencodable_field({"ok": 1, "k" + LONE: 1}) == "k\\udc80"
    assert text.unencodable_field(["fine", "é", "\U0001f600"]) is None
    assert text.unencodable_field(LONE, "--client") == "--client"


def test_a_lone_surrogate_in_the_webhook_url_is_1003_and_stores_nothing(tmp_path: Path) -> None:
    with in_process_mirror(tmp_path / "data") as (mirror, client):
        answer = post(client, SUBMIT, body(webhookUrl=f"http://127.0.0.1:9/{LONE}"), KEY)
        assert answer.status_code == 200
        assert answer.json()["code"] == 1003 and answer.json()["msg"].startswith("webhookUrl: ")
        assert mirror.store.jobs() == [] and credits_used(mirror) == 0


def test_a_lone_surrogate_key_is_1003_naming_it_and_spends_no_credit(tmp_path: Path) -> None:
    with in_process_mirror(tmp_path / "data") as (mirror, client):
        answers = [post(client, SUBMIT, body() | {"\ud800": 1}, KEY) for _ in range(11)]
        assert {a.status_code for a in answers} == {200}
        assert {a.json()["code"] for a in answers} == {1003}
        assert answers[0].json()["msg"].startswith("\\ud800: ")
        assert mirror.store.jobs() == [] and credits_used(mirror) == 0
        assert post(client, SUBMIT, body(), KEY).json()["code"] == 1000  # a quota of 40 is untouched


def test_the_page_validates_a_lone_surrogate_as_1003(tmp_path: Path) -> None:
    with in_process_mirror(tmp_path / "data") as (_, client):
        answer = post(client, "/preview/validate", body() | {"\ud800": 1})  # valid but for the key
        assert answer.status_code == 200 and answer.json()["code"] == 1003
        assert answer.json()["msg"].startswith("\\ud800: ")


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/_mirror/faults", {"client_id": "x" + LONE, "code": 1003}, "client_id"),
        ("/_mirror/faults", {"code": 1003, "x" + LONE: 1}, "x\\udc80"),
        ("/_mirror/jobs/policy", {"fail": LONE}, "fail"),
    ],
)
def test_control_calls_with_lone_surrogates_are_400_and_change_nothing(
    tmp_path: Path, path: str, payload: dict[str, str], field: str
) -> None:
    with in_process_mirror(tmp_path / "data") as (_, client):
        answer = post(client, path, payload)
        assert answer.status_code == 400 and answer.json()["field"] == field
        assert client.request("GET", "/_mirror/faults").json() == {"faults": []}
        assert client.request("GET", "/_mirror/jobs/policy").json()["fail"] is None
        assert post(client, SUBMIT, body(), KEY).json()["code"] == 1000


def test_a_fail_reason_with_a_lone_surrogate_is_400_and_the_job_reads_back(tmp_path: Path) -> None:
    with in_process_mirror(tmp_path / "data") as (_, client):
        client.request("POST", "/_mirror/jobs/policy", json={"queueing_polls": 5})
        job_id = post(client, SUBMIT, body(), KEY).json()["data"]["_id"]
        answer = post(client, f"/_mirror/jobs/{job_id}/fail", {"reason": "gone" + LONE})
        assert answer.status_code == 400 and answer.json()["field"] == "reason"
        assert client.request("GET", INFO, headers=KEY, params={"image_model_id": job_id}).json()["code"] == 1000
        assert client.request("GET", "/_mirror/jobs").status_code == 200


def test_a_client_id_from_bytes_that_are_not_utf8_stops_the_start_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="COMPOSITOR_CLIENTS: is not valid Unicode"):
        config.load({"data_dir": str(tmp_path)}, {"COMPOSITOR_CLIENTS": "x\udcff:" + "s" * 32})
    environ = {k.encode(): v.encode() for k, v in os.environ.items()}
    environ[b"COMPOSITOR_CLIENTS"] = b"caf\xe9:" + b"s" * 32
    started = subprocess.run(
        [sys.executable, "-m", "compositor.cli", "serve", "--data-dir", str(tmp_path), "--port", "1"],
        env=environ,
        capture_output=True,
        timeout=60,
    )
    assert started.returncode == 2
    lines = started.stderr.decode("utf-8").strip().splitlines()
    assert len(lines) == 1 and "COMPOSITOR_CLIENTS" in lines[0], started.stderr


def test_a_flag_with_bytes_that_are_not_utf8_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"--client\[0\]: is not valid Unicode"):
        config.load({"data_dir": str(tmp_path), "client": ["id\udcff:" + "s" * 32]}, {})


def test_a_deeply_nested_scenario_or_config_is_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ControlInputError, match="nested too deeply"):
        load_scenario(deep)
    with pytest.raises(config.ConfigError, match="nested too deeply"):
        config.load({"config": str(deep), "data_dir": str(tmp_path)}, {})


def test_a_cli_body_with_a_lone_surrogate_is_1003_naming_its_field(tmp_path: Path) -> None:
    request = tmp_path / "body.json"
    request.write_text(json.dumps(body(webhookUrl="http://x/" + LONE)))
    checked = subprocess.run(
        [sys.executable, "-m", "compositor.cli", "validate", str(request), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert json.loads(checked.stdout)["data"]["errors"] == [{"field": "webhookUrl", "message": text.MESSAGE}]


# --- the property: arbitrary text through every operation and control call ------------------------------------------

_CODE_POINTS = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=12)
_LONE_SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, codec=None, exclude_categories=())
# Any code points, and as often text with a lone surrogate somewhere in it (rare among arbitrary code points).
_ANY_TEXT = st.one_of(_CODE_POINTS, st.builds(lambda a, s, b: a + s + b, _CODE_POINTS, _LONE_SURROGATE, _CODE_POINTS))
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | _ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)
# Each call's well-formed body, which the property then changes in one field (or adds one), so that the
# hostile text gets past the checks a random body would fail first.
_TEMPLATES: dict[str, dict[str, object]] = {
    SUBMIT: body(webhookUrl="http://127.0.0.1:9/hook"),
    TOKEN: {"clientId": "alpha", "clientSecret": SECRET},
    "/preview/validate": body(),
    "/preview/render": body(),
    "/_mirror/faults": {"client_id": "alpha", "code": 1003, "times": 1},
    "/_mirror/jobs/policy": {"fail": "no", "times": 1},
    "/_mirror/jobs/{job}/fail": {"reason": "no"},
}


def _encoded(value: object) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: a lone surrogate travels as its escape, as an attacker sends it


@st.composite
def _payloads(draw: st.DrawFn, path: str) -> bytes:
    kind = draw(st.sampled_from(["field", "field", "key", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))  # bytes that need not be UTF-8 at all
    if kind == "json" or path not in _TEMPLATES:
        return _encoded(draw(_JSON_VALUES))
    template = dict(_TEMPLATES[path])
    if kind == "key":
        template[draw(_ANY_TEXT)] = draw(_JSON_VALUES)
    else:
        template[draw(st.sampled_from(sorted(template)))] = draw(st.one_of(_ANY_TEXT, _JSON_VALUES))
    return _encoded(template)


_CALLS = [
    ("POST", SUBMIT),
    ("POST", TOKEN),
    ("POST", "/preview/validate"),
    ("POST", "/_mirror/faults"),
    ("POST", "/_mirror/jobs/policy"),
    ("POST", "/_mirror/jobs/{job}/fail"),
    ("GET", INFO + "?image_model_id={text}"),
    ("DELETE", "/_mirror/faults/{text}"),
    ("GET", "/results/{text}"),
    ("POST", "/preview/render"),
    ("GET", "/preview/source?url={text}"),
    ("GET", "/static/{text}"),
    ("GET", "/uploads/{text}"),
    ("POST", "/uploads"),
    ("POST", "/_mirror/reset"),
]
_READS = ["/_mirror/faults", "/_mirror/jobs", "/_mirror/jobs/policy", "/_mirror/requests", "/_mirror/webhooks"]


@pytest.fixture(scope="module")
def shared_mirror(tmp_path_factory: pytest.TempPathFactory):
    with in_process_mirror(tmp_path_factory.mktemp("door") / "data") as running:
        yield running


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), call=st.sampled_from(_CALLS), word=_ANY_TEXT, keyed=st.booleans())
def test_no_text_makes_any_call_answer_a_5xx(shared_mirror, data: st.DataObject, call, word: str, keyed: bool) -> None:
    mirror, client = shared_mirror
    mirror.reset()  # each example from a clean slate, whatever the last one left
    method, path = call
    headers = {**JSON, **(KEY if keyed else {"x-api-key": data.draw(st.binary(max_size=24))})}
    job = post(client, SUBMIT, body(), KEY).json()["data"]["_id"]
    url = path.replace("{job}", job).replace("{text}", quote(word.encode("utf-8", "surrogatepass"), safe=""))
    payload = data.draw(_payloads(path)) if method == "POST" else None
    answer = client.request(method, url, content=payload, headers=headers)
    assert answer.status_code < 500, (method, url, payload, answer.text)
    assert isinstance(answer.json(), dict)  # every answer is a JSON object that decodes
    for read in _READS:  # what the call left in the controls reads back
        assert client.request("GET", read).status_code == 200, read
    mirror.controls.reset()  # a fault rule the call added may rightly answer the polls below: not under test here
    for job_record in mirror.store.jobs():  # every job reads back and moves on: none can stop the others
        polled = client.request("GET", INFO, headers=KEY, params={"image_model_id": job_record.id})
        assert polled.status_code == 200 and polled.json()["code"] == 1000, polled.text
