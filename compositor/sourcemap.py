"""Source maps: bodies keep their real URLs and render offline from local files.

A map is a JSON object from a URL, or a URL prefix ending in "/", to a local
file or folder: `{"https://cdn.example.com/img/": "./images/",
"https://x/y.png": "y.png"}`. Relative paths resolve against the map file's
folder. A mapped source is read from disk and never fetched; an exact URL
wins over a prefix, and a longer prefix over a shorter one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from compositor import text
from compositor.errors import SourceError


class SourceMapError(ValueError):
    """The map file cannot be used; the message says why."""


@dataclass(frozen=True)
class SourceMap:
    exact: tuple[tuple[str, Path], ...] = ()
    prefixes: tuple[tuple[str, Path], ...] = ()  # longest first

    @classmethod
    def from_entries(cls, entries: dict[str, Path]) -> SourceMap:
        exact = tuple((url, path) for url, path in entries.items() if not url.endswith("/"))
        prefixes = sorted(((url, path) for url, path in entries.items() if url.endswith("/")), key=lambda e: -len(e[0]))
        return cls(exact, tuple(prefixes))

    def merged(self, other: SourceMap) -> SourceMap:
        """Both maps' entries; `other`'s win where both name a URL."""
        entries = dict(self.exact) | dict(self.prefixes) | dict(other.exact) | dict(other.prefixes)
        return SourceMap.from_entries(entries)

    def resolve(self, ref: str, field: str) -> Path | None:
        """The local file `ref` is mapped to, or None when the map does not cover it."""
        for url, path in self.exact:
            if ref == url:
                return path
        for prefix, folder in self.prefixes:
            if ref.startswith(prefix):
                rest = unquote(ref[len(prefix) :].split("#", 1)[0].split("?", 1)[0])
                target = (folder / rest).resolve()
                if not rest or not target.is_relative_to(folder.resolve()):
                    raise SourceError(field, "is mapped by the source map to a path outside its folder")
                return target
        return None


def load_source_map(path: Path) -> SourceMap:
    """Read a map file; SourceMapError names what is wrong with it."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SourceMapError(f"cannot read the source map {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise SourceMapError(f"the source map {path} is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise SourceMapError(f"the source map {path} must be a JSON object from URLs to local paths")
    bad_text = text.unencodable_field(raw)
    if bad_text is not None:
        raise SourceMapError(f"the source map {path}: {bad_text}: {text.MESSAGE}")
    base = path.resolve().parent
    return SourceMap.from_entries({url: (base / local).resolve() for url, local in raw.items()})
