"""Request bodies at the HTTP edge: each endpoint's cap, and JSON whose nesting is measured before it is parsed.

Every endpoint authenticates before it reads its body, so an anonymous body is never read (gunicorn discards a
bounded part of what is left and closes the connection). Before any handler runs, a body whose Content-Length is
over its endpoint's cap is refused (413) unread, and the cap is set as the request's `max_content_length`, so a
chunked body is read no further than the cap either (413 `payload_too_large`). The caps are what each endpoint
needs: a speech request 64 KiB, a job (and a batch line's re-render) what its longest text can take as JSON, a
voice (and a file to verify) its upload limit, a batch `max_batch_bytes` (read as a stream with a line cap,
shared/batches/reader.py), and anything else 64 KiB. `request.get_json()` parses through shared/jsonbody.py:
JSON nested deeper than 64 levels is not JSON (400 `invalid_json`), never a RecursionError.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge

from producer.resources import farm
from shared import jsonbody
from shared.config import Settings
from shared.errors import BadRequest, PayloadTooLarge
from shared.schemas import MAX_JSON_BYTES_PER_CHAR

DEFAULT_BODY_BYTES = 64 * 1024
SPEECH_BODY_BYTES = 64 * 1024
# Room in a job body for everything but the text (voice, instruct, webhook URL, options), escaped at worst.
JOB_BODY_OVERHEAD_BYTES = 64 * 1024


def job_body_bytes(settings: Settings) -> int:
    """The largest body a job (or a batch line) with a text at the limit can take, every character escaped."""
    return settings.max_text_chars * MAX_JSON_BYTES_PER_CHAR + JOB_BODY_OVERHEAD_BYTES


def body_cap(endpoint: str | None, settings: Settings) -> tuple[int, str, str]:
    """(bytes, error code, what the limit is called) for an endpoint's body."""
    if endpoint in ("jobs.submit", "batches.rerender"):
        return job_body_bytes(settings), "body_too_large", f"a text of max_text_chars={settings.max_text_chars}"
    if endpoint == "batches.submit":
        return settings.max_batch_bytes, "batch_body_too_large", f"max_batch_bytes={settings.max_batch_bytes}"
    if endpoint in ("voices.create", "verify.verify"):
        return settings.max_upload_bytes, "payload_too_large", f"max_upload_bytes={settings.max_upload_bytes}"
    if endpoint == "speech.speech":
        return SPEECH_BODY_BYTES, "body_too_large", f"{SPEECH_BODY_BYTES} bytes"
    return DEFAULT_BODY_BYTES, "body_too_large", f"{DEFAULT_BODY_BYTES} bytes"


class DepthCheckedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, but `loads` (what `request.get_json` calls) measures nesting first. Too deep is 400
    `invalid_json` saying so, even where a handler asks for `get_json(silent=True)`."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return jsonbody.loads(s)
        except jsonbody.TooDeep as exc:
            raise BadRequest(f"the body is not JSON the API reads: {exc}", code="invalid_json") from None


class IntakeRequest(Request):
    body_cap: int | None = None

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False) -> Any:
        """As Werkzeug reads it, but a body without a Content-Length is refused past its cap: Werkzeug stops at
        `max_content_length` silently when a read ends exactly there, so that limit is the cap plus one byte."""
        data = super().get_data(cache=cache, as_text=False, parse_form_data=parse_form_data)
        if self.body_cap is not None and len(data) > self.body_cap:
            raise RequestEntityTooLarge()
        return data.decode(errors="replace") if as_text else data


def init_intake(app: Flask) -> None:
    app.request_class = IntakeRequest
    provider = DepthCheckedJSONProvider(app)
    for option in ("sort_keys", "ensure_ascii", "compact", "mimetype"):  # as the app factory set them
        setattr(provider, option, getattr(app.json, option))
    app.json = provider

    @app.before_request
    def _cap_body() -> None:
        limit, code, named = body_cap(request.endpoint, farm().settings)
        length = request.content_length
        if length is not None and length > limit:
            raise PayloadTooLarge(f"the body is {length} bytes; the limit is {named}", code=code)
        # Without a Content-Length, one byte more than the cap is read to tell a body at the cap from a longer one
        # (a stream read past it raises 413 itself; `get_data` checks the length).
        request.max_content_length = limit if length is not None else limit + 1
        request.body_cap = limit  # type: ignore[attr-defined]
