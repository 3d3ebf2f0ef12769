"""Serving a stored file (a result, an upload) whole or not at all.

Expiry and the test controls' reset delete files while they may be being
served. Starlette's `FileResponse` looks the file up when the route answers
and opens it again when it sends the body: a deletion between the two leaves
a response with a Content-Length and no body. Here the file is opened once,
before anything is answered: a file deleted before that is the route's 404,
and one deleted after is still read whole from its open handle (POSIX keeps
an unlinked file's data while a descriptor holds it)."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

CHUNK_BYTES = 256 * 1024


def open_file_response(path: Path | None, media_type: str | None, missing: Callable[[], Response]) -> Response:
    """The file at `path` streamed from a handle opened now (its type guessed
    from its name when `media_type` is None); `missing()` when there is none to open."""
    if path is None:
        return missing()
    media_type = media_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        file = path.open("rb")
    except OSError:
        return missing()
    size = os.fstat(file.fileno()).st_size
    return StreamingResponse(_chunks(file), media_type=media_type, headers={"content-length": str(size)})


async def _chunks(file: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await run_in_threadpool(file.read, CHUNK_BYTES):
            yield chunk
    finally:
        file.close()
