"""Rendering in worker processes, so the server keeps answering while the
CPU-bound engine runs. Only plain data crosses the process boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compositor.files import write_atomically


def render_to_file(body: dict[str, Any], result_path: str, policy: dict[str, Any]) -> str | None:
    """Render `body` into `result_path` (atomically); the failure reason, or None.
    removeBg finds its model where the server's environment says
    ($COMPOSITOR_MODEL_HOME, else the checkout)."""
    from compositor import CompositorError, RenderOptions, SourcePolicy
    from compositor.encode import encode
    from compositor.engine import render_array
    from compositor.heap import release_free_heap, use_one_malloc_arena

    use_one_malloc_arena()
    options = RenderOptions(sources=SourcePolicy(**policy))
    try:
        image = render_array(body, options=options)
        release_free_heap()
        data = encode(image)
        del image
    except CompositorError as exc:
        return str(exc)
    write_atomically(Path(result_path), data)
    return None
