"""`compositor batch` with its input and output in object storage: a catalogue
(a JSONL object, or a prefix of *.json) read from a bucket, each result
written by the worker that rendered it straight into a bucket (the local pool,
a Dask LocalCluster, and a CLI-started scheduler whose worker is killed with
-9 mid-batch), only the outcome coming back to the client, the
report beside the results, `--resume` from the report and the listing, and a
bucket that refuses writes stopping the batch up front in one line. Against
moto's S3 server on loopback (tests/s3_server.py), keys checked."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from compositor.cli import main
from tests import s3_server as _s3
from tests.conftest import loopback_cluster
from tests.s3_server import S3Server
from tests.test_batch import BIN, body, cli_cluster, pixels, rendered_alone, wait_until, write_jsonl

REPO = Path(__file__).resolve().parent.parent
s3_server = _s3.s3_server  # the fixture: moto's S3 server on loopback, once for this module
SIDE = 64  # small canvases: these tests are about where bytes go, not about rendering


def bodies(count: int) -> list[dict[str, Any]]:
    return [body(i, side=SIDE) for i in range(count)]


def put_jsonl(server: S3Server, bucket: str, key: str, lines: list[Any]) -> str:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    server.client().put_object(Bucket=bucket, Key=key, Body=text.encode())
    return f"s3://{bucket}/{key}"


def get(server: S3Server, bucket: str, key: str) -> bytes:
    return bytes(server.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def keys(server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    listed = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(entry["Key"] for entry in listed.get("Contents", []))


def report_of(server: S3Server, bucket: str, prefix: str) -> list[dict[str, Any]]:
    text = get(server, bucket, f"{prefix}/report.jsonl").decode()
    assert text == "" or text.endswith("\n"), "the report in the bucket is whole lines"
    return [json.loads(line) for line in text.splitlines()]


def object_pixels(server: S3Server, bucket: str, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(get(server, bucket, key))))


def batch(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    """`compositor batch` in this process (its workers are processes of their own); the code and stderr's lines."""
    code = main(["batch", *args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(autouse=True)
def quiet_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 server's request lines (werkzeug's, INFO) kept out of the batch's stderr, which these tests read."""
    monkeypatch.setattr(logging.getLogger("werkzeug"), "level", logging.WARNING)


@pytest.fixture
def no_render(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting an executor fails the test: what is refused up front renders nothing."""
    import compositor.executors

    class Refused:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("an executor was started: something would have been rendered")

    monkeypatch.setattr(compositor.executors, "LocalExecutor", Refused)
    monkeypatch.setattr(compositor.executors, "DaskExecutor", Refused)


@pytest.fixture
def outcomes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every answer that reached the client, as it reached it."""
    from compositor.batch import BatchRun

    seen: list[Any] = []
    real = BatchRun._settle

    def spy(self: BatchRun, future: Future[Any], pending: Any, in_flight: Any) -> None:
        with contextlib.suppress(Exception):
            seen.append(future.result(timeout=0))
        real(self, future, pending, in_flight)

    monkeypatch.setattr(BatchRun, "_settle", spy)
    return seen


def assert_only_outcomes_came_back(seen: list[Any], count: int) -> None:
    assert len(seen) == count
    for outcome in seen:
        assert outcome.png is None and outcome.code == 1000 and outcome.size > 0 and len(outcome.sha256) == 64
        assert len(pickle.dumps(outcome)) < 1024  # the outcome: no PNG (a 64x64 one alone is several KB)


def assert_report_matches_the_objects(
    server: S3Server, bucket: str, prefix: str, ids: list[str], others: tuple[str, ...] = ()
) -> None:
    lines = report_of(server, bucket, prefix)
    assert sorted(line["id"] for line in lines) == sorted([*ids, *others])  # each id once
    for line in lines:
        if line["id"] in others:
            continue
        data = get(server, bucket, f"{prefix}/{line['id']}.png")
        assert line["status"] == "done" and line["output"] == f"s3://{bucket}/{prefix}/{line['id']}.png"
        assert line["size"] == len(data) and line["sha256"] == hashlib.sha256(data).hexdigest()


# --- a bucket to a bucket ----------------------------------------------------------------------------------------


def test_a_bucket_catalogue_renders_to_a_bucket_prefix_on_two_local_workers(
    s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], outcomes: list[Any]
) -> None:
    inputs, results = s3_server.new_bucket(), s3_server.new_bucket()
    items = bodies(4)
    lines: list[Any] = [items[0], {"id": "named", "body": items[1]}, items[2], items[3]]
    source = put_jsonl(s3_server, inputs, "catalogues/bodies.jsonl", lines)
    code, err = batch(capsys, source, "-o", f"s3://{results}/run-1/", "--workers", "2")
    assert code == 0, err
    assert err[-1].startswith("compositor: 4 done, 0 failed, 0 skipped")
    assert err[-1].endswith(f"; report in s3://{results}/run-1/report.jsonl")
    ids = ["000001", "named", "000003", "000004"]
    assert keys(s3_server, results) == sorted([*(f"run-1/{i}.png" for i in ids), "run-1/report.jsonl"])  # no probe
    for item_id, item in zip(ids, items, strict=True):
        assert np.array_equal(object_pixels(s3_server, results, f"run-1/{item_id}.png"), rendered_alone(tmp_path, item))
    assert_report_matches_the_objects(s3_server, results, "run-1", ids)
    assert_only_outcomes_came_back(outcomes, 4)


def test_bodies_may_name_sources_in_a_bucket(
    s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3_server.new_bucket()
    item = bodies(1)[0]
    s3_server.client().put_object(Bucket=bucket, Key="pictures/fg.jpg", Body=Path(item["origin_img"]).read_bytes())
    stored = {**item, "origin_img": f"s3://{bucket}/pictures/fg.jpg"}
    source = write_jsonl(tmp_path / "in.jsonl", [stored, {**item, "origin_img": f"s3://{bucket}/pictures/none.jpg"}])
    out = tmp_path / "out"
    code, err = batch(capsys, str(source), "-o", str(out), "--workers", "1")
    assert code == 1, err  # the missing picture fails alone
    lines = {line["id"]: line for line in map(json.loads, (out / "report.jsonl").read_text().splitlines())}
    assert lines["000001"]["status"] == "done"
    assert np.array_equal(pixels(out / "000001.png"), rendered_alone(tmp_path, item))
    assert lines["000002"]["code"] == 1108 and lines["000002"]["errors"][0]["field"] == "origin_img"
    assert f"s3://{bucket}/pictures/none.jpg" in lines["000002"]["errors"][0]["message"]


def test_a_prefix_of_json_is_an_input(s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bucket = s3_server.new_bucket()
    items = bodies(2)
    for name, item in zip(("a", "b"), items, strict=True):
        s3_server.client().put_object(Bucket=bucket, Key=f"bodies/{name}.json", Body=json.dumps(item).encode())
    s3_server.client().put_object(Bucket=bucket, Key="bodies/notes.txt", Body=b"not a body")
    s3_server.client().put_object(Bucket=bucket, Key="bodies/deeper/c.json", Body=json.dumps(items[0]).encode())
    out = tmp_path / "out"  # a local output: the client writes, as it always has
    code, err = batch(capsys, f"s3://{bucket}/bodies/", "-o", str(out), "--workers", "1")
    assert code == 0, err
    lines = {line["id"]: line for line in map(json.loads, (out / "report.jsonl").read_text().splitlines())}
    assert sorted(lines) == ["a", "b"]  # right under the prefix, *.json only
    for name, item in zip(("a", "b"), items, strict=True):
        data = (out / f"{name}.png").read_bytes()
        assert lines[name]["output"] == str(out / f"{name}.png")
        assert lines[name]["size"] == len(data) and lines[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert np.array_equal(pixels(out / f"{name}.png"), rendered_alone(tmp_path, item))


def test_a_local_catalogue_renders_into_a_bucket(
    s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3_server.new_bucket()
    source = write_jsonl(tmp_path / "in.jsonl", [*bodies(2), "not JSON"])
    code, err = batch(capsys, str(source), "-o", f"s3://{bucket}/out", "--workers", "1")
    assert code == 1, err  # the line that is not JSON fails alone
    lines = {line["id"]: line for line in report_of(s3_server, bucket, "out")}
    assert lines["000003"]["status"] == "failed" and lines["000003"]["output"] is None
    assert "size" not in lines["000003"]
    assert keys(s3_server, bucket) == ["out/000001.png", "out/000002.png", "out/report.jsonl"]


def test_the_report_in_a_bucket_is_whole_lines_at_every_checkpoint(
    s3_server: S3Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import compositor.batch
    import compositor.storage

    monkeypatch.setattr(compositor.batch, "REPORT_CHECKPOINT_S", 0.0)  # a checkpoint at every line
    monkeypatch.setattr(compositor.batch, "REPORT_CHECKPOINT_SHARE", 0)
    bucket = s3_server.new_bucket()
    snapshots: list[bytes] = []
    real = compositor.storage._ObjectReport.checkpoint

    def checkpoint_and_look(self: Any) -> None:
        real(self)
        snapshots.append(get(s3_server, bucket, "run/report.jsonl"))

    monkeypatch.setattr(compositor.storage._ObjectReport, "checkpoint", checkpoint_and_look)
    source = put_jsonl(s3_server, bucket, "in.jsonl", bodies(3))
    code, err = batch(capsys, source, "-o", f"s3://{bucket}/run", "--workers", "1")
    assert code == 0, err
    counts = [len(snapshot.splitlines()) for snapshot in snapshots]
    assert counts[:3] == [1, 2, 3] and counts[-1] == 3, counts  # one more whole line at each, then the last
    for snapshot in snapshots:
        assert snapshot.endswith(b"\n") and all(json.loads(line) for line in snapshot.splitlines())


def test_report_checkpoints_are_spaced_by_time_and_the_close_is_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    import compositor.batch
    from compositor.batch import _ReportLines
    from compositor.storage import ReportWriter

    class Writer(ReportWriter):
        def __init__(self) -> None:
            self.lines: list[str] = []
            self.checkpoints = 0
            self.closed = False

        def write_line(self, line: str) -> None:
            self.lines.append(line)

        def checkpoint(self) -> None:
            self.checkpoints += 1

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(compositor.batch, "REPORT_CHECKPOINT_S", 3600.0)
    writer = Writer()
    report = _ReportLines(writer)
    for index in range(100):
        report.write(json.dumps({"id": str(index)}) + "\n")
    assert writer.checkpoints == 0 and len(writer.lines) == 100  # within the hour: spooled only
    report.close()
    assert writer.closed
    monkeypatch.setattr(compositor.batch, "REPORT_CHECKPOINT_S", 0.0)
    writer = Writer()
    monkeypatch.setattr(compositor.batch, "REPORT_CHECKPOINT_SHARE", 0)
    report = _ReportLines(writer)
    for index in range(3):
        report.write(json.dumps({"id": str(index)}) + "\n")
    assert writer.checkpoints == 3


# --- on Dask ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_cluster(s3_server: S3Server) -> Iterator[Any]:
    """Started once the S3 server's settings are in the environment: its workers take theirs from it."""
    with loopback_cluster() as cluster:
        yield cluster


def test_on_dask_the_workers_write_to_the_bucket_and_only_outcomes_come_back(
    s3_server: S3Server, tmp_path: Path, s3_cluster: Any, capsys: pytest.CaptureFixture[str], outcomes: list[Any]
) -> None:
    bucket = s3_server.new_bucket()
    items = bodies(4)
    source = put_jsonl(s3_server, bucket, "in/bodies.jsonl", items)
    code, err = batch(capsys, source, "-o", f"s3://{bucket}/out/", "--scheduler", s3_cluster.scheduler_address)
    assert code == 0, err
    ids = [f"{i:06d}" for i in range(1, 5)]
    assert_only_outcomes_came_back(outcomes, 4)
    assert_report_matches_the_objects(s3_server, bucket, "out", ids)
    assert np.array_equal(object_pixels(s3_server, bucket, "out/000004.png"), rendered_alone(tmp_path, items[3]))


def test_a_task_run_twice_writes_the_same_bytes_to_the_same_name(s3_server: S3Server) -> None:
    """What a lost Dask worker's task run again elsewhere does: the same object, whole, and the same outcome."""
    from compositor.batch import render_item
    from compositor.storage import open_location

    bucket = s3_server.new_bucket()
    place = open_location(f"s3://{bucket}/out")
    item = bodies(1)[0]
    first = render_item(item, str(REPO), None, "u2netp", None, False, pickle.loads(pickle.dumps(place)), "x.png")
    written = get(s3_server, bucket, "out/x.png")
    second = render_item(item, str(REPO), None, "u2netp", None, False, pickle.loads(pickle.dumps(place)), "x.png")
    assert get(s3_server, bucket, "out/x.png") == written
    assert (first.size, first.sha256) == (second.size, second.sha256) == (len(written), sha(written))
    assert keys(s3_server, bucket) == ["out/x.png"]


PNG_END = b"IEND\xaeB`\x82"  # the last chunk of every PNG: an object that ends otherwise was seen cut


def test_a_worker_killed_mid_batch_into_a_bucket_loses_nothing_and_no_object_is_ever_partial(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """`dask scheduler` and two `dask worker` processes, as a user starts them; one is killed with -9 while the
    workers write into the bucket. A reader lists and reads the prefix all along."""
    bucket = s3_server.new_bucket()
    items = [body(i, side=768) for i in range(48)]
    source = put_jsonl(s3_server, bucket, "in/bodies.jsonl", items)
    seen: dict[str, int] = {}
    partial: list[str] = []
    stop = threading.Event()

    def read_all_along() -> None:
        while not stop.is_set():
            for key in keys(s3_server, bucket, "out/"):
                with contextlib.suppress(Exception):  # replaced or deleted (the probe) between list and read
                    data = get(s3_server, bucket, key)
                    seen[key] = seen.get(key, 0) + 1
                    if key.endswith(".png") and not data.endswith(PNG_END):
                        partial.append(key)
                    if key.endswith(".jsonl") and data and not data.endswith(b"\n"):
                        partial.append(key)

    reader = threading.Thread(target=read_all_along, daemon=True)
    with cli_cluster(2) as (address, workers):
        run = subprocess.Popen(
            [str(BIN / "compositor"), "batch", source, "-o", f"s3://{bucket}/out/", "--scheduler", address],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        reader.start()
        try:
            written = lambda: len([k for k in keys(s3_server, bucket, "out/") if k.endswith(".png")])  # noqa: E731
            wait_until(lambda: written() >= 4 or run.poll() is not None, "four results in the bucket")
            assert run.poll() is None, "the batch ended before a worker could be killed"
            os.killpg(workers[0].pid, signal.SIGKILL)
            _, stderr = run.communicate(timeout=300)
        finally:
            stop.set()
            reader.join(30)
    assert run.returncode == 0, stderr
    ids = [f"{i:06d}" for i in range(1, 49)]
    assert_report_matches_the_objects(s3_server, bucket, "out", ids)  # each id once, size and sha256 of the object
    assert keys(s3_server, bucket, "out/") == sorted([*(f"out/{i}.png" for i in ids), "out/report.jsonl"])
    assert partial == [] and len(seen) >= 4, (partial, len(seen))
    assert np.array_equal(object_pixels(s3_server, bucket, "out/000048.png"), rendered_alone(tmp_path, items[47]))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- resume ------------------------------------------------------------------------------------------------------


def test_resume_renders_only_what_is_missing_and_lists_each_id_once(
    s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], outcomes: list[Any]
) -> None:
    bucket = s3_server.new_bucket()
    items = bodies(5)
    source = put_jsonl(s3_server, bucket, "in.jsonl", items)
    out = f"s3://{bucket}/out"
    code, err = batch(capsys, source, "-o", out, "--workers", "1")
    assert code == 0, err
    first = {line["id"]: line for line in report_of(s3_server, bucket, "out")}
    # What a client killed mid-run leaves, and worse: a report one checkpoint behind.
    gone = {
        "id": "gone",
        "status": "failed",
        "output": None,
        "seconds": 0.0,
        "code": 1108,
        "errors": [],
        "warnings": [],
    }
    failed_4 = {**gone, "id": "000004"}
    partial = [first["000001"], first["000002"], failed_4, first["000005"], gone]
    text = "".join(json.dumps(line) + "\n" for line in partial) + '{"id": "000003", "sta'  # a cut last line
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="out/report.jsonl", Body=text.encode())
    client.put_object(Bucket=bucket, Key="out/000003.png", Body=b"written after the last checkpoint?")  # no line
    client.delete_object(Bucket=bucket, Key="out/000004.png")  # failed: no object
    client.delete_object(Bucket=bucket, Key="out/000005.png")  # listed done, but its object is gone
    outcomes.clear()

    code, err = batch(capsys, source, "-o", out, "--workers", "1", "--resume")
    assert code == 0, err
    assert sorted(outcome.sha256 for outcome in outcomes) == sorted(
        sha(get(s3_server, bucket, f"out/{name}.png")) for name in ("000003", "000004", "000005")
    )  # rendered: these three only
    assert err[-1].startswith("compositor: 3 done, 0 failed, 2 skipped"), err
    lines = report_of(s3_server, bucket, "out")
    assert sorted(line["id"] for line in lines) == ["000001", "000002", "000003", "000004", "000005", "gone"]
    by_id = {line["id"]: line for line in lines}
    assert by_id["000001"] == first["000001"] and by_id["000002"] == first["000002"]  # kept as they were
    assert by_id["gone"] == gone  # an id this input no longer has keeps its line
    ids = ["000001", "000002", "000003", "000004", "000005"]
    assert_report_matches_the_objects(s3_server, bucket, "out", ids, others=("gone",))
    assert np.array_equal(object_pixels(s3_server, bucket, "out/000003.png"), rendered_alone(tmp_path, items[2]))

    outcomes.clear()
    code, err = batch(capsys, source, "-o", out, "--workers", "1", "--resume")  # all done: nothing runs
    assert code == 0 and err[-1].startswith("compositor: 0 done, 0 failed, 5 skipped"), err
    assert outcomes == []
    assert sorted(line["id"] for line in report_of(s3_server, bucket, "out")) == sorted(by_id)


# --- refused up front, in one line ---------------------------------------------------------------------------


def one_error(err: list[str], url: str) -> str:
    assert len(err) == 1 and url in err[0] and "Traceback" not in err[0], err
    return err[0]


def test_a_missing_output_bucket_is_exit_2_naming_it_before_any_render(
    s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_render: None
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", bodies(2))
    code, err = batch(capsys, str(source), "-o", "s3://no-such-bucket-here/out/")
    assert code == 2
    assert "the bucket does not exist" in one_error(err, "s3://no-such-bucket-here/out")


def test_a_missing_input_bucket_or_object_is_exit_2_naming_it(
    s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_render: None
) -> None:
    code, err = batch(capsys, "s3://no-such-bucket-here/bodies.jsonl", "-o", str(tmp_path / "out"))
    assert code == 2 and "the bucket does not exist" in one_error(err, "s3://no-such-bucket-here/bodies.jsonl")
    bucket = s3_server.new_bucket()
    code, err = batch(capsys, f"s3://{bucket}/nothing.jsonl", "-o", str(tmp_path / "out"))
    assert code == 2 and "no input at" in one_error(err, f"s3://{bucket}/nothing.jsonl")


def test_wrong_credentials_are_exit_2_naming_the_url_before_any_render(
    s3_server: S3Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_render: None,
) -> None:
    bucket = s3_server.new_bucket()
    source = put_jsonl(s3_server, bucket, "in.jsonl", bodies(2))
    local = write_jsonl(tmp_path / "in.jsonl", bodies(2))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    code, err = batch(capsys, source, "-o", f"s3://{bucket}/out")
    assert code == 2 and "wrong credentials" in one_error(err, source)  # the input is read first
    code, err = batch(capsys, str(local), "-o", f"s3://{bucket}/out")
    assert code == 2 and "wrong credentials" in one_error(err, f"s3://{bucket}/out")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.reader_key[0])  # a user who may read, not write
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.reader_key[1])
    code, err = batch(capsys, source, "-o", f"s3://{bucket}/out")
    assert code == 2 and "access denied" in one_error(err, f"s3://{bucket}/out")
    assert keys(s3_server, bucket) == ["in.jsonl"]


def test_storage_options_reach_the_input_the_output_and_the_workers(
    s3_server: S3Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.new_bucket()
    source = put_jsonl(s3_server, bucket, "in.jsonl", bodies(2))
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint comes from --storage-options alone, workers included
    options = json.dumps({"endpoint_url": s3_server.endpoint})
    code, err = batch(capsys, source, "-o", f"s3://{bucket}/out", "--workers", "1", "--storage-options", options)
    assert code == 0, err
    assert_report_matches_the_objects(s3_server, bucket, "out", ["000001", "000002"])


def test_bad_storage_options_are_exit_2_in_one_line(
    s3_server: S3Server, capsys: pytest.CaptureFixture[str], no_render: None
) -> None:
    bucket = s3_server.new_bucket()
    source = put_jsonl(s3_server, bucket, "in.jsonl", bodies(1))
    code, err = batch(capsys, source, "-o", f"s3://{bucket}/out", "--storage-options", "{not json")
    assert code == 2 and len(err) == 1 and "--storage-options is not JSON" in err[0]
    secret = json.dumps({"secret": "typed on a command line"})
    code, err = batch(capsys, source, "-o", f"s3://{bucket}/out", "--storage-options", secret)
    assert code == 2 and len(err) == 1 and "--storage-options may not carry credentials (secret)" in err[0], err
    assert "typed on" not in err[0]


# --- local paths, as before ------------------------------------------------------------------------------------


def test_a_local_batch_never_imports_fsspec(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", bodies(2))
    code = f"""
import sys
from compositor.cli import main
code = main(["batch", {str(source)!r}, "-o", {str(tmp_path / "out")!r}, "--workers", "1"])
print(code, sorted(m for m in ("fsspec", "s3fs", "botocore", "aiobotocore") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.stdout.split() == ["0", "[]"], done.stderr
    lines = [json.loads(line) for line in (tmp_path / "out" / "report.jsonl").read_text().splitlines()]
    for line in lines:
        data = Path(line["output"]).read_bytes()
        assert line["size"] == len(data) and line["sha256"] == sha(data)


def test_an_input_named_where_the_report_goes_is_refused_and_left_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_render: None
) -> None:
    source = write_jsonl(tmp_path / "report.jsonl", bodies(2))
    before = source.read_bytes()
    code, err = batch(capsys, str(source), "-o", str(tmp_path))
    assert code == 2 and len(err) == 1 and "report" in err[0] and str(source) in err[0], err
    assert source.read_bytes() == before


def test_an_input_object_named_where_the_report_goes_is_refused_and_left_whole(
    s3_server: S3Server, capsys: pytest.CaptureFixture[str], no_render: None
) -> None:
    bucket = s3_server.new_bucket()
    url = put_jsonl(s3_server, bucket, "run/report.jsonl", bodies(2))
    before = get(s3_server, bucket, "run/report.jsonl")
    for args in ((url, "-o", f"s3://{bucket}/run/"), (url, "-o", f"s3://{bucket}/run", "--resume")):
        code, err = batch(capsys, *args)
        assert code == 2 and len(err) == 1 and "report" in err[0] and url in err[0], err
    assert get(s3_server, bucket, "run/report.jsonl") == before


@pytest.mark.parametrize("where", ["input", "output"])
def test_credentials_in_a_batch_url_are_refused_and_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_render: None, where: str
) -> None:
    secret_url = "s3://AKIAX:topsecret@renders/run"
    source = write_jsonl(tmp_path / "in.jsonl", bodies(1))
    args = (f"{secret_url}/bodies.jsonl", "-o", str(tmp_path)) if where == "input" else (str(source), "-o", secret_url)
    code, err = batch(capsys, *args)
    assert code == 2 and len(err) == 1 and "credentials in a URL" in err[0], err
    assert "topsecret" not in err[0] and "AKIAX" not in err[0] and "s3://renders/run" in err[0]


def test_validate_reads_a_catalogue_in_a_bucket_as_batch_does(
    s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3_server.new_bucket()
    lines: list[Any] = [*bodies(2), {**bodies(1)[0], "canvas_size": "0x0"}]
    url = put_jsonl(s3_server, bucket, "cat/bodies.jsonl", lines)
    for i, line in enumerate(lines):
        s3_server.client().put_object(Bucket=bucket, Key=f"pfx/{i:02d}.json", Body=json.dumps(line).encode())
    local = write_jsonl(tmp_path / "bodies.jsonl", lines)
    verdicts = []
    for catalogue in (str(local), url, f"s3://{bucket}/pfx/"):
        code = main(["validate", catalogue, "--json"])
        out = capsys.readouterr().out.splitlines()
        verdicts.append((code, [json.loads(line)["code"] for line in out]))
    assert verdicts[0] == (1, [1000, 1000, 1003]) and verdicts[1] == verdicts[0] and verdicts[2] == verdicts[0]


def test_keys_in_storage_options_are_refused_even_when_every_place_is_local(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_render: None
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", bodies(1))
    code, err = batch(capsys, str(source), "-o", str(tmp_path / "out"), "--storage-options", '{"key": "AKIAQ"}')
    assert code == 2 and len(err) == 1 and "may not carry credentials (key)" in err[0] and "AKIAQ" not in err[0]
