"""What the mirror's worker processes run: job renders, page previews and
upload checks. Every decode happens here, never in the server process, so a
heavy or hostile image costs a worker (under its memory budget), not the
server. Only plain data crosses the process boundary."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compositor.sources import SourcePolicy

# errnos that mean "no room for the result", which passes, unlike a bad job.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True)
class RenderOutcome:
    """`failure` None: the result is written. `transient`: the job was not at
    fault (no space for its result) and should wait and run again."""

    failure: str | None = None
    transient: bool = False
    png: bytes | None = None  # from a cluster's worker: the server writes it (no storage is shared)


def prepare_worker() -> None:
    """Process-wide settings of a render process, once, before any render."""
    from compositor.heap import prepare_render_process

    prepare_render_process()


def render_png(body: dict[str, Any], sources: SourcePolicy, budget: int | None, model: str = "u2netp") -> RenderOutcome:
    """Render `body` to PNG bytes, returned (a cluster's worker: the server
    writes them). removeBg uses `model` (the server's setting: upstream's body
    has no field for it), loaded on this worker's first use and kept, from
    where the worker's environment says ($COMPOSITOR_MODEL_HOME, else the
    checkout)."""
    from compositor import CompositorError, RemovalOptions, RenderOptions
    from compositor.encode import encode
    from compositor.engine import render_array
    from compositor.heap import prepare_render_process, release_free_heap

    prepare_render_process()  # a no-op after a pool's initializer; a Dask worker's first task needs it
    options = RenderOptions(sources=sources, memory_budget=budget, removal=RemovalOptions(model=model))
    try:
        image = render_array(body, options=options)
        release_free_heap()
        data = encode(image)
        del image
    except CompositorError as exc:
        return RenderOutcome(str(exc))
    except MemoryError:
        return RenderOutcome(f"the render ran out of memory (budget {_mb(budget)} per job)")
    return RenderOutcome(png=data)


def render_to_file(
    body: dict[str, Any], result_path: str, sources: SourcePolicy, budget: int | None, model: str = "u2netp"
) -> RenderOutcome:
    """Render `body` into `result_path` (atomically), on a local worker: the
    PNG never crosses a pipe."""
    outcome = render_png(body, sources, budget, model)
    return outcome if outcome.png is None else store_png(outcome.png, result_path)


def store_png(data: bytes, result_path: str) -> RenderOutcome:
    """A rendered PNG written to `result_path`; a full disk is transient (the job waits)."""
    from compositor.files import write_atomically

    try:
        write_atomically(Path(result_path), data)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            return RenderOutcome("no space left to store the result", transient=True)
        return RenderOutcome("the result could not be stored", transient=True)
    return RenderOutcome()


def render_preview(
    body: dict[str, Any], max_side: int | None, sources: SourcePolicy, budget: int | None, model: str = "u2netp"
) -> Any:
    """The page's picture: PNG bytes, or `{"code", "msg"}` saying why not."""
    from compositor import CompositorError, RemovalOptions, RenderOptions
    from compositor.encode import encode
    from compositor.engine import render_array
    from compositor.preview import scaled_body

    try:
        if max_side is not None:
            body, _ = scaled_body(body, max_side, sources)
        options = RenderOptions(sources=sources, memory_budget=budget, removal=RemovalOptions(model=model))
        return encode(render_array(body, options=options))
    except CompositorError as exc:
        return {"code": int(exc.code), "msg": str(exc)}
    except MemoryError:
        return {"code": 1206, "msg": f"the preview ran out of memory (budget {_mb(budget)})"}


def probe_upload(path: str, max_pixels: int, budget: int | None) -> dict[str, Any]:
    """An uploaded file's size if it decodes as an image: `{"width", "height"}`
    or `{"code", "msg"}`."""
    from compositor import CompositorError
    from compositor.budget import MemoryBudget
    from compositor.sources import decode_image

    try:
        image = decode_image(
            Path(path).read_bytes(),
            "upload",
            max_pixels=max_pixels,
            budget=MemoryBudget(budget) if budget is not None else None,
        )
    except CompositorError as exc:
        return {"code": 1003, "msg": str(exc)}
    except MemoryError:
        return {"code": 1003, "msg": "upload: too large to decode"}
    return {"width": image.width, "height": image.height}


def _mb(budget: int | None) -> str:
    return "unlimited" if budget is None else f"{budget // (1024 * 1024)} MB"
