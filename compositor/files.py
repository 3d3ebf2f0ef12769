"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

# In every hidden file written beside its target, so that only those are ever taken for leftovers.
_MARK = "compositor-"


@contextmanager
def atomic_file(target: Path) -> Iterator[IO[bytes]]:
    """A file to write that becomes `target` only if the block ends without
    an error: it is written beside `target` and renamed over it, so a failed
    write never leaves half a file, nor damages one that was there. The file
    gets the usual umask-based mode (NamedTemporaryFile alone makes 0600).

    The folder must exist (a typo in it is an error, not a new folder). A
    target that exists and is not a regular file (/dev/null, a FIFO) is
    written into as it is: renaming over it would replace the device."""
    if target.exists() and not target.is_file() and not target.is_dir():
        with target.open("wb") as special:
            yield special
        return
    with _hidden_beside(target, "", rename=True) as partial:
        yield partial


def write_atomically(target: Path, data: bytes) -> None:
    """Write `data` as `target`, atomically (see `atomic_file`)."""
    with atomic_file(target) as sink:
        sink.write(data)


def write_beside(target: Path, data: bytes, suffix: str) -> Path:
    """`data` in a new hidden file beside `target` (`.NAME.compositor-XXXXXXXX` + `suffix`,
    in its folder, with the usual mode), for whoever renames it onto `target`
    later: batch's worker writes a result so, and its client renames it once
    the item's report line can follow at once. A failed write leaves nothing."""
    with _hidden_beside(target, suffix, rename=False) as partial:
        partial.write(data)
    return Path(partial.name)


@contextmanager
def _hidden_beside(target: Path, suffix: str, *, rename: bool) -> Iterator[IO[bytes]]:
    """A new file `.NAME.compositor-XXXXXXXX` + `suffix` in `target`'s folder, given the
    usual mode once the block ends and, with `rename`, renamed onto `target`.
    If the block or either step fails, nothing is left of it."""
    partial_name = ""
    try:
        with tempfile.NamedTemporaryFile(
            dir=target.parent, prefix=f".{target.name}.{_MARK}", suffix=suffix, delete=False
        ) as partial:
            partial_name = partial.name
            yield partial
        _usual_mode(partial_name)
        if rename:
            os.replace(partial_name, target)
    except BaseException:
        if partial_name:
            Path(partial_name).unlink(missing_ok=True)
        raise


def leftovers(folder: Path, suffixes: tuple[str, ...] = ("",)) -> Iterator[Path]:
    """The hidden files (`.NAME.compositor-XXXXXXXX` + one of `suffixes`) that writes into `folder` left when
    their process was killed mid-write, in one listing of the folder: remove them only while no such write can
    be under way (the folder's lock held). The mark keeps a user's own hidden files (`.env.template`) out."""
    ends = "|".join(map(re.escape, suffixes))
    shape = re.compile(r"\..+\." + re.escape(_MARK) + r"[a-z0-9_]{8}(?:" + ends + ")")  # tempfile's 8 characters
    return (path for path in folder.glob(".*") if shape.fullmatch(path.name) and path.is_file())


def _usual_mode(path: str) -> None:
    """The mode a plain open() would have given (NamedTemporaryFile makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
