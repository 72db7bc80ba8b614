"""Error hierarchy: every failure carries a stable code and an HTTP status, and its root says whether retrying
can help.

- `Transient`: a dependency (database, broker, storage) is down. Workers retry with Celery's backoff and the
  attempt does not count as a failure; the API answers 503 with Retry-After.
- `Permanent`: the job can never succeed as asked (bad input, a deleted voice, an engine that failed on it).
  The job fails at once with the error's code.
"""

from __future__ import annotations

from typing import Any


class VoicefarmError(Exception):
    code = "internal_error"
    status = 500

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


class Permanent(VoicefarmError):
    """Retrying cannot help: the job fails at once with this code."""


class Transient(VoicefarmError):
    """A dependency is briefly unavailable: wait and try again; never counts as a failed attempt."""

    code = "service_unavailable"
    status = 503


class BadRequest(Permanent):
    """The input can never succeed: fail at once, never retry."""

    code = "invalid_request"
    status = 400


class Unauthorized(Permanent):
    code = "unauthorized"
    status = 401


class Forbidden(Permanent):
    """The credentials are valid but do not reach this resource (a plain key on an operator endpoint)."""

    code = "forbidden"
    status = 403


class NotFound(Permanent):
    code = "not_found"
    status = 404


class Conflict(Permanent):
    code = "conflict"
    status = 409


class PayloadTooLarge(Permanent):
    code = "payload_too_large"
    status = 413


class TooManyRequests(Permanent):
    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: int, code: str | None = None):
        super().__init__(message, code=code, details={"retry_after": retry_after})
        self.retry_after = retry_after


class Unavailable(Transient):
    """A dependency (database, broker, storage) is down: the caller may retry later."""


class EngineError(Permanent):
    """The engine raised on this job (a bug, CUDA out of memory); details are in the worker's log, not here."""

    code = "engine_error"


class StorageRejected(Permanent):
    """Object storage refused a request with a 4xx (bad credentials, a missing bucket): waiting will not help."""

    code = "storage_error"


class InternalError(Permanent):
    """An unexpected failure inside the farm; details are in the log."""

    code = "internal_error"
