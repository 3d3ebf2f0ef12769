"""What a valid body describes: a canvas and the layers placed on it."""

from __future__ import annotations

from dataclasses import dataclass

from compositor.geometry import Size


@dataclass(frozen=True)
class Layer:
    source: str
    size: Size | None  # None: the image's natural size (templates only)
    x: int
    y: int


@dataclass(frozen=True)
class CompositeRequest:
    canvas: Size
    color: tuple[int, int, int] | None
    template: Layer | None
    foreground: Layer
    remove_bg: bool
    webhook_url: str | None
