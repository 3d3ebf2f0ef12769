"""The C heap of a process that renders, on glibc.

A render frees about 40 MB of decoded sources and resized strips just before
the PNG encoder allocates its own buffers (twice the canvas, 118 MB for
3840x3840). glibc gives each thread that mallocs its own arena and keeps what
is freed there for reuse, so the encoder's buffers land on top of memory the
process no longer uses: peak RSS 287-305 MB for doc example 3 here. With one
arena for the process and the free pages handed back before encoding, the
peak is 250-257 MB, and the render is no slower (its large buffers take
malloc's lock a few hundred times, not per pixel).

Process-wide settings: the CLI and the mirror's render workers (processes of
their own that only render) call these; the library never does. Elsewhere
than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import functools

# mallopt's parameter number for the arena limit, from glibc's malloc.h.
_M_ARENA_MAX = -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


def prepare_render_process() -> None:
    """Process-wide settings of a process that renders, once, before any render (a pool's initializer)."""
    use_one_malloc_arena()


def use_one_malloc_arena() -> bool:
    """Make threads share the main malloc arena. Call it before the threads
    that render first allocate (an arena is never removed once made).
    True if the setting took."""
    libc = _glibc()
    return libc is not None and libc.mallopt(_M_ARENA_MAX, 1) == 1


def release_free_heap() -> bool:
    """Hand the heap's free pages back to the system (about 0.3 ms here).
    True if any were."""
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1
