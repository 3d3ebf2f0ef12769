"""Webhooks as upstream sends them (SPEC.md, Webhook): the job's status,
AES-CBC-encrypted with the client's secret and signed with SHA-1, POSTed to
`webhookUrl` and retried with bounded exponential backoff until the receiver
answers HTTP 200. Deliveries run on their own thread: a dead receiver never
holds up rendering or other jobs.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

log = logging.getLogger(__name__)


def encrypt(plaintext: str, client_id: str, client_secret: str) -> str:
    """Base64(AES-CBC(plaintext)), key = the secret's UTF-8 bytes (16, 24 or
    32 of them), iv = the client id's UTF-8 bytes cut or NUL-padded to 16,
    PKCS#7 padding to 16-byte blocks."""
    key = client_secret.encode()
    iv = client_id.encode()[:16].ljust(16, b"\0")
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def sign(client_id: str, timestamp: str, nonce: str, data_encrypt: str) -> str:
    """SHA-1 hex of the four strings sorted and joined without a separator."""
    return hashlib.sha1("".join(sorted([client_id, timestamp, nonce, data_encrypt])).encode()).hexdigest()


def envelope(job_id: str, status: int, url: str | None, client_id: str, client_secret: str) -> dict[str, Any]:
    message: dict[str, Any] = {"_id": job_id, "status": status, "type": "background change"}
    if status == 3 and url:
        message["url"] = url
    data_encrypt = encrypt(json.dumps(message), client_id, client_secret)
    timestamp = int(time.time() * 1000)
    nonce = secrets.token_hex(8)
    return {
        "signature": sign(client_id, str(timestamp), nonce, data_encrypt),
        "dataEncrypt": data_encrypt,
        "timestamp": timestamp,
        "nonce": nonce,
    }


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    first_delay_s: float = 1.0
    max_delay_s: float = 60.0
    timeout_s: float = 10.0

    def delay(self, attempt: int) -> float:
        return float(min(self.first_delay_s * 2 ** (attempt - 1), self.max_delay_s))


@dataclass(order=True)
class _Delivery:
    due: float
    order: int
    url: str = field(compare=False)
    payload: dict[str, Any] = field(compare=False)
    attempt: int = field(compare=False, default=1)


class WebhookSender:
    """A thread that delivers payloads in order of due time, with retries."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self._queue: list[_Delivery] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopped = False
        self.delivered = 0
        self.abandoned = 0
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def send(self, url: str, payload: dict[str, Any]) -> None:
        with self._wake:
            heapq.heappush(self._queue, _Delivery(time.monotonic(), next(self._order), url, payload))
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.policy.timeout_s) as http:
            while True:
                with self._wake:
                    while not self._stopped and (not self._queue or self._queue[0].due > time.monotonic()):
                        wait = self._queue[0].due - time.monotonic() if self._queue else None
                        self._wake.wait(timeout=wait)
                    if self._stopped:
                        return
                    delivery = heapq.heappop(self._queue)
                self._attempt(http, delivery)

    def _attempt(self, http: Any, delivery: _Delivery) -> None:
        try:
            status = http.post(delivery.url, json=delivery.payload).status_code
        except Exception as exc:  # any transport failure is a failed attempt
            status = f"{type(exc).__name__}"
        if status == 200:
            self.delivered += 1
            return
        if delivery.attempt >= self.policy.attempts:
            self.abandoned += 1
            log.warning("webhook to %s abandoned after %d attempts (last: %s)", delivery.url, delivery.attempt, status)
            return
        delivery.due = time.monotonic() + self.policy.delay(delivery.attempt)
        delivery.attempt += 1
        with self._wake:
            heapq.heappush(self._queue, delivery)
