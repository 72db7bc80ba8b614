"""Cursor pagination arguments shared by the list endpoints."""

from __future__ import annotations

from flask import request

from shared.errors import BadRequest

MAX_PAGE = 200


def page_limit(default: int = 50) -> int:
    """`?limit=`, checked: an integer from 1 to MAX_PAGE."""
    try:
        limit = int(request.args.get("limit", str(default)))
    except ValueError:
        raise BadRequest("limit must be an integer", code="invalid_limit") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}", code="invalid_limit")
    return limit
