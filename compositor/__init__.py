"""compositor: Akool's Background Change API, offline.

>>> import compositor
>>> image = compositor.render(body)        # PIL.Image.Image, RGBA, canvas_size
>>> report = compositor.validate(body)     # errors and warnings, API codes

Each name is imported when it is first used (PEP 562): `import compositor`
and `compositor.validate` load no image library, so a pre-flight check costs
what the check costs, not numpy's, Pillow's and OpenCV's start-up.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# Before anything can import onnxruntime: no telemetry look-ups, ever.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

if TYPE_CHECKING:
    from compositor.encode import EncodeOptions, encode
    from compositor.engine import RenderOptions, render
    from compositor.errors import (
        ApiCode,
        CompositorError,
        InvalidRequestError,
        ModelUnavailableError,
        SourceError,
    )
    from compositor.removebg import RemovalOptions
    from compositor.request import CompositeRequest, Limits, ValidationReport, validate
    from compositor.sources import SourcePolicy
    from compositor.timings import StageTimings

# Where each public name lives.
_HOMES = {
    "ApiCode": "compositor.errors",
    "CompositeRequest": "compositor.request",
    "CompositorError": "compositor.errors",
    "EncodeOptions": "compositor.encode",
    "InvalidRequestError": "compositor.errors",
    "Limits": "compositor.request",
    "ModelUnavailableError": "compositor.errors",
    "RemovalOptions": "compositor.removebg",
    "RenderOptions": "compositor.engine",
    "SourceError": "compositor.errors",
    "SourcePolicy": "compositor.sources",
    "StageTimings": "compositor.timings",
    "ValidationReport": "compositor.request",
    "encode": "compositor.encode",
    "render": "compositor.engine",
    "validate": "compositor.request",
}

__all__ = [
    "ApiCode",
    "CompositeRequest",
    "CompositorError",
    "EncodeOptions",
    "InvalidRequestError",
    "Limits",
    "ModelUnavailableError",
    "RemovalOptions",
    "RenderOptions",
    "SourceError",
    "SourcePolicy",
    "StageTimings",
    "ValidationReport",
    "encode",
    "render",
    "validate",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'compositor' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
