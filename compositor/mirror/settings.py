"""Every setting of the mirror, defined once: its flag, its environment
variable, its config file key, its default and what it does. `config.load`
reads each through this table (flags, then variables, then the file, then
the default), the docs' settings page is generated from it, and a test fails
when the code reads a setting that is not here."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    key: str  # the config file's key, and the name `config.load` knows it by
    flag: str | None  # `compositor serve`'s flag, if it has one
    env: str | None  # the COMPOSITOR_* variable, if it has one
    default: str  # as a person reads it
    help: str
    in_file: bool = True  # whether the config file may set it
    commands: str = "serve"  # the commands that read it
    value: Any = None  # what `config.load` uses when nothing sets it (None: nothing, or worked out as it loads)


SETTINGS: tuple[Setting, ...] = (
    Setting("config", "--config", "COMPOSITOR_CONFIG", "none", "a TOML file holding any of the settings below", False),
    Setting("host", "--host", "COMPOSITOR_HOST", "127.0.0.1", "the address to listen on", value="127.0.0.1"),
    Setting("port", "--port", "COMPOSITOR_PORT", "8080", "the port to listen on", value=8080),
    Setting(
        "data_dir",
        "--data-dir",
        "COMPOSITOR_DATA_DIR",
        "data",
        "where jobs, results and uploads are kept",
        value="data",
    ),
    Setting(
        "client",
        "--client",
        "COMPOSITOR_CLIENTS",
        "a development client, on loopback only",
        "the accounts: `ID:SECRET` (the flag repeated, or comma-separated in the variable); in the file,"
        " `[[client]]` tables with `id`, `secret`, `banned`, `quota` (credits) and `rate_limit_per_minute`;"
        " a secret is 16, 24 or 32 bytes (it is the webhooks' AES key)",
    ),
    Setting(
        "results",
        "--results",
        "COMPOSITOR_RESULTS",
        "the data dir's results folder",
        "where results are kept: a folder, or a prefix in object storage (`s3://bucket/prefix`), written by the"
        " worker that renders each job; clients fetch them from the mirror's own `/results/` either way",
    ),
    Setting(
        "storage_options",
        "--storage-options",
        "COMPOSITOR_STORAGE_OPTIONS",
        "none",
        "a JSON object of options for the mirror's object storage (its results, and s3:// sources where allowed),"
        " as s3fs takes them: `endpoint_url`, `profile`, `client_kwargs`; never keys (those come from the AWS_*"
        " variables, a profile or the machine's role); in the file, a `[storage_options]` table",
    ),
    Setting("workers", "--workers", "COMPOSITOR_WORKERS", "one per core", "render worker processes"),
    Setting(
        "result_ttl",
        "--result-ttl",
        "COMPOSITOR_RESULT_TTL",
        "604800 (7 days)",
        "seconds a result is kept",
        value=7 * 24 * 3600,
    ),
    Setting(
        "public_url",
        "--public-url",
        "COMPOSITOR_PUBLIC_URL",
        "http://HOST:PORT",
        "the base of the result URLs handed out (behind a proxy, its address)",
    ),
    Setting(
        "allow_file_roots",
        "--allow-file-root",
        "COMPOSITOR_FILE_ROOTS",
        "none (the checkout's fixtures in development mode)",
        "folders whose files bodies may name as local paths or file:// URLs (the flag repeated,"
        " colon-separated in the variable, a list in the file)",
    ),
    Setting(
        "allow_private_networks",
        "--allow-private-networks",
        "COMPOSITOR_ALLOW_PRIVATE_NETWORKS",
        "true while listening on loopback, else false",
        "whether sources and webhooks may reach loopback, private and link-local addresses",
    ),
    Setting(
        "allow_object_storage",
        "--allow-object-storage",
        "COMPOSITOR_ALLOW_OBJECT_STORAGE",
        "false",
        "whether bodies may name s3:// sources; off because the mirror reads them with its operator's own"
        " credentials (AWS_* variables, profiles, the machine's role), so a caller could read the operator's"
        " buckets; turn it on only where every caller may read all of them",
        value=False,
    ),
    Setting(
        "memory_budget_mb",
        "--memory-budget",
        "COMPOSITOR_MEMORY_BUDGET_MB",
        "2048",
        "MB a job or preview may use, reserved from the image headers before decoding; 0 for none",
        value=2048,
    ),
    Setting(
        "page_hosts",
        "--page-host",
        None,
        "loopback names only",
        "host names (and origins) the preview page and an open control plane answer, beside loopback's",
    ),
    Setting(
        "source_map",
        "--source-map",
        "COMPOSITOR_SOURCE_MAP",
        "none (the fixtures' map in development mode)",
        "a JSON file from URLs (or URL prefixes ending in /) to local files or folders, read instead of fetched",
    ),
    Setting("model", "--model", "COMPOSITOR_MODEL", "u2netp", "the removeBg model of every job", value="u2netp"),
    Setting(
        "model_home",
        "--model-home",
        "COMPOSITOR_MODEL_HOME",
        "the checkout's models/ folder",
        "where models are fetched to and loaded from",
        False,
        "render, batch, models, serve (variable only)",
    ),
    Setting(
        "admin_token",
        "--admin-token",
        "COMPOSITOR_ADMIN_TOKEN",
        "none",
        "the token the control plane (/_mirror/) then requires in x-mirror-admin; at least 8 characters",
    ),
    Setting(
        "scenario",
        "--scenario",
        "COMPOSITOR_SCENARIO",
        "none",
        "a TOML file of fault rules and a job policy to start with (at most 1 MiB and 1,000 rules)",
    ),
    Setting(
        "scheduler",
        "--scheduler",
        "COMPOSITOR_SCHEDULER",
        "none (local processes)",
        "a Dask scheduler's address: jobs render on that cluster",
    ),
    Setting(
        "warn_aspect_change",
        "--warn-aspect-change",
        "COMPOSITOR_WARN_ASPECT_CHANGE",
        "0.02",
        "pre-flight warns when a layer is resized off its picture's aspect ratio by more than this fraction",
        commands="validate --sources, batch, serve",
    ),
    Setting(
        "warn_enlargement",
        "--warn-enlargement",
        "COMPOSITOR_WARN_ENLARGEMENT",
        "2.0",
        "pre-flight warns when a layer is drawn more than this many times its picture's width or height",
        commands="validate --sources, batch, serve",
    ),
    Setting(
        "warn_cut_off",
        "--warn-cut-off",
        "COMPOSITOR_WARN_CUT_OFF",
        "0.5",
        "pre-flight warns when more than this fraction of a layer's area falls outside the canvas",
        commands="validate --sources, batch, serve",
    ),
    Setting("log_level", "--log-level", "COMPOSITOR_LOG_LEVEL", "info", "debug, info, warning or error", False),
    Setting("log_format", "--log-format", "COMPOSITOR_LOG_FORMAT", "text", "text, or json (a line each)", False),
    Setting("expiry_interval_s", None, None, "60", "seconds between looks for expired results", value=60.0),
    Setting(
        "max_body_bytes",
        None,
        None,
        "1048576 (1 MiB)",
        "the cap on an API request's body (413 over it)",
        value=1024 * 1024,
    ),
    Setting(
        "source_deadline_s", None, None, "30", "seconds for one whole source download, redirects included", value=30.0
    ),
    Setting("webhook_attempts", None, None, "8", "attempts at one webhook notice before it is abandoned", value=8),
    Setting(
        "webhook_first_delay_s", None, None, "1", "seconds before a notice's first retry (then doubling)", value=1.0
    ),
    Setting(
        "webhook_max_delay_s",
        None,
        None,
        "60",
        "the longest wait between retries, and between a failing receiver's lane's attempts",
        value=60.0,
    ),
    Setting("webhook_timeout_s", None, None, "10", "seconds for one whole delivery attempt", value=10.0),
)

BY_KEY = {setting.key: setting for setting in SETTINGS}

# Pre-flight's thresholds: (setting key, the PreflightThresholds field it sets, its default, its largest value).
THRESHOLDS = (
    ("warn_aspect_change", "max_aspect_change", 0.02, math.inf),
    ("warn_enlargement", "max_enlargement", 2.0, math.inf),
    ("warn_cut_off", "max_cut_off", 0.5, 1.0),
)


def threshold_values(flags: dict[str, Any], environ: Mapping[str, str], file: Mapping[str, Any]) -> dict[str, float]:
    """Pre-flight's thresholds as PreflightThresholds' keyword arguments, each
    from its flag, else its variable, else `file` (serve's config), else its
    default; ValueError naming the setting for a value that is not a number
    from 0 to its largest."""
    values = {}
    for key, name, default, largest in THRESHOLDS:
        setting = BY_KEY[key]
        raw, origin = flags.get(key), setting.flag
        if raw is None and setting.env and setting.env in environ:
            raw, origin = environ[setting.env], setting.env
        if raw is None:
            raw, origin = file.get(key, default), f"{key} in the config file"
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if not 0 <= value <= largest:  # NaN fails both
            upper = "" if math.isinf(largest) else f" to {largest:g}"
            raise ValueError(f"{origin} must be a number from 0{upper}, not {raw!r}")
        values[name] = value
    return values
