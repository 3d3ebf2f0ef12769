"""How the mirror's log lines look: plain text by default, or one JSON
object per line (`--log-format json`), the shape log shippers and structlog
users expect. Lines carry their facts as fields (`extra={"fields": {...}}`),
which JSON keeps as keys and text appends as key=value. No secret is ever
put in a field."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", {})
        if fields:
            text += " " + " ".join(f"{key}={_plain(value)}" for key, value in fields.items() if value is not None)
        return text


def _plain(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


def configure(level: str = "info", fmt: str = "text") -> None:
    """One handler on stderr for the whole process, replacing any other."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
