"""The tenant's pronunciation lexicon: list, look up, put (create or replace) and delete entries.

An entry is addressed by its language and term: `/v1/lexicon/{language}/{term}`, the term percent-encoded
(UTF-8), so CJK, spaces and even slashes work: `/v1/lexicon/zh/%E6%9B%BE%E5%9B%BD%E8%97%A9`.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from producer.auth import authenticate
from producer.resources import farm
from shared.errors import BadRequest
from shared.pages import page_limit
from shared.text import lexicon

bp = Blueprint("lexicon", __name__, url_prefix="/v1/lexicon")


class LexiconPut(BaseModel):
    """The body of `PUT /v1/lexicon/{language}/{term}`."""

    model_config = ConfigDict(extra="forbid")

    pronunciation: str = Field(min_length=1, max_length=lexicon.MAX_PRONUNCIATION_CHARS)
    # pinyin (zh: tone numbers or marks), ipa or arpabet (en), kana (ja); the language's first when absent.
    alphabet: Literal["pinyin", "ipa", "arpabet", "kana"] | None = None


class LexiconEntryView(BaseModel):
    term: str
    language: Literal["zh", "en", "ja"]
    pronunciation: str
    alphabet: Literal["pinyin", "ipa", "arpabet", "kana"]
    created_at: str
    updated_at: str


class LexiconList(BaseModel):
    entries: list[LexiconEntryView]
    next_cursor: str | None


@bp.get("")
def index() -> Response:
    language = request.args.get("language") or None
    if language is not None and language not in lexicon.ALPHABETS:
        raise BadRequest(f"language must be one of {', '.join(lexicon.ALPHABETS)}", code="unsupported_language")
    limit = page_limit(request.args)
    with farm().sessions() as session:
        tenant_id = authenticate(session)
        rows, cursor = lexicon.list_entries(
            session, tenant_id, language=language, limit=limit, cursor=request.args.get("cursor") or None
        )
        return jsonify({"entries": [lexicon.entry_view(row) for row in rows], "next_cursor": cursor})


@bp.get("/<language>/<path:term>")
def show(language: str, term: str) -> Response:
    with farm().sessions() as session:
        tenant_id = authenticate(session)
        key = lexicon.check_entry(term, language)
        return jsonify(lexicon.entry_view(lexicon.get_entry(session, tenant_id, key.language, key.term)))


@bp.put("/<language>/<path:term>")
def put(language: str, term: str) -> tuple[Response, int]:
    with farm().sessions() as session, session.begin():
        tenant_id = authenticate(session)
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict):
            raise BadRequest("the body must be a JSON object", code="invalid_json")
        body = LexiconPut.model_validate(payload)
        entry = lexicon.check_entry(term, language, body.pronunciation, body.alphabet)
        row, created = lexicon.put_entry(session, tenant_id, entry)
        view = lexicon.entry_view(row)
    return jsonify(view), 201 if created else 200


@bp.delete("/<language>/<path:term>")
def delete(language: str, term: str) -> tuple[str, int]:
    with farm().sessions() as session, session.begin():
        tenant_id = authenticate(session)
        key = lexicon.check_entry(term, language)
        lexicon.delete_entry(session, tenant_id, key.language, key.term)
    return "", 204
