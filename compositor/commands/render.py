"""`compositor render`: one body to one image file."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING

from compositor.commands.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNUSABLE,
    add_limit_arguments,
    add_model_arguments,
    add_source_map_argument,
    add_storage_options_argument,
    limits_of,
    load_body,
    read_source_map,
    storage_options_of,
)

if TYPE_CHECKING:
    from compositor.storage import Location


def add_parser(commands: argparse._SubParsersAction) -> None:
    render = commands.add_parser("render", help="render a request body to an image")
    render.add_argument("request", help="request body (JSON file, or - for stdin)")
    render.add_argument(
        "-o",
        "--output",
        help="output file (- for stdout), or an object's URL (s3://bucket/prefix/name.png: one PUT, whole or nothing);"
        " default: the request's name with .png",
    )
    render.add_argument("--format", choices=("png", "webp", "jpeg"), help="output format (default: from -o, else png)")
    render.add_argument(
        "--png-level", type=int, metavar="0-9", help="zlib level (smaller, slower); default: ISA-L on every core"
    )
    render.add_argument("--quality", type=int, default=90, help="WebP/JPEG quality (default 90)")
    render.add_argument("--timings", action="store_true", help="print the seconds spent in each stage to stderr")
    render.add_argument(
        "--low-memory",
        action="store_true",
        help="render band by band into a streamed PNG (ISA-L, or zlib at --png-level): "
        "memory grows with the canvas width, not its area",
    )
    add_model_arguments(render)
    add_limit_arguments(render)
    add_source_map_argument(render)
    add_storage_options_argument(render)
    render.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from compositor.encode import EncodeOptions, encode, format_for_path, write_png_bands
    from compositor.engine import RenderOptions, render_array, render_bands
    from compositor.errors import CompositorError, InvalidRequestError
    from compositor.heap import release_free_heap, use_one_malloc_arena
    from compositor.removebg import RemovalOptions
    from compositor.request import parse_request
    from compositor.sources import SourcePolicy
    from compositor.storage import StorageError, is_url, open_object
    from compositor.timings import StageTimings

    _prefer_plain_pages()
    loaded = load_body(args.request)
    if isinstance(loaded, int):
        return loaded
    body, base = loaded

    output = args.output
    if output is None:
        if args.request == "-":
            print("compositor: -o is required when the body comes from stdin", file=sys.stderr)
            return EXIT_UNUSABLE
        output = str(Path(args.request).with_suffix(".png"))
    place: Location | None = None  # an object's URL: written through its place, as batch writes its results
    try:
        storage_options = storage_options_of(args)
        encoding = EncodeOptions(
            format=args.format or format_for_path(output) or "png",
            png_level=args.png_level,
            quality=args.quality,
        )
        options = RenderOptions(
            limits=limits_of(args),
            sources=replace(
                SourcePolicy(),
                base_dir=base,
                source_map=read_source_map(args),
                object_storage=True,  # s3:// sources, with this user's own credentials (AWS_* variables, profiles)
                storage_options=storage_options,
            ),
            removal=RemovalOptions(model=args.model, device=args.device, model_home=args.model_home),
        )
        if args.low_memory and encoding.format != "png":
            raise ValueError(f"--low-memory writes PNG only, not {encoding.format}")
        if output != "-" and is_url(output):
            place, name = open_object(output, storage_options)
            place.check_writable()  # a bucket that refuses writes is known before the render, not after it
    except (ValueError, StorageError) as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE

    timings = StageTimings()
    started = time.perf_counter()
    use_one_malloc_arena()
    try:
        if args.low_memory:
            # Each band is blended, encoded and written before the next; the body is checked and the sources
            # decoded first, so a bad one fails before any output is opened.
            request = parse_request(body, limits=options.limits)
            bands = render_bands(request, options=options, timings=timings)
            width, height = request.canvas.width, request.canvas.height
            if place is None:
                with _opened_output(output) as sink:
                    write_png_bands(bands, width, height, sink, level=args.png_level, timings=timings)
            else:  # into a local spool file, then that file in one PUT (object storage cannot append)
                with tempfile.TemporaryFile() as spool:
                    write_png_bands(bands, width, height, spool, level=args.png_level, timings=timings)
                    spool.seek(0)
                    with timings.stage("write"):
                        place.write_file_atomic(name, spool)
        else:
            image = render_array(body, options=options, timings=timings)
            release_free_heap()
            with timings.stage("encode"):
                data = encode(image, encoding)
            with timings.stage("write"):
                if place is None:
                    _write(output, data)
                else:
                    place.write_bytes_atomic(name, data)
    except StorageError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except InvalidRequestError as exc:
        print(json.dumps(exc.report.envelope()))
        return EXIT_INVALID
    except CompositorError as exc:
        print(f"compositor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except OSError as exc:
        print(f"compositor: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except MemoryError:
        print("compositor: out of memory (try --low-memory, or smaller sizes)", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.timings:
        stages = " ".join(f"{name}={seconds:.3f}s" for name, seconds in timings.seconds.items())
        # Stages overlap (a layer resizes while another decodes): the wall time is not their sum.
        print(f"timings: {stages} wall={time.perf_counter() - started:.3f}s", file=sys.stderr)
    return EXIT_OK


def _prefer_plain_pages() -> None:
    """The CLI renders once per process, so the first touch of the canvas is
    what counts: with numpy's huge-page advice the kernel compacts memory on
    that fault (148 ms for a 3840x3840 canvas here, 32 ms without). This is
    what NUMPY_MADVISE_HUGEPAGE=0 does, for this process only."""
    import numpy as np

    setter = getattr(getattr(np, "_core", None), "multiarray", None)
    if setter is not None and hasattr(setter, "_set_madvise_hugepage"):
        setter._set_madvise_hugepage(False)


def _write(output: str, data: bytes) -> None:
    with _opened_output(output) as sink:
        sink.write(data)


@contextlib.contextmanager
def _opened_output(output: str) -> Iterator[IO[bytes]]:
    """Standard output for "-"; else the file, written atomically: a failed
    render never leaves half a file behind, and never damages a file that
    was already there."""
    if output == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    from compositor.files import atomic_file

    with atomic_file(Path(output)) as sink:
        yield sink
