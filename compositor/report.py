"""What validation found: the problems, by field, and the API's answer they make."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compositor.codes import ApiCode
from compositor.layout import CompositeRequest


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass
class ValidationReport:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    request: CompositeRequest | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def code(self) -> ApiCode:
        return ApiCode.SUCCESS if self.ok else ApiCode.PARAMETER_ERROR

    @property
    def message(self) -> str:
        if self.ok:
            return "OK"  # as the API says it
        first = self.errors[0]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"{first.field}: {first.message}{more}"

    def envelope(self) -> dict[str, Any]:
        return {
            "code": int(self.code),
            "msg": self.message,
            "data": {
                "errors": [p.as_dict() for p in self.errors],
                "warnings": [p.as_dict() for p in self.warnings],
            },
        }
