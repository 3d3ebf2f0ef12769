"""A client for the Background Change API: the local mirror or, unchanged,
upstream. It validates a body locally before spending a call, submits it,
polls with backoff until the job completes or fails, and downloads the result.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from compositor.request import validate

SUBMIT_PATH = "/api/open/v3/content/image/bg/replace"
INFO_PATH = "/api/open/v3/content/image/infobymodelid"
TOKEN_PATH = "/api/open/v3/getToken"
UPLOAD_PATH = "/uploads"  # the mirror's own, for local files


class ApiCallError(Exception):
    """The API (or local pre-flight validation) answered a code other than 1000."""

    def __init__(self, envelope: dict[str, Any]) -> None:
        self.envelope = envelope
        self.code = int(envelope.get("code", 0))
        super().__init__(f"{self.code}: {envelope.get('msg', '')}")


class JobFailedError(ApiCallError):
    """The job ended in status 4; `envelope['data']['error_reasons']` says why."""


class BackgroundChangeClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not api_key and not token:
            raise ValueError("an api_key (x-api-key) or a token (Bearer) is needed")
        self.base_url = base_url.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}"} if token else {"x-api-key": str(api_key)}
        self._http = httpx.Client(timeout=timeout)

    @staticmethod
    def get_token(base_url: str, client_id: str, client_secret: str) -> str:
        answer = httpx.post(
            base_url.rstrip("/") + TOKEN_PATH, json={"clientId": client_id, "clientSecret": client_secret}
        ).json()
        if answer.get("code") != 1000:
            raise ApiCallError(answer)
        return str(answer["token"])

    def submit(self, body: dict[str, Any], *, base_dir: Path | None = None) -> dict[str, Any]:
        """Validate locally, then queue the job; its record (status 1)."""
        report = validate(body)
        if not report.ok:
            raise ApiCallError(report.envelope())
        sent = dict(body)
        for name, (data, kind) in local_sources(body, base_dir).items():
            sent[name] = self._upload(name, data, kind)
        return self._call("POST", SUBMIT_PATH, json=sent)

    def _upload(self, name: str, data: bytes, kind: str) -> str:
        """A local image put on the mirror (its /uploads); the URL to use in
        the body. Upstream has no such endpoint: it wants http(s) URLs."""
        response = self._http.post(
            self.base_url + UPLOAD_PATH, content=data, headers={**self._headers, "content-type": kind}
        )
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if answer.get("code") != 1000:
            raise ApiCallError(
                {
                    "code": answer.get("code", 1003),
                    "msg": f"{name}: a local file can only be sent to the mirror, which failed to take it"
                    f" ({answer.get('msg', f'HTTP {response.status_code}')}); upstream needs an http(s) URL",
                }
            )
        return str(answer["data"]["url"])

    def status(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", INFO_PATH, params={"image_model_id": job_id})

    def wait(self, job_id: str, *, timeout: float = 600, first_delay: float = 0.5, max_delay: float = 5.0) -> dict:
        """Poll until status 3 (the record) or 4 (JobFailedError), backing off
        from `first_delay` to `max_delay` (published clients poll every 3-5 s)."""
        deadline = time.monotonic() + timeout
        delay = first_delay
        while True:
            job = self.status(job_id)
            if job["image_status"] == 3:
                return job
            if job["image_status"] == 4:
                raise JobFailedError({"code": 1206, "msg": "; ".join(job.get("error_reasons", [])), "data": job})
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"job {job_id} still in status {job['image_status']} after {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.6, max_delay)

    def run(self, body: dict[str, Any], *, base_dir: Path | None = None, timeout: float = 600) -> dict[str, Any]:
        return self.wait(self.submit(body, base_dir=base_dir)["_id"], timeout=timeout)

    def download(self, job: dict[str, Any], path: Path) -> Path:
        response = self._http.get(job["image"])
        response.raise_for_status()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(response.content)
        return path

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        answer = self._http.request(method, self.base_url + path, headers=self._headers, **kwargs).json()
        if answer.get("code") != 1000:
            raise ApiCallError(answer)
        return dict(answer["data"])


def local_sources(body: dict[str, Any], base_dir: Path | None) -> dict[str, tuple[bytes, str]]:
    """The body's sources that are local files (paths, file:// URLs), read:
    field name to (bytes, MIME type). Only a regular file that is a whole
    image is read: a body naming ~/.ssh/id_rsa must not send it anywhere, nor
    a text file that starts like a GIF. Each is decoded in full (with the
    renderer's limits) before anything is sent. Raises ValueError naming the
    field otherwise."""
    local = {
        name: value
        for name in ("origin_img", "template_url")
        if isinstance(value := body.get(name), str) and value and not value.startswith(("http://", "https://", "data:"))
    }
    if not local:
        return {}  # and no image library is loaded: a body of URLs is sent as it is
    from compositor.errors import SourceError
    from compositor.sources import SourcePolicy, decode_image, read_source, sniff_type

    policy = SourcePolicy(base_dir=base_dir, allow_http=False)
    found = {}
    for name, value in local.items():
        try:
            data = read_source(value, name, policy)
        except SourceError as exc:
            raise ValueError(str(exc)) from None
        kind = sniff_type(data)
        if not kind.startswith("image/"):
            raise ValueError(f"{name}: is not a PNG, JPEG, WebP or GIF image, so it is not sent")
        try:
            decode_image(data, name, max_pixels=policy.max_pixels).close()
        except SourceError as exc:
            raise ValueError(f"{exc}, so it is not sent") from None
        except MemoryError:
            raise ValueError(f"{name}: is too large to decode here, so it is not sent") from None
        found[name] = (data, kind)
    return found


class MirrorControlError(ValueError):
    """The control plane refused a call: `status` is its HTTP status, `field` the input it names (if any)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status = status
        self.message = message
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class MirrorControl:
    """The mirror's test controls (`/_mirror/`), from Python: the same methods
    as the in-process mock's (`compositor.testing`). `http` is any httpx
    client (the mock passes its in-process one)."""

    def __init__(self, base_url: str, admin_token: str | None = None, *, http: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"x-mirror-admin": admin_token} if admin_token else {}
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=30.0)
        self._headers = headers

    def close(self) -> None:
        """Close the connections this object opened (not those of a client it was given)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> MirrorControl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        for name, value in (body or {}).items():  # JSON has no NaN or infinity: say which field, as the server would
            if isinstance(value, float) and not math.isfinite(value):
                raise MirrorControlError(400, "must be a finite number", name)
        response = self._http.request(method, f"{self.base_url}/_mirror{path}", json=body, headers=self._headers)
        try:
            answer = response.json()
        except ValueError:
            answer = {"error": response.text[:200]}
        if response.status_code >= 400:
            if response.status_code == 404 and "error" not in answer:
                raise MirrorControlError(
                    404, "no such control: are this mirror's test controls on? (a loopback bind, or an admin token)"
                )
            raise MirrorControlError(response.status_code, str(answer.get("error")), answer.get("field"))
        return answer

    def add_fault(self, **rule: Any) -> dict[str, Any]:
        """Add a fault rule (SPEC: operation, client_id, code | http_status | drop | tamper, latency_ms,
        probability, seed, times); the rule as stored, with its `id`."""
        return dict(self._call("POST", "/faults", rule))

    def faults(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/faults")["faults"])

    def remove_fault(self, rule_id: str) -> None:
        if "/" in rule_id:
            raise MirrorControlError(404, f"no fault rule {rule_id!r}", "id")
        self._call("DELETE", f"/faults/{quote(rule_id, safe='')}")

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def set_job_policy(self, **policy: Any) -> dict[str, Any]:
        """queueing_polls, processing_polls, fail (a reason), times; no arguments restore the default."""
        return dict(self._call("POST", "/jobs/policy", policy))

    def fail_job(self, job_id: str, reason: str) -> dict[str, Any]:
        if "/" in job_id:
            raise MirrorControlError(404, f"no job {job_id!r}", "job_id")
        return dict(self._call("POST", f"/jobs/{quote(job_id, safe='')}/fail", {"reason": reason}))

    def jobs(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/jobs")["jobs"])

    def requests(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/requests")["requests"])

    def webhooks(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/webhooks")["deliveries"])

    def reset(self) -> None:
        self._call("POST", "/reset", {})  # a JSON body: an open control plane takes no other kind of POST
