"""A client for the Background Change API: the local mirror or, unchanged,
upstream. It validates a body locally before spending a call, submits it,
polls with backoff until the job completes or fails, and downloads the result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

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
    field name to (bytes, MIME type). Only a regular file that is an image
    is read: a body naming ~/.ssh/id_rsa must not send it anywhere. Raises
    ValueError naming the field otherwise."""
    from compositor.errors import SourceError
    from compositor.sources import SourcePolicy, read_source, sniff_type

    found = {}
    for name in ("origin_img", "template_url"):
        value = body.get(name)
        if not isinstance(value, str) or not value or value.startswith(("http://", "https://", "data:")):
            continue
        try:
            data = read_source(value, name, SourcePolicy(base_dir=base_dir, allow_http=False))
        except SourceError as exc:
            raise ValueError(str(exc)) from None
        kind = sniff_type(data)
        if not kind.startswith("image/"):
            raise ValueError(f"{name}: is not a PNG, JPEG, WebP or GIF image, so it is not sent")
        found[name] = (data, kind)
    return found
