"""Where the server's settings come from: flags, then environment variables
(COMPOSITOR_*), then a TOML config file, then defaults."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compositor.mirror.models import Client
from compositor.mirror.service import MirrorSettings
from compositor.mirror.webhooks import RetryPolicy

DEFAULT_PORT = 8080
FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures"


def example_request(data_dir: Path) -> Path | None:
    """Documented example 3 with file:// URLs to the checkout's fixtures,
    written into the data dir for the banner's curl line."""
    source = FIXTURES / "requests" / "example-3-template-and-color.json"
    if not source.exists():
        return None
    body = json.loads(source.read_text())
    for name in ("origin_img", "template_url"):
        body[name] = (source.parent / body[name]).resolve().as_uri()
    target = data_dir / "example-request.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(body, indent=2) + "\n")
    return target


class ConfigError(Exception):
    """Settings that cannot be served."""


@dataclass(frozen=True)
class ServeConfig:
    host: str
    port: int
    settings: MirrorSettings
    development_client: Client | None  # made for a loopback server with no client configured


def parse_client(text: str) -> Client:
    """`ID:SECRET` (the secret itself may not contain a colon)."""
    client_id, sep, secret = text.partition(":")
    if not sep:
        raise ConfigError(f"--client wants ID:SECRET, got {text!r}")
    try:
        return Client(client_id, secret)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(flags: dict[str, Any], environ: dict[str, str] | None = None) -> ServeConfig:
    environ = dict(os.environ) if environ is None else environ
    config_path = flags.get("config") or environ.get("COMPOSITOR_CONFIG")
    file: dict[str, Any] = tomllib.loads(Path(config_path).read_text()) if config_path else {}

    def pick(name: str, env: str, default: Any, convert: Any = str) -> Any:
        if flags.get(name) is not None:
            return flags[name]
        if env in environ:
            return convert(environ[env])
        return file.get(name, default)

    host = pick("host", "COMPOSITOR_HOST", "127.0.0.1")
    port = int(pick("port", "COMPOSITOR_PORT", DEFAULT_PORT, int))
    data_dir = Path(pick("data_dir", "COMPOSITOR_DATA_DIR", "data"))
    workers = int(pick("workers", "COMPOSITOR_WORKERS", os.cpu_count() or 1, int))
    ttl = float(pick("result_ttl", "COMPOSITOR_RESULT_TTL", 7 * 24 * 3600, float))
    public_url = pick("public_url", "COMPOSITOR_PUBLIC_URL", None)
    roots = flags.get("allow_file_root") or [p for p in environ.get("COMPOSITOR_FILE_ROOTS", "").split(":") if p]
    roots = roots or file.get("allow_file_roots", [])

    clients = [parse_client(c) for c in flags.get("client") or []]
    if not clients and environ.get("COMPOSITOR_CLIENTS"):
        clients = [parse_client(c) for c in environ["COMPOSITOR_CLIENTS"].split(",") if c]
    if not clients:
        for entry in file.get("client", []):
            try:
                clients.append(
                    Client(
                        entry["id"],
                        entry["secret"],
                        banned=bool(entry.get("banned", False)),
                        quota=entry.get("quota"),
                        rate_limit_per_minute=entry.get("rate_limit_per_minute"),
                    )
                )
            except (KeyError, ValueError) as exc:
                raise ConfigError(f"bad [[client]] entry in {config_path}: {exc}") from None

    development = None
    if not clients:
        if not is_loopback(host):
            raise ConfigError(f"refusing to serve {host} with no client configured: pass --client ID:SECRET")
        development = development_client(data_dir)
        clients = [development]
        # Development mode may read the checkout's own fixtures, so the printed
        # curl line works as it is.
        if FIXTURES.is_dir():
            roots = [*roots, str(FIXTURES)]

    if len({c.client_id for c in clients}) != len(clients):
        raise ConfigError("two clients share an id")
    display_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    settings = MirrorSettings(
        data_dir=data_dir,
        clients=tuple(clients),
        public_base_url=(public_url or f"http://{display_host}:{port}").rstrip("/"),
        workers=max(1, workers),
        result_ttl_s=ttl,
        file_roots=tuple(Path(p).resolve() for p in roots),
        expiry_interval_s=float(file.get("expiry_interval_s", 60.0)),
        webhook_retry=RetryPolicy(
            attempts=int(file.get("webhook_attempts", 8)),
            first_delay_s=float(file.get("webhook_first_delay_s", 1.0)),
            max_delay_s=float(file.get("webhook_max_delay_s", 60.0)),
        ),
    )
    return ServeConfig(host, port, settings, development)


def development_client(data_dir: Path) -> Client:
    """A client for local use, kept in the data dir so its key survives restarts."""
    path = data_dir / "development-client.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return Client(saved["clientId"], saved["clientSecret"])
    data_dir.mkdir(parents=True, exist_ok=True)
    client = Client("local-dev", secrets.token_hex(16))
    path.write_text(json.dumps({"clientId": client.client_id, "clientSecret": client.client_secret}))
    path.chmod(0o600)
    return client
