"""The API's result codes, as upstream documents them."""

from __future__ import annotations

from enum import IntEnum


class ApiCode(IntEnum):
    """Result codes as upstream documents them (SPEC.md, Responses)."""

    SUCCESS = 1000
    PARAMETER_ERROR = 1003
    TOO_FREQUENT = 1005
    QUOTA_NOT_ENOUGH = 1006
    INVALID_AUTHORIZATION = 1101
    AUTHORIZATION_EMPTY = 1102
    IMAGE_PROCESSING_ERROR = 1108
    ACCOUNT_BANNED = 1200
    BACKGROUND_CHANGE_ERROR = 1206
