"""A render's memory budget, checked before memory is taken.

Each allocation that grows with the input (a decoded source, the canvas) is
reserved from the header's dimensions before any pixel is decoded, so a job
that would not fit fails at once with a reason naming the budget, instead of
taking the machine's memory first. The figures are upper estimates of what
the engine holds at its peak; the budget is per render.
"""

from __future__ import annotations

import threading

from compositor.errors import CompositorError

MB = 1024 * 1024


class OverBudgetError(CompositorError):
    """The render would need more memory than its budget allows."""


class MemoryBudget:
    """`limit` bytes for one render; `reserve` raises once they would be exceeded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserved = 0
        self._lock = threading.Lock()  # the engine decodes both sources at once

    def reserve(self, nbytes: int, what: str) -> None:
        with self._lock:
            if self.reserved + nbytes > self.limit:
                raise OverBudgetError(
                    f"{what}: the render would need about {(self.reserved + nbytes) // MB} MB,"
                    f" over the memory budget of {self.limit // MB} MB per job"
                )
            self.reserved += nbytes


def removal_bytes(width: int, height: int) -> int:
    """removeBg at the foreground's natural size: the mask, the multiplied
    alpha and the copies around them (measured: about 20 bytes a pixel in all
    for a 5000x5000 RGB source, with the 12 of its decode)."""
    return width * height * 8


def canvas_bytes(width: int, height: int) -> int:
    """The canvas, its straight-alpha result and the encoder's buffers (about twice the canvas)."""
    return width * height * 4 * 4
