"""Cursor pagination helpers (shared/pages.py): the cursors on the wire stay as they were."""

from __future__ import annotations

import pytest

from shared import pages
from shared.errors import BadRequest, NotFound


def test_a_sort_key_cursor_keeps_its_wire_format() -> None:
    # As the lexicon has always written them: unpadded url-safe base64 of the JSON array, non-ASCII kept.
    assert pages.encode_cursor(["en", "AC/DC"]) == "WyJlbiIsICJBQy9EQyJd"
    assert pages.encode_cursor(["zh", "東京"]) == "WyJ6aCIsICLmnbHkuqwiXQ"
    assert pages.decode_cursor("WyJ6aCIsICLmnbHkuqwiXQ", 2, "lexicon entry") == ("zh", "東京")


@pytest.mark.parametrize("cursor", ["%%%", "WzFd", "WyJlbiIsICJcdTAwMDAiXQ", pages.encode_cursor(["a", "b", "c"])])
def test_a_bad_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(NotFound, match="cursor does not name a lexicon entry"):
        pages.decode_cursor(cursor, 2, "lexicon entry")


def test_the_page_limit_is_checked() -> None:
    assert pages.page_limit({}) == 50 and pages.page_limit({"limit": "200"}) == 200
    for bad in ("0", "201", "x"):
        with pytest.raises(BadRequest):
            pages.page_limit({"limit": bad})


def test_the_keyset_condition_reads_as_the_order() -> None:
    from sqlalchemy import column

    a, b = column("a"), column("b")
    assert str(pages.after((a, b), (1, 2), descending=True)) == "a < :a_1 OR a = :a_2 AND b < :b_1"
    assert str(pages.after((a,), ("x",))) == "a > :a_1"
