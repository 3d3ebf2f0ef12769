"""s3:// sources (issue 23): a body's `origin_img` and `template_url` may name
objects in S3 or an S3-compatible store, read through `compositor.storage`
with the credentials of whoever runs the command (AWS_* variables, profiles),
never from the body. `render`, `validate --sources` (and `batch`) read them;
the mirror only with its `allow_object_storage` setting. Everything runs
against moto's S3 server on loopback (tests/s3_server.py), keys checked."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from compositor.cli import main
from compositor.engine import RenderOptions, render_array
from compositor.errors import SourceError
from compositor.mirror import config
from compositor.preflight import read_header
from compositor.references import check_source_reference
from compositor.request import validate
from compositor.sourcemap import SourceMap
from compositor.sources import SourcePolicy, read_prefix, read_source
from tests import s3_server as _s3
from tests.conftest import FIXTURES
from tests.inprocess import INFO, KEY, SUBMIT, in_process_mirror
from tests.s3_server import S3Server

REPO = Path(__file__).resolve().parent.parent
FOREGROUND = FIXTURES / "images" / "foreground.png"
TEMPLATE = FIXTURES / "images" / "template.jpg"
S3 = SourcePolicy(object_storage=True)  # what render and validate --sources read with
s3_server = _s3.s3_server  # the fixture: moto's S3 server on loopback, once for this module


def _noise_png() -> bytes:
    """A 2000x2000 grey PNG of noise, stored uncompressed: 4 MB, its header in its first 100 bytes."""
    buffer = io.BytesIO()
    Image.effect_noise((2000, 2000), 64).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


@dataclass(frozen=True)
class Objects:
    bucket: str
    folder: Path  # the same images as local files
    noise: bytes

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/images/{name}"


@pytest.fixture(scope="module")
def objects(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Objects:
    bucket = s3_server.new_bucket()
    folder = tmp_path_factory.mktemp("images")
    noise = _noise_png()
    client = s3_server.client()
    for name, data in (("fg.png", FOREGROUND.read_bytes()), ("bg.jpg", TEMPLATE.read_bytes()), ("noise.png", noise)):
        client.put_object(Bucket=bucket, Key=f"images/{name}", Body=data)
        (folder / name).write_bytes(data)
    return Objects(bucket, folder, noise)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every S3 call s3fs makes from here on: its operation and its parameters."""
    from aiobotocore.client import AioBaseClient

    recorded: list[tuple[str, dict[str, Any]]] = []
    real = AioBaseClient._make_api_call

    async def recording(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        recorded.append((operation_name, dict(api_params)))
        return await real(self, operation_name, api_params)

    monkeypatch.setattr(AioBaseClient, "_make_api_call", recording)
    yield recorded


def _body(origin_img: str, template_url: str) -> dict[str, Any]:
    return {
        "canvas_size": "240x200",
        "color_code": "#336699",
        "template_url": template_url,
        "modify_template_size": "240x267",
        "overlay_template_x": 0,
        "overlay_template_y": -20,
        "origin_img": origin_img,
        "modify_origin_img_size": "120x150",
        "overlay_origin_x": 60,
        "overlay_origin_y": 40,
    }


def _write(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(json.dumps(body))
    return path


def _one_line(exc: pytest.ExceptionInfo[SourceError], field: str, url: str) -> str:
    assert exc.value.code == 1108 and exc.value.field == field
    message = str(exc.value)
    assert "\n" not in message and url in message, message
    return message


# --- what a body may name ---------------------------------------------------------------------------------------------


def test_an_s3_url_is_a_valid_source_reference() -> None:
    """The engine's validation takes s3:// as it takes a path or a file:// URL: whether it may be read is
    the source policy's question, at the render (1108), never a 1003 for a body render would accept."""
    body = _body("s3://renders/in/fg.png", "s3://renders.example/in/a b/bg.jpg")
    assert validate(body).ok


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("s3://", "bucket"),
        ("s3://bucket", "key"),
        ("s3://bucket/", "key"),
        ("s3://bucket/dir/", "key"),
        ("s3://bucket/a//b.png", "key"),
        ("s3://bucket/a/../b.png", "key"),
        ("s3://b/key.png", "bucket"),
        ("s3:bucket/key.png", "s3://bucket/key"),
        ("s3://bucket/a\nb.png", "control character"),
    ],
)
def test_an_s3_url_without_a_bucket_and_an_object_is_refused(ref: str, reason: str) -> None:
    problem = check_source_reference(ref)
    assert problem is not None and reason in problem
    assert [p.field for p in validate(_body(ref, "s3://bucket/bg.jpg")).errors] == ["origin_img"]


def test_an_s3_url_may_not_carry_credentials() -> None:
    problem = check_source_reference("s3://AKIAEXAMPLE:hunter2-secret@bucket/fg.png")
    assert problem is not None and "credentials" in problem and "hunter2" not in problem


def test_validate_without_sources_calls_an_s3_body_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = _write(tmp_path / "body.json", _body("s3://renders/fg.png", "s3://renders/bg.jpg"))
    assert main(["validate", str(request), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["code"] == 1000


# --- render -----------------------------------------------------------------------------------------------------------


def test_a_render_of_s3_sources_equals_the_render_of_the_same_files(objects: Objects, tmp_path: Path) -> None:
    from_s3 = _write(tmp_path / "s3.json", _body(objects.url("fg.png"), objects.url("bg.jpg")))
    local = _write(tmp_path / "local.json", _body(str(objects.folder / "fg.png"), str(objects.folder / "bg.jpg")))
    assert main(["render", str(from_s3), "-o", str(tmp_path / "s3.png")]) == 0
    assert main(["render", str(local), "-o", str(tmp_path / "local.png")]) == 0
    with Image.open(tmp_path / "s3.png") as a, Image.open(tmp_path / "local.png") as b:
        assert a.size == b.size == (240, 200)
        assert np.array_equal(np.asarray(a), np.asarray(b))


def _object(server: S3Server, bucket: str, key: str) -> bytes:
    return bytes(server.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def _keys(server: S3Server, bucket: str) -> list[str]:
    return sorted(entry["Key"] for entry in server.client().list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.mark.parametrize("low_memory", [False, True], ids=["whole", "low-memory"])
def test_render_writes_one_object_equal_to_the_file_it_would_write(
    objects: Objects, s3_server: S3Server, tmp_path: Path, calls: list[tuple[str, dict[str, Any]]], low_memory: bool
) -> None:
    request = _write(tmp_path / "s3.json", _body(objects.url("fg.png"), objects.url("bg.jpg")))
    bucket = s3_server.new_bucket()
    extra = ["--low-memory"] if low_memory else []
    assert main(["render", str(request), "-o", f"s3://{bucket}/out/a.png", *extra]) == 0
    assert main(["render", str(request), "-o", str(tmp_path / "a.png"), *extra]) == 0
    assert _object(s3_server, bucket, "out/a.png") == (tmp_path / "a.png").read_bytes()
    puts = [params["Key"] for operation, params in calls if operation == "PutObject"]
    assert puts.count("out/a.png") == 1  # one PUT: the object appears whole or not at all
    assert not any(operation.startswith(("CreateMultipart", "UploadPart")) for operation, _ in calls)
    assert _keys(s3_server, bucket) == ["out/a.png"]  # the probe that proved the bucket writable is gone


def test_render_into_a_missing_bucket_is_exit_2_naming_it_before_any_source_is_read(
    objects: Objects, tmp_path: Path, calls: list[tuple[str, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    request = _write(tmp_path / "s3.json", _body(objects.url("fg.png"), objects.url("bg.jpg")))
    assert main(["render", str(request), "-o", "s3://no-such-bucket-here/out/a.png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compositor: cannot write s3://no-such-bucket-here/out: the bucket does not exist"), err
    assert err.count("\n") == 1
    assert not any(params.get("Key", "").startswith("images/") for _, params in calls)  # no source was read


def test_render_with_read_only_keys_is_exit_2_naming_the_url(
    objects: Objects, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    bucket = s3_server.new_bucket()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.reader_key[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.reader_key[1])
    request = _write(tmp_path / "s3.json", _body(objects.url("fg.png"), objects.url("bg.jpg")))
    assert main(["render", str(request), "-o", f"s3://{bucket}/a.png"]) == 2
    err = capsys.readouterr().err
    assert err == f"compositor: cannot write s3://{bucket}: access denied: these credentials may not do this here\n"
    assert _keys(s3_server, bucket) == []


@pytest.mark.parametrize("output", ["s3://", "s3://bucket-only", "s3://bucket/prefix/"])
def test_render_to_a_url_that_names_no_object_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str
) -> None:
    request = _write(tmp_path / "body.json", _body(str(FOREGROUND), str(TEMPLATE)))
    assert main(["render", str(request), "-o", output]) == 2
    assert (
        capsys.readouterr().err == f"compositor: cannot use {output}: names no object: give its name after the"
        " prefix (s3://bucket/prefix/name.png)\n"
    )


def test_a_failed_render_leaves_no_object(objects: Objects, s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    request = _write(tmp_path / "body.json", _body(objects.url("fg.png"), objects.url("gone.jpg")))
    assert main(["render", str(request), "-o", f"s3://{bucket}/a.png"]) == 2
    assert _keys(s3_server, bucket) == []


def test_storage_options_reach_the_store(
    objects: Objects, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    request = _write(tmp_path / "s3.json", _body(objects.url("fg.png"), objects.url("bg.jpg")))
    options = json.dumps({"endpoint_url": s3_server.endpoint})
    assert main(["render", str(request), "-o", str(tmp_path / "out.png"), "--storage-options", options]) == 0
    assert main(["validate", str(request), "--sources", "--storage-options", options]) == 0


def test_a_missing_object_is_a_1108_on_its_field_naming_the_url(
    objects: Objects, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = objects.url("gone.jpg")
    with pytest.raises(SourceError) as caught:
        render_array(_body(objects.url("fg.png"), missing), options=RenderOptions(sources=S3))
    assert "not found" in _one_line(caught, "template_url", missing)
    request = _write(tmp_path / "body.json", _body(objects.url("fg.png"), missing))
    assert main(["render", str(request), "-o", str(tmp_path / "out.png")]) == 2
    assert capsys.readouterr().err == f"compositor: template_url: cannot read {missing}: not found\n"
    assert not (tmp_path / "out.png").exists()


def test_a_missing_bucket_is_a_1108_on_its_field_naming_the_url(objects: Objects) -> None:
    missing = "s3://no-such-bucket-here/images/fg.png"
    with pytest.raises(SourceError) as caught:
        render_array(_body(missing, objects.url("bg.jpg")), options=RenderOptions(sources=S3))
    assert "the bucket does not exist" in _one_line(caught, "origin_img", missing)


@pytest.mark.parametrize("variable", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_wrong_credentials_are_a_1108_that_shows_no_secret(
    objects: Objects, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    wrong = "WRONGwrongWRONGwrong0123456789secret"
    monkeypatch.setenv(variable, wrong)
    url = objects.url("fg.png")
    with pytest.raises(SourceError) as caught:
        render_array(_body(url, objects.url("bg.jpg")), options=RenderOptions(sources=S3))
    message = _one_line(caught, "template_url", objects.url("bg.jpg"))  # the template is read first
    assert "credentials" in message or "access denied" in message
    for secret in (wrong, s3_server.secret_key):
        assert secret not in message


# --- the policy -------------------------------------------------------------------------------------------------------


def test_a_policy_without_object_storage_refuses_s3_unread(calls: list[tuple[str, dict[str, Any]]]) -> None:
    for policy in (SourcePolicy(), SourcePolicy(file_roots=(), allow_http=False)):
        with pytest.raises(SourceError) as caught:
            read_source("s3://renders/fg.png", "origin_img", policy)
        assert caught.value.code == 1108 and "is an s3:// URL, which this service does not read" in str(caught.value)
    assert calls == []


def test_a_source_map_sends_an_s3_url_to_a_local_file(tmp_path: Path) -> None:
    (tmp_path / "fg.png").write_bytes(FOREGROUND.read_bytes())
    mapped = SourcePolicy(source_map=SourceMap.from_entries({"s3://renders/in/": tmp_path}))  # no object storage
    assert read_source("s3://renders/in/fg.png", "origin_img", mapped) == FOREGROUND.read_bytes()


def test_the_byte_limit_holds_for_an_s3_source_before_it_is_read(
    objects: Objects, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    limited = replace(S3, max_bytes=len(objects.noise) // 2)
    url = objects.url("noise.png")
    for read in (
        lambda: read_source(url, "origin_img", limited),
        lambda: read_prefix(url, "origin_img", limited, 64 * 1024),
        lambda: read_header(url, "origin_img", limited),
    ):
        with pytest.raises(SourceError) as caught:
            read()
        assert caught.value.reason == f"is larger than the limit of {limited.max_bytes} bytes"
    assert {operation for operation, _ in calls} == {"HeadObject"}  # refused by its size: never fetched
    assert read_source(url, "origin_img", S3) == objects.noise


# --- pre-flight -------------------------------------------------------------------------------------------------------


def test_preflight_reads_only_a_prefix_of_an_s3_object(
    objects: Objects, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    url = objects.url("noise.png")
    assert read_header(url, "origin_img", S3) == read_header(str(objects.folder / "noise.png"), "origin_img", S3)
    gets = [params for operation, params in calls if operation == "GetObject"]
    assert [params.get("Range") for params in gets] == ["bytes=0-65535"]
    assert read_prefix(url, "origin_img", S3, 1000) == (objects.noise[:1000], False, False)
    assert read_prefix(url, "origin_img", S3, 10 * len(objects.noise)) == (objects.noise, True, False)


def test_validate_sources_gives_an_s3_body_the_same_verdict_as_its_files(
    objects: Objects, tmp_path: Path, capsys: pytest.CaptureFixture[str], calls: list[tuple[str, dict[str, Any]]]
) -> None:
    # A stretched foreground, so that the headers' warnings show: 2000x2000 drawn as 120x150.
    from_s3 = _write(tmp_path / "s3.json", _body(objects.url("noise.png"), objects.url("bg.jpg")))
    local = _write(tmp_path / "local.json", _body(str(objects.folder / "noise.png"), str(objects.folder / "bg.jpg")))
    assert main(["validate", str(from_s3), "--sources", "--json"]) == 0
    seen = json.loads(capsys.readouterr().out)
    assert main(["validate", str(local), "--sources", "--json"]) == 0
    assert seen == json.loads(capsys.readouterr().out)
    assert "modify_origin_img_size" in [warning["field"] for warning in seen["data"]["warnings"]]
    assert all(params.get("Range") for operation, params in calls if operation == "GetObject")


def test_validate_sources_says_1108_for_a_missing_object(
    objects: Objects, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = objects.url("gone.png")
    request = _write(tmp_path / "body.json", _body(missing, objects.url("bg.jpg")))
    assert main(["validate", str(request), "--sources", "--json"]) == 1
    envelope = json.loads(capsys.readouterr().out)
    assert envelope["code"] == 1108
    assert envelope["data"]["errors"] == [{"field": "origin_img", "message": f"cannot read {missing}: not found"}]


# --- the mirror -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "environ", "file", "allowed"),
    [
        ({}, {}, "", False),
        ({"allow_object_storage": "true"}, {}, "", True),
        ({}, {"COMPOSITOR_ALLOW_OBJECT_STORAGE": "1"}, "", True),
        ({}, {}, "allow_object_storage = true\n", True),
        ({"allow_object_storage": "false"}, {"COMPOSITOR_ALLOW_OBJECT_STORAGE": "true"}, "", False),
    ],
)
def test_the_mirror_reads_object_storage_only_where_its_setting_says(
    tmp_path: Path, flags: dict[str, str], environ: dict[str, str], file: str, allowed: bool
) -> None:
    if file:
        (tmp_path / "mirror.toml").write_text(file)
        flags = {**flags, "config": str(tmp_path / "mirror.toml")}
    loaded = config.load({"data_dir": tmp_path / "data", **flags}, environ=environ)
    assert loaded.settings.allow_object_storage is allowed
    assert loaded.settings.sources.object_storage is allowed


@pytest.mark.parametrize("allowed", [False, True])
def test_a_mirror_job_naming_s3_renders_only_with_the_setting(objects: Objects, tmp_path: Path, allowed: bool) -> None:
    flags: dict[str, Any] = {"data_dir": tmp_path / "config", "allow_object_storage": "true" if allowed else None}
    settings = config.load(flags, environ={}).settings
    with in_process_mirror(tmp_path / "data", allow_object_storage=settings.allow_object_storage) as (_, client):
        body = _body(objects.url("fg.png"), objects.url("bg.jpg"))
        accepted = client.request("POST", SUBMIT, headers=KEY, content=json.dumps(body)).json()
        assert accepted["code"] == 1000, accepted  # the body is valid: whether it can be read is the render's
        polled = client.request("GET", INFO, headers=KEY, params={"image_model_id": accepted["data"]["_id"]}).json()
    record = polled["data"]
    if allowed:
        assert record["image_status"] == 3, record
    else:
        assert record["image_status"] == 4
        [reason] = record["error_reasons"]  # the template is read first
        assert reason == "template_url: is an s3:// URL, which this service does not read (object storage is off)"


# --- imports ----------------------------------------------------------------------------------------------------------


def test_local_sources_never_import_fsspec(tmp_path: Path) -> None:
    request = _write(tmp_path / "body.json", _body(str(FOREGROUND), str(TEMPLATE)))
    code = f"""
import sys
from compositor.cli import main
assert main(["render", {str(request)!r}, "-o", {str(tmp_path / "out.png")!r}]) == 0
assert main(["validate", {str(request)!r}, "--sources"]) == 0
print(sorted(m for m in ("fsspec", "s3fs", "botocore", "aiobotocore", "boto3") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
