"""Accounts: the clients, their secrets and tokens, and how often each may call."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass

import jwt

from compositor.errors import ApiCode
from compositor.mirror.api_error import ApiError

CREDITS_PER_JOB = 4  # the docs' deduction_credit
TOKEN_LIFETIME_S = 400 * 24 * 3600  # upstream tokens are valid for more than a year


@dataclass(frozen=True)
class Client:
    client_id: str
    client_secret: str
    banned: bool = False
    quota: int | None = None  # credits; None: unlimited
    rate_limit_per_minute: int | None = None

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("a client needs an id")
        if len(self.client_secret.encode()) not in (16, 24, 32):
            # Webhooks are AES-encrypted with the secret as the key (SPEC.md).
            raise ValueError(f"client {self.client_id!r}: the secret must be 16, 24 or 32 bytes (an AES key)")

    @property
    def uid(self) -> int:
        return zlib.crc32(self.client_id.encode()) % 1_000_000


class Accounts:
    """Who may call, with which credentials, how often."""

    def __init__(self, clients: list[Client], signing_key: bytes, *, open_registration: bool = False) -> None:
        self._by_id = {c.client_id: c for c in clients}
        self._by_secret = {c.client_secret: c for c in clients}
        self._signing_key = signing_key
        self._recent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        # The mock's accounts: as moto takes any credentials, any key or well-formed secret is a client.
        self._open = open_registration

    def _register(self, client_id: str, client_secret: str) -> Client | None:
        try:
            client = Client(client_id, client_secret)
        except ValueError:
            return None
        with self._lock:
            known = self._by_id.setdefault(client_id, client)
            self._by_secret.setdefault(client_secret, known)
        return known

    def issue_token(self, client_id: object, client_secret: object) -> str:
        client = self._by_id.get(client_id) if isinstance(client_id, str) else None
        if client is None and self._open and isinstance(client_id, str) and isinstance(client_secret, str):
            client = self._register(client_id, client_secret)
        if (
            client is None
            or not isinstance(client_secret, str)
            or not secrets.compare_digest(client.client_secret.encode(), client_secret.encode("utf-8", "surrogatepass"))
        ):
            raise ApiError(ApiCode.INVALID_AUTHORIZATION, "invalid clientId or clientSecret")
        now = int(time.time())
        claims = {"clientId": client.client_id, "iat": now, "exp": now + TOKEN_LIFETIME_S}
        return jwt.encode(claims, self._signing_key, algorithm="HS256")

    def authenticate(self, authorization: str | None, api_key: str | None) -> Client:
        """The calling client. `Authorization` wins over `x-api-key` when both
        are present (SPEC.md, Auth)."""
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(ApiCode.INVALID_AUTHORIZATION, "Authorization must be 'Bearer TOKEN'")
            try:
                claims = jwt.decode(token.strip(), self._signing_key, algorithms=["HS256"])
            except jwt.ExpiredSignatureError:
                raise ApiError(ApiCode.INVALID_AUTHORIZATION, "the token has expired") from None
            except jwt.InvalidTokenError:
                raise ApiError(ApiCode.INVALID_AUTHORIZATION, "invalid token") from None
            client = self._by_id.get(claims.get("clientId", ""))
            if client is None:
                raise ApiError(ApiCode.INVALID_AUTHORIZATION, "the token's client no longer exists")
        elif api_key:
            client = self._by_secret.get(api_key)
            if client is None and self._open:
                client = self._register(*open_client(api_key))
            if client is None:
                raise ApiError(ApiCode.INVALID_AUTHORIZATION, "invalid x-api-key")
        else:
            raise ApiError(ApiCode.AUTHORIZATION_EMPTY, "authorization cannot be empty")
        if client.banned:
            raise ApiError(ApiCode.ACCOUNT_BANNED, "the account has been banned")
        return client

    def check_rate(self, client: Client, now: float | None = None) -> None:
        """A sliding one-minute window per client."""
        if client.rate_limit_per_minute is None:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = self._recent.setdefault(client.client_id, deque())
            while recent and recent[0] <= now - 60:
                recent.popleft()
            if len(recent) >= client.rate_limit_per_minute:
                raise ApiError(ApiCode.TOO_FREQUENT, "operation is too frequent")
            recent.append(now)

    def get(self, client_id: str) -> Client | None:
        return self._by_id.get(client_id)

    def forget_rates(self) -> None:
        with self._lock:
            self._recent.clear()


def open_client(api_key: str) -> tuple[str, str]:
    """The client id and webhook secret the mock gives a key it has not seen:
    the id is derived from the key (so a journal shows no key); the secret is
    the key itself when it is an AES key length (16, 24 or 32 bytes), as
    upstream's keys are, else 32 characters derived from it."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    secret = api_key if len(api_key.encode()) in (16, 24, 32) else digest[:32]
    return f"key-{digest[:12]}", secret
