"""The mirror's one kind of refusal: an API outcome other than success."""

from __future__ import annotations

from compositor.errors import ApiCode


class ApiError(Exception):
    """A business outcome other than success: answered as HTTP 200 with `code`."""

    def __init__(self, code: ApiCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{int(code)}: {message}")
