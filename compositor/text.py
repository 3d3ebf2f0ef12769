"""One rule for text at the door: every string that enters (a JSON body's keys
and values, a control call, a scenario or config file, a client id from the
environment) is valid Unicode, or it is refused where it enters.

Python's JSON decoder turns the escape `"\\udc80"` into a lone surrogate, and
`os.environ` and `sys.argv` turn bytes that are not UTF-8 into lone
surrogates too (PEP 383). Such a string cannot be encoded: let into the job
store, a log line or an answer, it fails whatever touches it later, far from
its source (a dispatcher that cannot queue a webhook notice, an answer that
cannot be sent). So each door asks `unencodable_field` once and refuses what
it names, with the field's name; nothing behind the doors checks again.
"""

from __future__ import annotations

from collections.abc import Iterator


class InvalidTextError(ValueError):
    """A string that is not valid Unicode; `field` says where it was found."""

    def __init__(self, field: str) -> None:
        self.field = field
        super().__init__(f"{field}: {MESSAGE}")


MESSAGE = "is not valid Unicode text (it holds a lone surrogate, or bytes that are not UTF-8)"


def is_valid_text(text: str) -> bool:
    """Whether `text` can be encoded as UTF-8 (holds no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """`text` with any lone surrogate written as its escape, safe to show and to encode."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def unencodable_field(value: object, where: str = "") -> str | None:
    """The path (`a.b[2].c`, or `where` itself) of the first key or string in a
    JSON-like value (dicts, lists, tuples, scalars) that is not valid
    Unicode; None when every one is. A bad key is named by its escaped self."""
    for path, text in _strings(value, where):
        if not is_valid_text(text):
            return path or "body"
    return None


def check_text(value: object, where: str = "") -> None:
    """Raise `InvalidTextError` naming the first string in `value` that is not valid Unicode."""
    field = unencodable_field(value, where)
    if field is not None:
        raise InvalidTextError(field)


def _strings(value: object, where: str) -> Iterator[tuple[str, str]]:
    """Every key and string in `value` with its path, depth first, without recursion
    (a body may be nested as deeply as its decoder allowed)."""
    stack: list[tuple[str, object]] = [(where, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            yield path, item
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                name = key if isinstance(key, str) else str(key)
                child_path = f"{path}.{printable(name)}" if path else printable(name)
                yield child_path, name
                children.append((child_path, child))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend(reversed([(f"{path}[{index}]", child) for index, child in enumerate(item)]))
