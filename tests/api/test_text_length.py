"""Text length is checked before any per-character work: an over-long text is refused without being scanned for
control characters, normalised or run through language detection, and a body too big to hold an allowed text is
refused before it is parsed. Against real PostgreSQL, Redis and SeaweedFS."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

import producer.api.jobs
import producer.api.voices
import shared.schemas
from shared.config import Settings
from tests.api.test_upload_bombs import wav
from tests.support.fixtures import auth


def spy(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    """Record the length of every string `module.name` is called with, then call through."""
    seen: list[int] = []
    real: Callable[..., Any] = getattr(module, name)

    def recording(value: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(value))
        return real(value, *args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return seen


def test_over_long_text_is_refused_before_any_scan(
    client: FlaskClient, api_key: str, farm_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = farm_settings.max_text_chars
    cleaned = spy(monkeypatch, shared.schemas, "clean_text")
    detected = spy(monkeypatch, producer.api.jobs, "detect_language")
    response = client.post("/v1/jobs", json={"text": "a" * (limit + 1)}, headers=auth(api_key))
    assert (response.status_code, response.get_json()["error"]["code"]) == (413, "text_too_long")
    assert str(limit) in response.get_json()["error"]["message"]
    assert cleaned == [] and detected == []
    # A text at the limit is scanned and accepted as before.
    ok = client.post("/v1/jobs", json={"text": "a" * limit}, headers=auth(api_key))
    assert ok.status_code == 202 and limit in cleaned and detected == [limit]


def test_a_body_too_big_for_any_allowed_text_is_refused_unread(
    client: FlaskClient, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = spy(monkeypatch, json, "loads")
    body = json.dumps({"text": "a" * 10_000_000})
    started = time.perf_counter()
    response = client.post("/v1/jobs", data=body, headers=auth(api_key) | {"Content-Type": "application/json"})
    elapsed = time.perf_counter() - started
    assert parsed == [] and elapsed < 1.0  # before reading the answer, which parses JSON itself
    assert (response.status_code, response.get_json()["error"]["code"]) == (413, "body_too_large")


@pytest.mark.parametrize(
    ("field", "size", "code"), [("transcript", 1001, "transcript_too_long"), ("name", 201, "invalid_name")]
)
def test_voice_form_fields_are_measured_before_they_are_scanned(
    client: FlaskClient, api_key: str, monkeypatch: pytest.MonkeyPatch, field: str, size: int, code: str
) -> None:
    cleaned = spy(monkeypatch, producer.api.voices, "clean_text")
    form = {"audio": (io.BytesIO(wav(5)), "a.wav"), field: "x" * size}
    response = client.post("/v1/voices", data=form, headers=auth(api_key))
    assert (response.status_code, response.get_json()["error"]["code"]) == (400, code)
    assert cleaned == []
