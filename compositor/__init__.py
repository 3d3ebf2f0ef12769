"""compositor: Akool's Background Change API, offline.

>>> import compositor
>>> image = compositor.render(body)        # PIL.Image.Image, RGBA, canvas_size
>>> report = compositor.validate(body)     # errors and warnings, API codes
"""

from __future__ import annotations

import os

# Before anything can import onnxruntime: no telemetry look-ups, ever.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

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
