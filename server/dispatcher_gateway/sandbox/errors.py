"""The upstream's error body, and the one exception every sandbox handler raises to send it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]

MAX_ECHOED_VALUE = 200
"""Characters of an offending string value echoed back in `details.value`."""


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


class ApiError(Exception):
    """One documented error answer: status, code, message, and the field it is about."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        value: Any = MISSING,
        expected: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.value = value
        self.expected = expected
        self.headers = dict(headers or {})

    def body(self, *, path: str, request_id: str) -> JSON:
        details: JSON = {}
        if self.field is not None:
            details["field"] = self.field
            details["value"] = _echo(self.value)
        if self.expected is not None:
            details["expected"] = self.expected
        return {
            "error": self.code,
            "message": self.message,
            "details": details,
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "path": path,
            "requestId": request_id,
        }


def _echo(value: Any) -> Any:
    """The offending value as the answer shows it: scalars as given, containers by type."""
    if value is MISSING:
        return None
    if isinstance(value, str):
        return value[:MAX_ECHOED_VALUE]
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return value


def missing(field: str, expected: str) -> ApiError:
    return ApiError(400, "missing_field", f"{field} is required", field=field, expected=expected)


def invalid(field: str, value: Any, expected: str) -> ApiError:
    return ApiError(
        400, "invalid_field", f"{field} is invalid", field=field, value=value, expected=expected
    )
