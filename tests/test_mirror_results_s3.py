"""The mirror's results in object storage (`serve --results s3://bucket/prefix`):
the worker that renders a job (a local pool process, a Dask worker, or the
polling thread inline) writes the PNG into the bucket itself and answers
with the outcome only; the job's `image` is the mirror's own `/results/`
URL, which streams the object from the bucket; expiry and the control
plane's reset delete what the store recorded and nothing else under or
beside the prefix; a bucket that cannot be written stops `serve` in one line,
and one that goes away mid-way sets the job aside and then fails it with the
store's reason, as a full disk does. Against moto's S3 server on loopback
(tests/s3_server.py), keys checked."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from compositor import RenderOptions, SourcePolicy, render
from compositor.cli import main
from compositor.mirror import config
from compositor.mirror import service as service_module
from compositor.mirror.service import Mirror
from compositor.testing import RESULTS_BASE_URL
from tests import s3_server as _s3
from tests.conftest import FIXTURES, loopback_cluster
from tests.inprocess import INFO, KEY, SECRET, SUBMIT, body, in_process_mirror
from tests.s3_server import S3Server
from tests.test_mirror import free_port

s3_server = _s3.s3_server  # the fixture: moto's S3 server on loopback, once for this module
PREFIX = "mirror/results"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def quiet_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 server's request lines (werkzeug's, INFO) kept out of the stderr these tests read."""
    monkeypatch.setattr(logging.getLogger("werkzeug"), "level", logging.WARNING)


@pytest.fixture
def outcomes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every outcome that reached the server from a worker, as it reached it; and the server may not write a
    result itself (`store_png` is only for PNG bytes that came back)."""
    seen: list[Any] = []
    real = Mirror._store_outcome

    def spy(self: Mirror, job: Any, done: Future[Any]) -> None:
        with contextlib.suppress(Exception):
            seen.append(done.result(timeout=0))
        real(self, job, done)

    def refused(*args: Any) -> Any:
        raise AssertionError("the server wrote a result: PNG bytes came back from the worker")

    monkeypatch.setattr(Mirror, "_store_outcome", spy)
    monkeypatch.setattr(service_module, "store_png", refused)
    return seen


def keys(server: S3Server, bucket: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=bucket)
    return sorted(entry["Key"] for entry in listed.get("Contents", []))


def get(server: S3Server, bucket: str, key: str) -> bytes:
    return bytes(server.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def put(server: S3Server, bucket: str, key: str, data: bytes = b"not the mirror's") -> None:
    server.client().put_object(Bucket=bucket, Key=key, Body=data)


def submit(client: Any, job_body: dict[str, Any] | None = None) -> str:
    answer = client.request("POST", SUBMIT, headers=KEY, content=json.dumps(job_body or body()))
    assert answer.status_code == 200 and answer.json()["code"] == 1000, answer.text
    return str(answer.json()["data"]["_id"])


def poll(client: Any, job_id: str) -> dict[str, Any]:
    answer = client.request("GET", INFO, headers=KEY, params={"image_model_id": job_id})
    assert answer.status_code == 200 and answer.json()["code"] == 1000, answer.text
    return dict(answer.json()["data"])


def wait_done(client: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        record = poll(client, job_id)
        if record["image_status"] in (3, 4):
            return record
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout:.0f} s for job {job_id}; last: {record}")


def engine_pixels(job_body: dict[str, Any]) -> np.ndarray:
    return np.asarray(render(job_body, options=RenderOptions(sources=SourcePolicy(file_roots=(FIXTURES,)))))


def assert_served_whole(server: S3Server, bucket: str, client: Any, record: dict[str, Any]) -> bytes:
    """The job's object is whole under the prefix, and the job's image URL (the mirror's own) serves its bytes."""
    job_id = record["_id"]
    assert record["image_status"] == 3, record
    assert record["image"] == f"{RESULTS_BASE_URL}/results/{job_id}.png"  # the mirror's URL, not the bucket's
    stored = get(server, bucket, f"{PREFIX}/{job_id}.png")
    assert stored.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(stored)) as picture:
        picture.load()  # decodes to its last byte: the object is whole
        assert np.array_equal(np.asarray(picture), engine_pixels(body()))
    fetched = client.request("GET", record["image"])
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert fetched.headers["content-length"] == str(len(stored)) and fetched.content == stored
    return stored


# --- a job's result, written by the worker -----------------------------------------------------------------------


def test_a_local_worker_writes_the_result_into_the_bucket_and_the_mirror_serves_it(
    s3_server: S3Server, tmp_path: Path, outcomes: list[Any]
) -> None:
    bucket = s3_server.new_bucket()
    data = tmp_path / "data"
    with in_process_mirror(data, inline=False, results=f"s3://{bucket}/{PREFIX}") as (_, client):
        record = wait_done(client, submit(client))
        assert_served_whole(s3_server, bucket, client, record)
    assert len(outcomes) == 1 and outcomes[0].png is None and outcomes[0].failure is None  # only the outcome
    assert keys(s3_server, bucket) == [f"{PREFIX}/{record['_id']}.png"]  # the start's probe is gone
    assert not any((data / "results").glob("*")), "nothing is written to the data dir's results folder"


@pytest.fixture(scope="module")
def s3_cluster(s3_server: S3Server) -> Iterator[Any]:
    """One worker, started once the S3 server's settings are in the environment: it takes them from there."""
    with loopback_cluster(workers=1) as cluster:
        yield cluster


def test_a_dask_worker_writes_the_result_into_the_bucket_and_only_the_outcome_comes_back(
    s3_server: S3Server, tmp_path: Path, s3_cluster: Any, outcomes: list[Any]
) -> None:
    bucket = s3_server.new_bucket()
    results = f"s3://{bucket}/{PREFIX}"
    with in_process_mirror(
        tmp_path / "data", inline=False, results=results, scheduler=s3_cluster.scheduler_address
    ) as (_, client):
        record = wait_done(client, submit(client))
        assert_served_whole(s3_server, bucket, client, record)
    assert len(outcomes) == 1 and outcomes[0].png is None and outcomes[0].failure is None


def test_the_results_route_answers_404_for_what_is_not_a_result_of_the_mirror(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    put(s3_server, bucket, f"{PREFIX}/notes.png")  # under the prefix, not named as a job's result
    put(s3_server, bucket, f"{PREFIX}/abc123.txt")
    with in_process_mirror(tmp_path / "data", results=f"s3://{bucket}/{PREFIX}") as (_, client):
        for name in ("0123456789abcdef01234567.png", "notes.png", "abc123.txt", ".compositor-probe-0123.png"):
            answer = client.request("GET", f"/results/{name}")
            assert answer.status_code == 404, name
            assert answer.json() == {"code": 1003, "msg": "no such result, or it has expired"}
        assert client.request("GET", "/results/..%2Fother.png").status_code == 404


# --- expiry and reset: what the store recorded, and nothing else -------------------------------------------------


def _foreign_objects(server: S3Server, bucket: str) -> list[str]:
    """Objects the mirror must never delete: beside the prefix, in a sibling prefix that starts with the same
    text, and under the prefix but not a result it recorded."""
    name = "0123456789abcdef01234567.png"
    foreign = [f"other/{name}", f"{PREFIX}-old/{name}", f"{PREFIX}/{name}"]
    for key in foreign:
        put(server, bucket, key)
    return sorted(foreign)


def test_expiry_deletes_the_result_from_the_bucket_and_nothing_else(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    foreign = _foreign_objects(s3_server, bucket)
    with in_process_mirror(tmp_path / "data", results=f"s3://{bucket}/{PREFIX}", result_ttl_s=0.0) as pair:
        mirror, client = pair
        record = poll(client, submit(client))  # inline: the poll renders it
        assert_served_whole(s3_server, bucket, client, record)
        time.sleep(0.01)  # past the time to live (0 s)
        assert mirror.expire_now() == 1
        assert keys(s3_server, bucket) == foreign
        assert poll(client, record["_id"]).get("expired") is True
        assert client.request("GET", f"/results/{record['_id']}.png").status_code == 404
        # A recorded URL outside the prefix (a prefix this server no longer uses, say) is left where it is.
        mirror._delete_result(f"s3://{bucket}/other/0123456789abcdef01234567.png")
        mirror._delete_result(f"s3://{bucket}/{PREFIX}-old/0123456789abcdef01234567.png")
        assert keys(s3_server, bucket) == foreign


def test_reset_deletes_the_mirrors_results_from_the_bucket_and_nothing_else(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    foreign = _foreign_objects(s3_server, bucket)
    with in_process_mirror(tmp_path / "data", results=f"s3://{bucket}/{PREFIX}") as (_, client):
        records = [poll(client, submit(client)) for _ in range(2)]
        assert all(record["image_status"] == 3 for record in records)
        assert len(keys(s3_server, bucket)) == len(foreign) + 2
        answer = client.request("POST", "/_mirror/reset", content=b"{}", headers={"content-type": "application/json"})
        assert answer.status_code == 200, answer.text
        assert keys(s3_server, bucket) == foreign
        assert client.request("GET", f"/results/{records[0]['_id']}.png").status_code == 404


# --- a bucket that cannot be written ------------------------------------------------------------------------------


def serve(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """`compositor serve` in this process, expected to stop before it serves; its code and stderr's lines."""
    argv = ["serve", "--data-dir", str(tmp_path / "data"), "--client", f"alpha:{SECRET}", *args]
    code = main([*argv, "--port", str(free_port())])
    return code, capsys.readouterr().err.strip().splitlines()


def test_serve_refuses_a_missing_bucket_in_one_line_naming_it(
    s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = "s3://no-such-bucket-here/mirror"
    code, err = serve(capsys, tmp_path, "--results", results)
    assert code == 2 and err == [f"compositor: cannot write {results}: the bucket does not exist"]


def test_serve_refuses_a_bucket_these_credentials_may_not_write(
    s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.new_bucket()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.reader_key[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.reader_key[1])
    code, err = serve(capsys, tmp_path, "--results", f"s3://{bucket}/{PREFIX}")
    assert code == 2 and len(err) == 1 and f"s3://{bucket}/{PREFIX}" in err[0] and "access denied" in err[0], err
    assert keys(s3_server, bucket) == []


def test_serve_refuses_bad_storage_options_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = serve(capsys, tmp_path, "--results", "s3://b/p", "--storage-options", "{not json")
    assert code == 2 and len(err) == 1 and "--storage-options is not JSON" in err[0], err
    code, err = serve(capsys, tmp_path, "--results", "s3://b/p", "--storage-options", '{"secret": "x"}')
    assert code == 2 and len(err) == 1 and "may not carry credentials" in err[0], err
    code, err = serve(capsys, tmp_path, "--results", "gs://b/p")
    assert code == 2 and len(err) == 1 and "gs:// is not supported" in err[0], err


def test_results_and_their_options_come_from_the_flag_the_variable_or_the_file(tmp_path: Path) -> None:
    file = tmp_path / "mirror.toml"
    file.write_text('results = "s3://from-file/r"\n[storage_options]\nendpoint_url = "http://127.0.0.1:9"\n')
    loaded = config.load({"config": file, "data_dir": tmp_path}, environ={}).settings
    assert (loaded.results, loaded.storage_options) == ("s3://from-file/r", {"endpoint_url": "http://127.0.0.1:9"})
    assert loaded.results_in_bucket and loaded.results_location.url == "s3://from-file/r"
    assert loaded.sources.storage_options == {"endpoint_url": "http://127.0.0.1:9"}  # s3:// sources use them too
    environ = {"COMPOSITOR_RESULTS": "s3://from-env/r", "COMPOSITOR_STORAGE_OPTIONS": '{"profile": "p"}'}
    loaded = config.load({"config": file, "data_dir": tmp_path}, environ=environ).settings
    assert (loaded.results, loaded.storage_options) == ("s3://from-env/r", {"profile": "p"})
    flags = {"config": file, "data_dir": tmp_path, "results": "s3://flag/r", "storage_options": {"profile": "f"}}
    loaded = config.load(flags, environ=environ).settings
    assert (loaded.results, loaded.storage_options) == ("s3://flag/r", {"profile": "f"})
    with pytest.raises(config.ConfigError, match="COMPOSITOR_STORAGE_OPTIONS must be a JSON object"):
        config.load({"data_dir": tmp_path}, environ={"COMPOSITOR_STORAGE_OPTIONS": "[1]"})
    default = config.load({"data_dir": tmp_path}, environ={}).settings
    assert default.results is None and not default.results_in_bucket and default.results_dir == tmp_path / "results"


# --- a bucket that goes away mid-way --------------------------------------------------------------------------------


def test_a_result_the_bucket_refuses_sets_the_job_aside_then_fails_it_with_the_reason(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a full disk: not the job's fault, so it waits aside and runs again; after the waits a full disk gets,
    it fails with the store's reason (and never the bucket's URL, which is the operator's). Shortened here."""
    monkeypatch.setattr(service_module, "SET_ASIDE_S", (0.0, 0.0))
    monkeypatch.setattr(service_module, "MAX_SETBACKS", 1)
    bucket = s3_server.new_bucket()
    with in_process_mirror(tmp_path / "data", results=f"s3://{bucket}/{PREFIX}") as (_, client):
        s3_server.client().delete_bucket(Bucket=bucket)  # proven writable at the start, gone before the job
        job_id = submit(client)
        first = poll(client, job_id)  # inline: renders, cannot store, set aside
        assert first["image_status"] in (1, 2) and first["error_reasons"] == [], first
        last = poll(client, job_id)  # runs again, cannot store again: failed
        assert last["image_status"] == 4, last
        reason = "the result could not be stored in the results bucket: the bucket does not exist (2 tries)"
        assert last["error_reasons"] == [reason] and bucket not in json.dumps(last)
        # Reading results meanwhile: the mirror says it cannot, and names nothing of the bucket.
        answer = client.request("GET", f"/results/{job_id}.png")
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5" and bucket not in answer.text
        document = client.request("GET", "/openapi.json").json()  # the document says so, for this server
        assert "503" in document["paths"]["/results/{name}"]["get"]["responses"]
