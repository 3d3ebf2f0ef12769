"""Where the server's settings come from: flags, then environment variables
(COMPOSITOR_*), then a TOML config file, then defaults."""

from __future__ import annotations

import json
import math
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compositor import text
from compositor.budget import MB
from compositor.mirror.accounts import Client
from compositor.mirror.controls import ControlInputError, load_scenario
from compositor.mirror.service import MirrorSettings
from compositor.mirror.settings import BY_KEY, threshold_values
from compositor.mirror.webhooks import RetryPolicy
from compositor.outbound import is_loopback_name
from compositor.preflight import PreflightThresholds
from compositor.sourcemap import SourceMap, SourceMapError, load_source_map
from compositor.storage import StorageError, open_location
from compositor.weights import model_names

_TABLES = object()  # pick()'s default: the settings table's value
FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures"


def example_request() -> Path | None:
    """Documented example 3, verbatim, for the banner's curl line: its CDN URLs
    render through the fixtures' source map, which development mode loads."""
    source = FIXTURES / "requests" / "example-3-template-and-color.json"
    return source if source.exists() else None


class ConfigError(Exception):
    """Settings that cannot be served."""


@dataclass(frozen=True)
class ServeConfig:
    host: str
    port: int
    settings: MirrorSettings
    development_client: Client | None  # made for a loopback server with no client configured
    development_client_is_new: bool = False  # made just now: its key may be shown, this once


def parse_client(text: str, origin: str = "--client") -> Client:
    """`ID:SECRET` (the secret itself may not contain a colon). The error
    names where the text came from, and never the secret."""
    client_id, sep, secret = text.partition(":")
    if not sep:
        raise ConfigError(f"{origin} wants ID:SECRET, got an entry without a colon")
    try:
        return Client(client_id, secret)
    except ValueError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    origins = f"--{name.replace('_', '-')}, {_env(name)} or the config file's {name}"
    raise ConfigError(f"{origins}: expected true or false, got {value!r}")


def load(flags: dict[str, Any], environ: dict[str, str] | None = None) -> ServeConfig:
    environ = dict(os.environ) if environ is None else environ
    _refuse_invalid_text(flags, environ)
    config_path = flags.get("config") or environ.get(_env("config"))
    file = _read_config_file(Path(config_path)) if config_path else {}

    def pick(name: str, default: Any = _TABLES, convert: Any = str) -> Any:
        """A setting (`settings.py`): its flag, else its variable, else the config file, else `default` (the
        table's value unless worked out here)."""
        if default is _TABLES:
            default = BY_KEY[name].value
        env = _env(name)
        if flags.get(name) is not None:
            return flags[name]
        if env in environ:
            return convert(environ[env])
        return file.get(name, default)

    host = pick("host")
    port = int(pick("port", convert=int))
    data_dir = Path(pick("data_dir"))
    workers = int(pick("workers", os.cpu_count() or 1, int))
    ttl = float(pick("result_ttl", convert=float))
    public_url = pick("public_url", None)
    roots = flags.get("allow_file_root") or [p for p in environ.get(_env("allow_file_roots"), "").split(":") if p]
    roots = roots or file.get("allow_file_roots", [])
    # Sources and webhooks on loopback or private addresses: only this machine
    # can call a loopback-bound server, so there they are its user's own.
    allow_private = _flag(pick("allow_private_networks", is_loopback_name(host)), "allow_private_networks")
    # s3:// sources, read with the operator's own credentials: only where the operator says so.
    allow_object_storage = _flag(pick("allow_object_storage"), "allow_object_storage")
    budget_mb = float(pick("memory_budget_mb", convert=float))
    if not math.isfinite(budget_mb) or budget_mb < 0:
        raise ConfigError(f"the memory budget must be a number of MB, 0 or more, not {budget_mb}")
    if not 0 < port < 65536:
        raise ConfigError(f"the port must be from 1 to 65535, not {port}")
    page_hosts = tuple(flags.get("page_host") or file.get("page_hosts", []))
    # Results in a folder or a bucket: the URL and its options checked here (a scheme not supported, keys in the
    # options), in one line; whether the bucket can be written is proven when the mirror starts.
    results = pick("results", None)
    results = str(results) if results not in (None, "") else None
    storage_options = _storage_options(flags, environ, file)
    if results is not None:
        try:
            open_location(results, storage_options)
        except StorageError as exc:
            raise ConfigError(str(exc)) from None
    map_path = pick("source_map", None)
    try:
        source_map = load_source_map(Path(map_path)) if map_path else SourceMap()
    except SourceMapError as exc:
        raise ConfigError(str(exc)) from None

    clients = [parse_client(c) for c in flags.get("client") or []]
    if not clients and environ.get(_env("client")):
        clients = [parse_client(c, _env("client")) for c in environ[_env("client")].split(",") if c]
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
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(f"bad [[client]] entry in {config_path}: {exc}") from None

    development = None
    development_is_new = False
    if not clients:
        if not is_loopback_name(host):
            raise ConfigError(f"refusing to serve {host} with no client configured: pass --client ID:SECRET")
        development, development_is_new = development_client(data_dir)
        clients = [development]
        # Development mode reads the checkout's own fixtures, and maps the
        # documented bodies' CDN URLs to them, so the printed curl line and the
        # page's examples work as they are, offline.
        if FIXTURES.is_dir():
            roots = [*roots, str(FIXTURES)]
            if (FIXTURES / "source-map.json").is_file():
                source_map = load_source_map(FIXTURES / "source-map.json").merged(source_map)

    model = pick("model")
    known_models = model_names()
    if model not in known_models:
        raise ConfigError(f"unknown removeBg model {model!r}; known: {', '.join(known_models)}")
    admin_token = pick("admin_token", None) or None
    if admin_token is not None and len(admin_token) < 8:
        raise ConfigError("the admin token must be at least 8 characters")
    scenario_path = pick("scenario", None)
    try:
        scenario = load_scenario(Path(scenario_path)) if scenario_path else None
    except ControlInputError as exc:
        raise ConfigError(f"scenario {exc}") from None

    try:
        preflight = PreflightThresholds(**threshold_values(flags, environ, file))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

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
        expiry_interval_s=float(file.get("expiry_interval_s", BY_KEY["expiry_interval_s"].value)),
        memory_budget=int(budget_mb * MB) if budget_mb > 0 else None,
        allow_private=allow_private,
        allow_object_storage=allow_object_storage,
        page_hosts=page_hosts,
        source_map=source_map,
        controls_open=is_loopback_name(host),
        model=model,
        scheduler=pick("scheduler", None) or None,
        admin_token=admin_token,
        scenario=scenario,
        preflight=preflight,
        results=results,
        storage_options=storage_options,
        body_limit=int(file.get("max_body_bytes", BY_KEY["max_body_bytes"].value)),
        source_deadline_s=float(file.get("source_deadline_s", BY_KEY["source_deadline_s"].value)),
        webhook_retry=RetryPolicy(
            attempts=int(file.get("webhook_attempts", BY_KEY["webhook_attempts"].value)),
            first_delay_s=float(file.get("webhook_first_delay_s", BY_KEY["webhook_first_delay_s"].value)),
            max_delay_s=float(file.get("webhook_max_delay_s", BY_KEY["webhook_max_delay_s"].value)),
            timeout_s=float(file.get("webhook_timeout_s", BY_KEY["webhook_timeout_s"].value)),
        ),
    )
    return ServeConfig(host, port, settings, development, development_is_new)


def _storage_options(flags: dict[str, Any], environ: dict[str, str], file: dict[str, Any]) -> dict[str, Any]:
    """The object store's options: the flag's (a dict, `--storage-options` parsed), else the variable's (a JSON
    object), else the file's `[storage_options]` table, else none."""
    if flags.get("storage_options") is not None:
        options = flags["storage_options"]
        origin = "--storage-options"
    elif _env("storage_options") in environ:
        origin = _env("storage_options")
        try:
            options = json.loads(environ[origin])
        except ValueError as exc:
            raise ConfigError(f"{origin} is not JSON: {exc}") from None
    else:
        options = file.get("storage_options", {})
        origin = "storage_options in the config file"
    if not isinstance(options, dict):
        raise ConfigError(f"{origin} must be a JSON object (a table in the config file)")
    return dict(options)


def _env(key: str) -> str:
    """The COMPOSITOR_* variable of a setting, from its one definition."""
    env = BY_KEY[key].env
    assert env is not None, key
    return env


def _refuse_invalid_text(flags: dict[str, Any], environ: dict[str, str]) -> None:
    """Flags and COMPOSITOR_* variables are text from the command line and the
    environment, where bytes that are not UTF-8 arrive as lone surrogates
    (`text.py`): refused here, at the start, naming the flag or the variable."""
    for name, value in flags.items():
        bad = text.unencodable_field(value, f"--{name.replace('_', '-')}")
        if bad is not None:
            raise ConfigError(f"{bad}: {text.MESSAGE}")
    for name, value in environ.items():
        if name.startswith("COMPOSITOR_") and not text.is_valid_text(value):
            raise ConfigError(f"{text.printable(name)}: {text.MESSAGE}")


def _read_config_file(path: Path) -> dict[str, Any]:
    """A TOML config file; ConfigError in one line for a file that cannot be read or parsed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the config file {path} is not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"the config file {path} is nested too deeply") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML ({exc})") from None


def development_client(data_dir: Path) -> tuple[Client, bool]:
    """A client for local use, kept in the data dir so its key survives
    restarts, with a header file beside it for curl's `-H @FILE`; and
    whether it was made just now."""
    path = data_dir / "development-client.json"
    created = not path.exists()
    if created:
        data_dir.mkdir(parents=True, exist_ok=True)
        client = Client("local-dev", secrets.token_hex(16))
        _write_private(path, json.dumps({"clientId": client.client_id, "clientSecret": client.client_secret}))
    else:
        try:
            saved = json.loads(path.read_text())
            client = Client(saved["clientId"], saved["clientSecret"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is damaged ({exc}): remove it to get a new development client") from None
    if created or not key_header_file(data_dir).exists():
        _write_private(key_header_file(data_dir), f"x-api-key: {client.client_secret}\n")
    return client, created


def key_header_file(data_dir: Path) -> Path:
    """The development client's key as a header line, for `curl -H @FILE`."""
    return data_dir / "development-client.header"


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
