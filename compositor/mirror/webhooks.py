"""Webhooks as upstream sends them (SPEC.md, Webhook): the job's status,
AES-CBC-encrypted with the client's secret and signed with SHA-1, POSTed to
`webhookUrl` and retried with bounded exponential backoff until the receiver
answers HTTP 200. The notices wait in the job store's outbox, so they survive
a restart; they are delivered from a thread of their own, many at once: a
dead or slow receiver never holds up rendering or other receivers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from compositor.mirror.controls import Faults
from compositor.mirror.database import StoreError, now_ms
from compositor.mirror.outbox import Notice, Outbox
from compositor.outbound import OutboundError, OutboundPolicy, new_client, post_json

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
    timeout_s: float = 10.0  # one whole attempt: connect, send, the answer's headers
    concurrency: int = 32  # deliveries under way at once
    per_host: int = 2  # of those, to one receiver (host and port) for one client: a lane
    per_client: int = 8  # of those, for one client's jobs, however many receivers it names

    def delay(self, attempt: int) -> float:
        return float(min(self.first_delay_s * 2 ** (attempt - 1), self.max_delay_s))


class WebhookDispatcher:
    """Delivers the webhook outbox: a thread with an event loop, many
    deliveries at once (at most `per_host` to one receiver and `per_client`
    for one client, so a slow one delays only its own), a job's notices in order, each attempt under one
    deadline, and every attempt recorded in the store, so nothing owed is
    forgotten by a restart."""

    def __init__(
        self,
        outbox: Outbox,
        secret_for: Callable[[str], str | None],
        retry: RetryPolicy,
        network: OutboundPolicy,
        faults: Faults | None = None,
    ) -> None:
        self.retry = retry
        self.faults = faults  # the test controls' rules for the operation "webhook"
        self._outbox = outbox
        self._secret_for = secret_for
        self._network = network
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopped = False
        self._generation = 0  # a reset's count: a delivery begun before one is not made after it
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Look at the outbox now (a job changed state)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(wake.set)

    def forget(self) -> None:
        """Deliveries under way (waiting on a fault's latency) are not made: the test controls' reset."""
        self._generation += 1

    def stop(self) -> None:
        self._stopped = True
        self.wake()
        self._thread.join(timeout=5)

    def _lane_delay_ms(self, failures: int) -> int:
        """How long a lane waits after its receiver failed `failures` times in a row."""
        return int(self.retry.delay(failures) * 1000)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        in_flight: dict[int, Notice] = {}
        tasks: set[asyncio.Task[None]] = set()
        delay = 0.5
        async with new_client() as client:
            while not self._stopped:
                self._wake.clear()
                try:
                    await self._start_due(client, in_flight, tasks)
                    delay = 0.5
                except Exception as exc:  # this loop never ends before the server does
                    reason = exc.reason if isinstance(exc, StoreError) else type(exc).__name__
                    log.error("webhooks: the outbox failed (%s); trying again in %.1f s", reason, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._wake.wait()
            for task in tasks:
                task.cancel()

    async def _start_due(self, client: Any, in_flight: dict[int, Notice], tasks: set[asyncio.Task[None]]) -> None:
        """Start delivering what is due, within the limits: in all, per receiver, per client."""
        free = self.retry.concurrency - len(in_flight)
        if free <= 0:
            return
        lanes = Counter(notice.lane for notice in in_flight.values())
        clients = Counter(notice.client_id for notice in in_flight.values())
        busy_lanes = {lane for lane, count in lanes.items() if count >= self.retry.per_host}
        busy_clients = {c for c, count in clients.items() if count >= self.retry.per_client}
        # Before the read: a reset that lands between reading these notices and delivering them stops them.
        generation = self._generation
        due = await asyncio.to_thread(
            self._outbox.due_notices, now_ms(), busy_lanes, busy_clients, free, set(in_flight), self.retry.per_host
        )
        for notice in due:
            if (
                notice.id in in_flight  # still being delivered: never twice at once
                or lanes[notice.lane] >= self.retry.per_host
                or clients[notice.client_id] >= self.retry.per_client
            ):
                continue
            lanes[notice.lane] += 1
            clients[notice.client_id] += 1
            in_flight[notice.id] = notice
            task = asyncio.create_task(self._deliver(client, notice, generation))
            tasks.add(task)
            task.add_done_callback(functools.partial(self._delivered, tasks, in_flight, notice.id))

    def _delivered(
        self, tasks: set[asyncio.Task[None]], in_flight: dict[int, Notice], notice_id: int, done: asyncio.Task[None]
    ) -> None:
        tasks.discard(done)
        in_flight.pop(notice_id, None)
        if self._wake is not None:
            self._wake.set()

    async def _deliver(self, client: Any, notice: Notice, generation: int) -> None:
        """`generation`: the reset count when `notice` was read."""
        if generation != self._generation:
            return  # forgotten by a reset since it was read
        secret = self._secret_for(notice.client_id)
        status: int | None = None
        error: str | None = None
        receiver_failed = False  # an attempt was made, and the receiver did not take it
        rule = self.faults.fire("webhook", notice.client_id) if self.faults is not None else None
        if rule is not None and rule.latency_ms:
            await asyncio.sleep(rule.latency_ms / 1000)
        if generation != self._generation:
            return  # forgotten by a reset while it waited
        if secret is None:
            error = "the job's client no longer exists"
        elif rule is not None and rule.drop:
            error = f"not sent: fault rule {rule.id}"
        else:
            payload = envelope(notice.job_id, notice.status, notice.result_url, notice.client_id, secret)
            if rule is not None and rule.tamper:  # a well-formed signature of other data: a receiver must refuse it
                payload["signature"] = hashlib.sha1(payload["signature"].encode()).hexdigest()
            try:
                status = await post_json(client, notice.url, payload, self._network)
                if status != 200:
                    error = f"HTTP {status}"
            except OutboundError as exc:
                error = exc.reason
            except Exception:  # whatever the URL makes the client raise: a failed attempt, never a dead loop
                log.exception("webhook for job %s: the attempt failed unexpectedly", notice.job_id)
                error = "could not be delivered"
            receiver_failed = status != 200
        delivered = status == 200
        attempt = notice.attempts + 1
        retry_at = None
        if not delivered and secret is not None and attempt < self.retry.attempts:
            retry_at = now_ms() + int(self.retry.delay(attempt) * 1000)
        elif not delivered:
            log.warning("webhook for job %s abandoned after %d attempt(s): %s", notice.job_id, attempt, error)
        try:
            await asyncio.to_thread(
                self._outbox.notice_attempted,
                notice.id,
                delivered=delivered,
                http_status=status,
                error=error,
                retry_at_ms=retry_at,
                lane_delay_ms=self._lane_delay_ms if receiver_failed else None,
            )
        except StoreError as exc:  # it stays pending as it was: sent again later, at least once
            log.error("webhooks: cannot record a delivery (%s)", exc.reason)
