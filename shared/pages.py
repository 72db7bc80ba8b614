"""Cursor pagination of the list endpoints: the page size, the cursors on the wire, and the keyset condition.

Two kinds of cursor are on the wire, and both must keep decoding: the newest-first lists (jobs, batches) pass the
id of the last row of the previous page, and the lexicon passes its sort key (language, term) as unpadded
url-safe base64 of a JSON array. Either way the next page is read with a keyset condition, never an offset.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from shared.errors import BadRequest, NotFound

MAX_PAGE = 200
T = TypeVar("T")


def page_limit(args: Mapping[str, str], default: int = 50) -> int:
    """`?limit=` of a request's arguments, checked: an integer from 1 to MAX_PAGE."""
    try:
        limit = int(args.get("limit", str(default)))
    except ValueError:
        raise BadRequest("limit must be an integer", code="invalid_limit") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}", code="invalid_limit")
    return limit


def after(columns: Sequence[Any], values: Sequence[Any], *, descending: bool = False) -> Any:
    """The keyset condition: rows that come after `values` in the order of `columns` (all ascending, or all
    descending), e.g. `a > x OR (a = x AND b > y)`."""

    def beyond(column: Any, value: Any) -> Any:
        return column < value if descending else column > value

    condition = beyond(columns[-1], values[-1])
    for column, value in zip(reversed(columns[:-1]), reversed(values[:-1]), strict=True):
        condition = beyond(column, value) | ((column == value) & condition)
    return condition


def newest_first(
    session: Session,
    query: Select[T],
    model: type[T],
    *,
    tenant_id: str,
    before: str | None,
    limit: int,
    is_id: Callable[[str], bool],
    what: str,
) -> list[T]:
    """A page of a tenant's rows by `created_at` then `id`, newest first. `before` (the cursor) is the id of the
    last row of the previous page; one that names no row of the tenant is refused (404 `bad_cursor`)."""
    table: Any = model
    if before:
        anchor: Any = session.get(model, before) if is_id(before) else None
        if anchor is None or anchor.tenant_id != tenant_id:
            raise NotFound(f"cursor does not name a {what}", code="bad_cursor")
        query = query.where(after((table.created_at, table.id), (anchor.created_at, anchor.id), descending=True))
    return list(session.scalars(query.order_by(table.created_at.desc(), table.id.desc()).limit(limit)))


def id_cursor(page: Sequence[Any], limit: int) -> str | None:
    """The cursor of the page after a newest-first page: its last row's id, when the page is full."""
    return str(page[-1].id) if len(page) == limit else None


def encode_cursor(values: Sequence[str]) -> str:
    """A sort key as a cursor: url-safe base64 of its JSON array, unpadded."""
    raw = json.dumps(list(values), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, size: int, what: str) -> tuple[str, ...]:
    """The sort key of an `encode_cursor` cursor: `size` strings (no NUL, which PostgreSQL text refuses);
    anything else is refused (404 `bad_cursor`)."""
    try:
        values = tuple(json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))))
        if len(values) != size or not all(isinstance(v, str) and "\x00" not in v for v in values):
            raise ValueError("not a cursor of this list")
        return values
    except (ValueError, TypeError, binascii.Error):
        raise NotFound(f"cursor does not name a {what}", code="bad_cursor") from None
