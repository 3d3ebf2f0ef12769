"""How many threads one render may use in this process.

A single render (the CLI, the mirror) spreads over the cores: two threads
decode and resize, the PNG writer deflates on every core, OpenCV blends and
onnxruntime infers on all of them. A batch renders many items at once, one
per worker, and there threads inside an item only fight the other workers
for the same cores: its workers call `set_render_threads(1)`.
"""

from __future__ import annotations

import os

_threads: int | None = None  # None: as many as the machine has


def render_threads(most: int | None = None) -> int:
    """Threads one render may use (at most `most`)."""
    count = _threads if _threads is not None else (os.cpu_count() or 1)
    return max(1, min(count, most) if most is not None else count)


def set_render_threads(count: int | None) -> None:
    """Limit this process's renders to `count` threads (None: no limit). Call
    it before the first removeBg session is made: onnxruntime fixes its
    threads when a session starts."""
    global _threads
    if _threads == count:
        return
    _threads = count
    import cv2

    cv2.setNumThreads(count if count is not None else -1)


def limited() -> int | None:
    """The limit set, or None."""
    return _threads
