"""What the mirror's worker processes run: job renders, page previews and
upload checks. Every decode happens here, never in the server process, so a
heavy or hostile image costs a worker (under its memory budget), not the
server. Only plain data crosses the process boundary.

A job's http(s) sources (those no source map resolves) are downloaded here,
once, before the render: pre-flight reads their headers for the job's
warnings (the server reads only the sources that need no network, when it
accepts the job), and the render reads the same bytes from a temporary file.

Where the result goes: a local worker writes it into the results folder
(`render_to_file`); a cluster's worker, with results in a folder, sends the
PNG back for the server to write (`render_png`); with results in object
storage, whichever worker renders the job writes it there itself, one PUT
(`render_to_location`), and only the outcome comes back."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compositor.sources import SourcePolicy

if TYPE_CHECKING:
    from compositor.preflight import PreflightThresholds
    from compositor.storage import Location

log = logging.getLogger(__name__)

# errnos that mean "no room for the result", which passes, unlike a bad job.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True)
class RenderOutcome:
    """`failure` None: the result is written. `transient`: the job was not at
    fault (no space for its result) and should wait and run again."""

    failure: str | None = None
    transient: bool = False
    # From a cluster's worker with results in a folder: the server writes it (no storage is shared). None when
    # the worker wrote the result itself (into the results folder, or into object storage).
    png: bytes | None = None
    # Pre-flight's warnings ({field, message}) for the job's http(s) sources, read here: the server adds
    # the new ones to those its accept answer gave. Empty when the job has no such source.
    warnings: list[dict[str, str]] = field(default_factory=list)


def prepare_worker() -> None:
    """Process-wide settings of a render process, once, before any render."""
    from compositor.heap import prepare_render_process

    prepare_render_process()


def render_png(
    body: dict[str, Any],
    sources: SourcePolicy,
    budget: int | None,
    model: str = "u2netp",
    thresholds: PreflightThresholds | None = None,
) -> RenderOutcome:
    """Render `body` to PNG bytes, returned (a cluster's worker: the server
    writes them). removeBg uses `model` (the server's setting: upstream's body
    has no field for it), loaded on this worker's first use and kept, from
    where the worker's environment says ($COMPOSITOR_MODEL_HOME, else the
    checkout). With `thresholds`, the job's http(s) sources are downloaded
    first, once, and pre-flight's warnings for them come back with the outcome."""
    from compositor import CompositorError, RemovalOptions, RenderOptions
    from compositor.encode import encode
    from compositor.engine import render_array
    from compositor.errors import SourceError
    from compositor.heap import prepare_render_process, release_free_heap

    prepare_render_process()  # a no-op after a pool's initializer; a Dask worker's first task needs it
    with contextlib.ExitStack() as cleanup:
        warnings: list[dict[str, str]] = []
        hidden: set[str] = set()
        if thresholds is not None:
            try:
                sources, hidden, warnings = _read_ahead(body, sources, thresholds, cleanup)
            except SourceError as exc:  # the download the render would have made failed: the job fails alike
                return RenderOutcome(str(exc))
        options = RenderOptions(sources=sources, memory_budget=budget, removal=RemovalOptions(model=model))
        try:
            image = render_array(body, options=options)
            release_free_heap()
            data = encode(image)
            del image
        except CompositorError as exc:
            # As the render reading it itself would say: a private source that fails tells nothing. Nor does a
            # failed job's warnings, when a source was private: they would say what its address served.
            failed = _hidden_field(exc, hidden)
            reason = str(exc) if failed is None else str(SourceError(failed, sources.unreachable))
            return RenderOutcome(reason, warnings=[] if hidden else warnings)
        except MemoryError:
            reason = f"the render ran out of memory (budget {_mb(budget)} per job)"
            return RenderOutcome(reason, warnings=[] if hidden else warnings)
    return RenderOutcome(png=data, warnings=warnings)


def _read_ahead(
    body: dict[str, Any], policy: SourcePolicy, thresholds: PreflightThresholds, cleanup: contextlib.ExitStack
) -> tuple[SourcePolicy, set[str], list[dict[str, str]]]:
    """The job's http(s) sources that no map resolves, downloaded once into a
    temporary folder (removed by `cleanup`) and mapped there for the render;
    pre-flight's warnings for the whole job, read from those files and the
    other sources; and the fields whose source came from a private address
    whose failures must not say why. Nothing to download: `policy` as it is and
    no warnings (the server read every source at accept). `SourceError` when a
    download fails (the render would fail alike). Pre-flight's own trouble
    costs only the warnings: it never fails a job."""
    from compositor.preflight import preflight
    from compositor.request import parse_request
    from compositor.sourcemap import SourceMap
    from compositor.sources import read_prefix

    try:
        request = parse_request(body)
    except Exception:  # the render says what is wrong with the body
        return policy, set(), []
    network = [(name, layer.source) for name, layer in _layers(request) if _is_network(layer.source, name, policy)]
    if not network:
        return policy, set(), []
    folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="compositor-sources-")))
    mapped: dict[str, Path] = {}
    private: set[str] = set()
    kept_all = True
    for index, (name, url) in enumerate(network):
        if url in mapped:  # the template and the foreground may be one URL: downloaded once
            continue
        data, _, hides = read_prefix(url, name, policy, policy.max_bytes)  # the whole source, as the render reads it
        path = folder / f"source-{index}"
        try:
            path.write_bytes(data)
        except OSError:  # no room for it here: the render downloads it itself, and it has no warnings
            log.warning("a source could not be kept for the render; it is downloaded again")
            kept_all = False
            continue
        del data
        mapped[url] = path
        if hides:
            private.add(url)
    if not mapped:
        return policy, set(), []
    hidden = {name for name, url in network if url in private}
    current = policy.source_map or SourceMap()
    # Exact entries are looked up first, so these win over any prefix (none of them covers these URLs anyway).
    ahead = SourceMap(tuple(mapped.items()) + current.exact, current.prefixes)
    policy = dataclasses.replace(policy, source_map=ahead)
    if not kept_all:  # pre-flight would download what was not kept: the render alone does
        return policy, hidden, []
    try:
        _, found = preflight(request, policy, thresholds)
    except Exception:
        log.exception("pre-flight failed on the worker; the job's answer has no warnings for its http(s) sources")
        return policy, hidden, []
    return policy, hidden, [problem.as_dict() for problem in found]


def _layers(request: Any) -> list[tuple[str, Any]]:
    layers = [("template_url", request.template)] if request.template is not None else []
    return [*layers, ("origin_img", request.foreground)]


def _is_network(ref: str, field: str, policy: SourcePolicy) -> bool:
    """Whether reading `ref` needs the network: an http(s) URL that no source map resolves."""
    from compositor.errors import SourceError
    from compositor.references import SCHEME, check_source_reference

    scheme = SCHEME.match(ref)
    if scheme is None or scheme.group(1).lower() not in ("http", "https") or check_source_reference(ref) is not None:
        return False
    if policy.source_map is not None:
        try:
            if policy.source_map.resolve(ref, field) is not None:
                return False
        except SourceError:  # the render says so
            return False
    return True


def _hidden_field(exc: Exception, hidden: set[str]) -> str | None:
    """The private source's field a render failure is about, if any: every failure of reading or decoding
    it (a budget overrun included) names the field first, as the render's own read would have hidden it."""
    text = str(exc)
    return next((field for field in sorted(hidden) if text.startswith(f"{field}: ")), None)


def render_to_file(
    body: dict[str, Any],
    result_path: str,
    sources: SourcePolicy,
    budget: int | None,
    model: str = "u2netp",
    thresholds: PreflightThresholds | None = None,
) -> RenderOutcome:
    """Render `body` into `result_path` (atomically), on a local worker: the
    PNG never crosses a pipe."""
    outcome = render_png(body, sources, budget, model, thresholds)
    if outcome.png is None:
        return outcome
    return dataclasses.replace(store_png(outcome.png, result_path), warnings=outcome.warnings)


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


def render_to_location(
    body: dict[str, Any],
    place: Location,
    name: str,
    sources: SourcePolicy,
    budget: int | None,
    model: str = "u2netp",
    thresholds: PreflightThresholds | None = None,
) -> RenderOutcome:
    """Render `body` into `name` in `place` (results in object storage), on
    whichever worker runs it: a local process, a Dask worker, or the server's
    polling thread inline. One PUT, whole or nothing; the outcome comes back,
    never the PNG. A task run twice writes the same bytes to the same name."""
    outcome = render_png(body, sources, budget, model, thresholds)
    if outcome.png is None:
        return outcome
    return dataclasses.replace(store_object(outcome.png, place, name), warnings=outcome.warnings)


def store_object(data: bytes, place: Location, name: str) -> RenderOutcome:
    """A rendered PNG written to `name` in `place`. A store that refuses the
    write (unreachable, the bucket gone, access denied) is transient, as a
    full disk is: the job waits aside and runs again, and fails with the
    store's reason (never its URL, which is the operator's) after as many
    waits as a full disk gets. The URL is in the worker's log."""
    from compositor.storage import StorageError

    try:
        _connected(place).write_bytes_atomic(name, data)
    except StorageError as exc:
        log.warning("%s", exc)
        return RenderOutcome(f"the result could not be stored in the results bucket: {exc.reason}", transient=True)
    return RenderOutcome()


# The places this process writes results to, each connected once (a connection a job would cost more than a
# small render): keyed by the place as it pickles (its URL and options, never a connection).
_CONNECTED: dict[bytes, Location] = {}


def _connected(place: Location) -> Location:
    return _CONNECTED.setdefault(pickle.dumps(place), place)


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
