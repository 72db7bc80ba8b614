"""Error hierarchy: every failure carries a stable code, an HTTP status, and whether retrying can help."""

from __future__ import annotations

from typing import Any


class VoicefarmError(Exception):
    code = "internal_error"
    status = 500
    retryable = False

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(VoicefarmError):
    """The input can never succeed: fail at once, never retry."""

    code = "invalid_request"
    status = 400


class Unauthorized(VoicefarmError):
    code = "unauthorized"
    status = 401


class NotFound(VoicefarmError):
    code = "not_found"
    status = 404


class Conflict(VoicefarmError):
    code = "conflict"
    status = 409


class PayloadTooLarge(VoicefarmError):
    code = "payload_too_large"
    status = 413


class TooManyRequests(VoicefarmError):
    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: int, code: str | None = None):
        super().__init__(message, code=code, details={"retry_after": retry_after})
        self.retry_after = retry_after


class Unavailable(VoicefarmError):
    """A dependency (database, broker, storage) is down: the caller may retry later."""

    code = "service_unavailable"
    status = 503
    retryable = True
