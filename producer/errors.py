"""One place that turns every failure into the API's JSON error shape."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shared.errors import TooManyRequests, Unavailable, VoicefarmError

log = logging.getLogger(__name__)


def error_response(code: str, message: str, status: int, **extra: object) -> tuple[Response, int]:
    body: dict[str, object] = {"code": code, "message": message}
    body.update(extra)
    return jsonify({"error": body}), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(VoicefarmError)
    def _farm_error(exc: VoicefarmError) -> tuple[Response, int]:
        response, status = error_response(exc.code, exc.message, exc.status, **exc.details)
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, Unavailable):
            response.headers["Retry-After"] = "5"
        return response, status

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> tuple[Response, int]:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        return error_response("invalid_request", f"{where}: {first['msg']}", 400, problems=problems)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_down(exc: DBAPIError) -> tuple[Response, int]:
        log.warning("database error: %s", type(exc.orig).__name__ if exc.orig else exc)
        response, status = error_response("database_unavailable", "the job database is unavailable", 503)
        response.headers["Retry-After"] = "5"
        return response, status

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> tuple[Response, int]:
        limit = getattr(request, "body_cap", None) or request.max_content_length  # the endpoint's (producer/intake.py)
        return error_response("payload_too_large", f"the request body is larger than the {limit}-byte limit", 413)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(code, exc.description or exc.name or "error", exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        # Details stay in the log; the client gets a stable code, never a traceback or str(exc).
        log.exception("unhandled error")
        return error_response("internal_error", "internal error", 500)
