"""The API's result codes and the exceptions that carry them."""

from __future__ import annotations

from compositor.codes import ApiCode
from compositor.report import ValidationReport

__all__ = ["ApiCode", "CompositorError", "InvalidRequestError", "ModelUnavailableError", "SourceError"]


class CompositorError(Exception):
    """Base of every error this package raises on purpose."""

    code: ApiCode = ApiCode.BACKGROUND_CHANGE_ERROR


class InvalidRequestError(CompositorError):
    """The request body breaks the contract; `report` lists every problem."""

    code = ApiCode.PARAMETER_ERROR

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(report.message)


class SourceError(CompositorError):
    """An image source could not be fetched or decoded."""

    code = ApiCode.IMAGE_PROCESSING_ERROR

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class ModelUnavailableError(CompositorError):
    """A background-removal model is missing or fails its checksum."""

    code = ApiCode.BACKGROUND_CHANGE_ERROR
