"""`compositor.storage`: one place by local path or URL, read and written the
same way. Local paths behave as batch's outputs always have (a temporary name
beside the target, then a rename) and never import fsspec; s3:// runs against
moto's S3 server on loopback (tests/s3_server.py), keys checked."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from compositor.storage import StorageError, open_location, open_object
from tests import s3_server as _s3
from tests.s3_server import S3Server

REPO = Path(__file__).resolve().parent.parent
s3_server = _s3.s3_server  # the fixture: moto's S3 server on loopback, once for this module


def _one_line(exc: pytest.ExceptionInfo[StorageError], url: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and url in message, message
    return message


# --- local paths -----------------------------------------------------------------------------------------------------


def test_a_local_folder_round_trips(tmp_path: Path) -> None:
    place = open_location(tmp_path)
    place.write_bytes_atomic("a.png", b"png bytes")
    assert place.read_bytes("a.png") == b"png bytes"
    assert place.exists("a.png") and not place.exists("b.png")
    assert place.url_of("a.png") == str(tmp_path / "a.png")  # what batch's report says today
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temporary file left


def test_a_local_write_that_fails_leaves_the_old_file_whole_and_no_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = open_location(str(tmp_path))
    place.write_bytes_atomic("a.png", b"old")

    def disk_full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(StorageError) as caught:
        place.write_bytes_atomic("a.png", b"new")
    assert "No space left on device" in _one_line(caught, str(tmp_path / "a.png"))
    assert (tmp_path / "a.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_a_local_write_from_a_file_copies_from_where_it_stands(tmp_path: Path) -> None:
    spool = io.BytesIO(b"skip:" + b"x" * 100_000)
    spool.seek(5)
    open_location(tmp_path).write_file_atomic("a.png", spool)
    assert (tmp_path / "a.png").read_bytes() == b"x" * 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@pytest.mark.parametrize(
    ("url", "place", "name"),
    [("s3://bucket/a/b.png", "s3://bucket/a", "b.png"), ("s3://bucket/b.png", "s3://bucket", "b.png")],
)
def test_an_objects_url_is_its_place_and_its_name(url: str, place: str, name: str) -> None:
    location, found = open_object(url)
    assert (location.url, found) == (place, name)


def test_a_local_listing_matches_the_pattern(tmp_path: Path) -> None:
    place = open_location(tmp_path)
    for name in ("b.png", "a.png", "a.json"):
        place.write_bytes_atomic(name, b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.png").write_bytes(b"x")
    assert place.list("*.png") == ["a.png", "b.png"]
    assert place.list("*.json") == ["a.json"]


def test_a_missing_local_folder_is_refused_up_front(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "out"
    with pytest.raises(StorageError) as caught:
        open_location(missing).check_writable()
    assert str(caught.value) == f"cannot write {missing}: the folder does not exist"


def test_a_local_folder_is_proven_writable_and_the_probe_is_gone(tmp_path: Path) -> None:
    open_location(tmp_path).check_writable()
    assert list(tmp_path.iterdir()) == []


def test_reading_a_missing_local_name_says_not_found(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as caught:
        open_location(tmp_path).read_bytes("nope.json")
    assert "not found" in _one_line(caught, str(tmp_path / "nope.json"))


def test_a_name_cannot_leave_its_place(tmp_path: Path) -> None:
    place = open_location(tmp_path / "out")
    for name in ("../x.png", "/etc/passwd", "", "a/../../x"):
        with pytest.raises(ValueError):
            place.url_of(name)


def test_a_local_report_appends_and_a_resume_drops_a_cut_line(tmp_path: Path) -> None:
    place = open_location(tmp_path)
    report = place.open_report("report.jsonl")
    report.write_line('{"id": "a"}')
    assert (tmp_path / "report.jsonl").read_text() == '{"id": "a"}\n'  # on disk at once, as batch's is
    report.close()
    with (tmp_path / "report.jsonl").open("a") as cut:
        cut.write('{"id": "b", "sta')
    report = place.open_report("report.jsonl", resume=True)
    report.write_line('{"id": "c"}')
    report.close()
    assert (tmp_path / "report.jsonl").read_text() == '{"id": "a"}\n{"id": "c"}\n'
    place.open_report("report.jsonl").close()  # not a resume: a new report
    assert (tmp_path / "report.jsonl").read_text() == ""


def test_local_paths_never_import_fsspec(tmp_path: Path) -> None:
    code = f"""
import sys
from compositor.storage import open_location
place = open_location({str(tmp_path)!r})
place.check_writable()
place.write_bytes_atomic("a.png", b"x")
assert place.read_bytes("a.png") == b"x" and place.exists("a.png") and place.list("*.png") == ["a.png"]
report = place.open_report("report.jsonl")
report.write_line("{{}}")
report.checkpoint()
report.close()
open_location("file://" + {str(tmp_path)!r}).read_bytes("a.png")
print(sorted(m for m in ("fsspec", "s3fs", "botocore", "aiobotocore") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_scheme_not_supported_yet_is_refused_in_one_line() -> None:
    with pytest.raises(StorageError) as caught:
        open_location("gs://bucket/out")
    assert "only local paths and s3://" in _one_line(caught, "gs://bucket/out")


# --- S3, on moto's server on loopback ---------------------------------------------------------------------------------


def test_only_loopback_can_be_looked_up_while_the_server_runs(s3_server: S3Server) -> None:
    import socket

    assert socket.getaddrinfo("127.0.0.1", 80)
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("s3.amazonaws.com", 443)
    assert s3_server.refused.pop() == "s3.amazonaws.com"  # noted, and taken back: this one was on purpose
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint and s3_server.endpoint.startswith("http://127.0.0.1:")
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"


def test_an_s3_prefix_round_trips(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    place = open_location(f"s3://{bucket}/run1")
    place.check_writable()
    place.write_bytes_atomic("a.png", b"png bytes")
    assert place.read_bytes("a.png") == b"png bytes"
    assert place.exists("a.png") and not place.exists("b.png")
    assert place.url_of("a.png") == f"s3://{bucket}/run1/a.png"
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["run1/a.png"]  # and the probe of check_writable is gone


def test_an_s3_listing_matches_the_pattern_under_its_prefix_only(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    place = open_location(f"s3://{bucket}/run1/")
    for name in ("b.png", "a.png", "a.json", "sub/c.png"):
        place.write_bytes_atomic(name, b"x")
    open_location(f"s3://{bucket}/run10").write_bytes_atomic("x.png", b"x")  # a neighbour sharing the prefix's text
    assert place.list("*.png") == ["a.png", "b.png"]
    assert place.list("*.json") == ["a.json"]
    assert open_location(f"s3://{bucket}").list("*.png") == []


def test_an_s3_write_is_one_put_of_the_whole_object(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 shows an object only once its PUT has arrived whole; a multipart
    upload's parts are never visible either, but one PUT leaves no upload to
    abort when a worker dies half way. Seen from the client: PutObject alone."""
    from aiobotocore.client import AioBaseClient

    calls: list[str] = []
    real = AioBaseClient._make_api_call

    async def recorded(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        calls.append(operation_name)
        return await real(self, operation_name, api_params)

    monkeypatch.setattr(AioBaseClient, "_make_api_call", recorded)
    bucket = s3_server.new_bucket()
    place = open_location(f"s3://{bucket}/out")
    place.write_bytes_atomic("big.png", os.urandom(3 * 1024 * 1024))
    assert calls == ["PutObject"]


def test_an_s3_write_from_a_file_is_one_put_of_the_rest_of_it(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    data = os.urandom(3 * 1024 * 1024)
    with tempfile.TemporaryFile() as spool:
        spool.write(b"skip:" + data)
        spool.seek(5)
        open_location(f"s3://{bucket}/out").write_file_atomic("big.png", spool)
    assert s3_server.client().get_object(Bucket=bucket, Key="out/big.png")["Body"].read() == data


def test_a_reader_during_an_s3_overwrite_sees_the_old_or_the_new_object_whole(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    place = open_location(f"s3://{bucket}")
    old, new = b"o" * (6 * 1024 * 1024), os.urandom(6 * 1024 * 1024)
    client = s3_server.client()
    seen: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                body = client.get_object(Bucket=bucket, Key="a.png")["Body"].read()
            except client.exceptions.NoSuchKey:
                seen.append("nothing")
                continue
            seen.append("old" if body == old else "new" if body == new else f"partial ({len(body)} bytes)")

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        place.write_bytes_atomic("a.png", old)
        place.write_bytes_atomic("a.png", new)
    finally:
        stop.set()
        reader.join()
    assert seen  # the reader read while the writes went on
    assert set(seen) <= {"nothing", "old", "new"}, [s for s in seen if s.startswith("partial")]
    assert client.get_object(Bucket=bucket, Key="a.png")["Body"].read() == new


def test_a_missing_bucket_is_refused_up_front(s3_server: S3Server) -> None:
    url = "s3://no-such-bucket-here/out"
    place = open_location(url)  # nothing is asked of the store yet
    with pytest.raises(StorageError) as caught:
        place.check_writable()
    assert str(caught.value) == f"cannot write {url}: the bucket does not exist"


@pytest.mark.parametrize("variable", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_wrong_credentials_are_refused_up_front(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    bucket = s3_server.new_bucket()
    monkeypatch.setenv(variable, "AKIAWRONGWRONGWRONG1")
    url = f"s3://{bucket}/out"
    with pytest.raises(StorageError) as caught:
        open_location(url).check_writable()
    assert "wrong credentials" in _one_line(caught, url)


def test_a_user_who_may_not_write_is_refused_up_front(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_server.new_bucket()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.reader_key[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.reader_key[1])
    url = f"s3://{bucket}/out"
    with pytest.raises(StorageError) as caught:
        open_location(url).check_writable()
    assert "access denied" in _one_line(caught, url)


def test_storage_options_carry_what_the_environment_does_not(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.new_bucket()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    place = open_location(f"s3://{bucket}", storage_options={"endpoint_url": s3_server.endpoint})
    place.check_writable()
    place.write_bytes_atomic("a.json", b"{}")
    assert place.read_bytes("a.json") == b"{}"


def test_storage_options_never_carry_credentials() -> None:
    with pytest.raises(StorageError) as caught:
        open_location("s3://bucket/out", storage_options={"key": "AKIA", "secret": "s"})
    assert "AWS_ACCESS_KEY_ID" in _one_line(caught, "s3://bucket/out")


def test_reading_a_missing_s3_name_says_not_found(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    with pytest.raises(StorageError) as caught:
        open_location(f"s3://{bucket}/in").read_bytes("nope.json")
    assert "not found" in _one_line(caught, f"s3://{bucket}/in/nope.json")


def test_an_s3_report_is_the_whole_object_at_each_checkpoint_and_a_resume_carries_on(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    place = open_location(f"s3://{bucket}/run")
    report = place.open_report("report.jsonl")
    report.write_line(json.dumps({"id": "a"}))
    assert not place.exists("report.jsonl")  # an object store cannot append: nothing until a checkpoint
    report.checkpoint()
    assert place.read_bytes("report.jsonl") == b'{"id": "a"}\n'
    report.write_line(json.dumps({"id": "b"}))
    report.close()  # the last checkpoint
    assert place.read_bytes("report.jsonl") == b'{"id": "a"}\n{"id": "b"}\n'
    report = place.open_report("report.jsonl", resume=True)
    report.write_line(json.dumps({"id": "c"}))
    report.close()
    assert place.read_bytes("report.jsonl").decode().splitlines() == ['{"id": "a"}', '{"id": "b"}', '{"id": "c"}']


def test_credentials_nested_in_storage_options_are_refused_without_echoing_them() -> None:
    nested = {"client_kwargs": {"aws_access_key_id": "AKIANESTED", "aws_secret_access_key": "hush-nested"}}
    with pytest.raises(StorageError) as caught:
        open_location("s3://bucket/out", storage_options=nested)
    message = _one_line(caught, "s3://bucket/out")
    assert "client_kwargs.aws_access_key_id" in message and "AKIANESTED" not in message and "hush" not in message


@pytest.mark.parametrize(
    "url", ["s3://AKIAX:topsecret@renders/p", "s3://AKIAX@renders/p", "s3://user:topsecret@renders/p/x.png"]
)
def test_credentials_in_a_url_are_refused_and_never_printed(url: str) -> None:
    with pytest.raises(StorageError) as caught:
        open_location(url)
    message = str(caught.value)
    assert "\n" not in message and "credentials" in message, message
    assert "topsecret" not in message and "AKIAX" not in message and "user" not in message.split(":", 1)[0]


@pytest.mark.parametrize(
    "url",
    ["s3://renders/../x/", "s3://renders//x/", "s3://renders/./dot/", "s3:///x/", "s3:///renders/x/", "s3://../x"],
)
def test_a_prefix_with_an_empty_dot_or_dot_dot_part_or_no_bucket_is_refused(url: str) -> None:
    with pytest.raises(StorageError) as caught:
        open_location(url)
    message = str(caught.value)
    assert "\n" not in message and ("no bucket" in message or "empty, . or .. part" in message), message


def test_an_object_url_with_dot_dot_is_refused() -> None:
    with pytest.raises(StorageError) as caught:
        open_object("s3://renders/previews/../a.png")
    assert "empty, . or .. part" in str(caught.value)


def test_a_trailing_slash_is_still_a_plain_prefix() -> None:
    assert open_location("s3://renders/run-1/").url == "s3://renders/run-1"


@pytest.mark.parametrize(
    ("options", "named"), [({"nonsense_option": 1}, "nonsense_option"), ({"endpoint_url": 42}, "")]
)
def test_storage_options_s3fs_cannot_use_are_blamed_on_the_options(
    s3_server: S3Server, options: dict[str, Any], named: str
) -> None:
    bucket = s3_server.new_bucket()
    with pytest.raises(StorageError) as caught:
        open_location(f"s3://{bucket}/out", storage_options=options).check_writable()
    message = _one_line(caught, f"s3://{bucket}/out")
    assert "storage options" in message and named in message, message
