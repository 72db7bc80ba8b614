"""Table of malformed requests: each gets a 4xx with a specific code, none a 5xx, and nothing is written."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.models import Job, Voice
from shared.storage import Storage
from tests.support.fixtures import auth


def _wav(seconds: float, rate: int = 24000, level: float = 0.3, channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = (level * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([tone] * channels, axis=1) if channels > 1 else tone, rate, format="WAV")
    return buf.getvalue()


LONG = "字" * 5001
# (id, json body or raw bytes, extra headers, expected status, expected code)
JOB_CASES: list[tuple[str, Any, dict[str, str], int, str]] = [
    ("not-json", b"{nope", {}, 400, "invalid_json"),
    ("json-array", [1, 2], {}, 400, "invalid_json"),
    ("json-string", "text", {}, 400, "invalid_json"),
    ("json-null", None, {}, 400, "invalid_json"),
    ("empty-object", {}, {}, 400, "invalid_request"),
    ("text-empty", {"text": ""}, {}, 400, "invalid_request"),
    ("text-whitespace", {"text": " \n\t "}, {}, 400, "invalid_request"),
    ("text-number", {"text": 42}, {}, 400, "invalid_request"),
    ("text-list", {"text": ["a"]}, {}, 400, "invalid_request"),
    ("text-too-long", {"text": LONG}, {}, 413, "text_too_long"),
    ("text-nul", {"text": "hello\u0000world"}, {}, 400, "invalid_request"),
    ("text-escape-seq", {"text": "hi \u001b[31m red"}, {}, 400, "invalid_request"),
    ("text-emoji-only", {"text": "🙂🙂🙂"}, {}, 400, "invalid_request"),
    ("text-punctuation-only", {"text": "?!…。"}, {}, 400, "invalid_request"),
    ("text-rtl-override-only", {"text": "\u202e\u202d"}, {}, 400, "invalid_request"),
    ("voice-unknown", {"text": "hi", "voice": "nobody"}, {}, 400, "unknown_voice"),
    ("voice-path", {"text": "hi", "voice": "../../etc/passwd"}, {}, 400, "unknown_voice"),
    ("voice-sql", {"text": "hi", "voice": "x' OR '1'='1"}, {}, 400, "unknown_voice"),
    ("voice-missing-clone", {"text": "hi", "voice": "v_doesnotexist"}, {}, 404, "voice_not_found"),
    ("voice-too-long", {"text": "hi", "voice": "v" * 65}, {}, 400, "invalid_request"),
    ("voice-number", {"text": "hi", "voice": 7}, {}, 400, "invalid_request"),
    ("mode-unknown", {"text": "hi", "mode": "sing"}, {}, 400, "invalid_request"),
    ("instruct-without-text", {"text": "hi", "mode": "instruct"}, {}, 400, "invalid_request"),
    ("instruct-wrong-mode", {"text": "hi", "instruct": "sadly"}, {}, 400, "invalid_request"),
    ("instruct-too-long", {"text": "hi", "mode": "instruct", "instruct": "x" * 501}, {}, 400, "invalid_request"),
    ("format-unknown", {"text": "hi", "format": "aiff"}, {}, 400, "invalid_request"),
    ("format-path", {"text": "hi", "format": "../wav"}, {}, 400, "invalid_request"),
    ("language-unknown", {"text": "hi", "language": "fr"}, {}, 400, "unsupported_language"),
    ("language-case", {"text": "hi", "language": "EN"}, {}, 400, "invalid_request"),
    ("speed-high", {"text": "hi", "speed": 9}, {}, 400, "invalid_request"),
    ("speed-zero", {"text": "hi", "speed": 0}, {}, 400, "invalid_request"),
    ("speed-negative", {"text": "hi", "speed": -1}, {}, 400, "invalid_request"),
    ("speed-string", {"text": "hi", "speed": "fast"}, {}, 400, "invalid_request"),
    ("sample-rate-odd-for-mp3", {"text": "hi", "format": "mp3", "sample_rate": 12345}, {}, 400, "invalid_request"),
    ("sample-rate-too-high", {"text": "hi", "sample_rate": 96000}, {}, 400, "invalid_request"),
    ("sample-rate-negative", {"text": "hi", "sample_rate": -16000}, {}, 400, "invalid_request"),
    ("opus-wrong-rate", {"text": "hi", "format": "opus", "sample_rate": 16000}, {}, 400, "invalid_request"),
    ("seed-negative", {"text": "hi", "seed": -1}, {}, 400, "invalid_request"),
    ("seed-huge", {"text": "hi", "seed": 2**40}, {}, 400, "invalid_request"),
    ("priority-high", {"text": "hi", "priority": 10}, {}, 400, "invalid_request"),
    ("unknown-field", {"text": "hi", "webhook": "http://x"}, {}, 400, "invalid_request"),
    ("idempotency-key-long", {"text": "hi"}, {"Idempotency-Key": "k" * 201}, 400, "invalid_idempotency_key"),
    ("no-auth", {"text": "hi"}, {"Authorization": ""}, 401, "missing_api_key"),
    ("bad-scheme", {"text": "hi"}, {"Authorization": "Basic dXNlcjpwYXNz"}, 401, "missing_api_key"),
    ("wrong-key", {"text": "hi"}, {"Authorization": "Bearer vf_nope"}, 401, "invalid_api_key"),
    ("injection-key", {"text": "hi"}, {"Authorization": "Bearer ' OR 1=1 --"}, 401, "invalid_api_key"),
]

UPLOAD_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("no-file", {"name": "x"}, 400, "missing_audio"),
    ("empty-file", {"audio": (io.BytesIO(b""), "a.wav")}, 400, "empty_audio"),
    ("text-file", {"audio": (io.BytesIO(b"hello " * 1000), "a.wav")}, 400, "undecodable_audio"),
    ("png-file", {"audio": (io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * 4000), "a.png")}, 400, "undecodable_audio"),
    ("header-only", {"audio": (io.BytesIO(_wav(5)[:44]), "a.wav")}, 400, "undecodable_audio"),
    ("truncated", {"audio": (io.BytesIO(_wav(5)[:30000]), "a.wav")}, 400, "audio_too_short"),
    ("too-short", {"audio": (io.BytesIO(_wav(2)), "a.wav")}, 400, "audio_too_short"),
    ("too-long", {"audio": (io.BytesIO(_wav(31, rate=16000)), "a.wav")}, 400, "audio_too_long"),
    ("silent", {"audio": (io.BytesIO(_wav(5, level=0.0)), "a.wav")}, 400, "silent_audio"),
    ("low-rate", {"audio": (io.BytesIO(_wav(5, rate=8000)), "a.wav")}, 400, "sample_rate_too_low"),
    ("clipped", {"audio": (io.BytesIO(_wav(5, level=4.0)), "a.wav")}, 400, "clipped_audio"),
    ("path-name", {"audio": (io.BytesIO(b""), "../../etc/passwd")}, 400, "empty_audio"),
    (
        "bad-language",
        {"audio": (io.BytesIO(_wav(5)), "a.wav"), "language": "klingon"},
        400,
        "unsupported_language",
    ),
    (
        "nul-transcript",
        {"audio": (io.BytesIO(_wav(5)), "a.wav"), "transcript": "a\u0000b"},
        400,
        "invalid_text",
    ),
    (
        "long-transcript",
        {"audio": (io.BytesIO(_wav(5)), "a.wav"), "transcript": "x" * 1001},
        400,
        "transcript_too_long",
    ),
]


@pytest.fixture
def storage(farm_settings: Settings) -> Storage:
    return Storage.from_settings(farm_settings)


def _counts(sessions: sessionmaker[Session], storage: Storage) -> tuple[int, int, int]:
    with sessions() as session:
        jobs = session.scalar(select(func.count()).select_from(Job)) or 0
        voices = session.scalar(select(func.count()).select_from(Voice)) or 0
    return jobs, voices, len(storage.list_keys())


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"), [c[1:] for c in JOB_CASES], ids=[c[0] for c in JOB_CASES]
)
def test_bad_job_requests(
    client: FlaskClient,
    api_key: str,
    sessions: sessionmaker[Session],
    storage: Storage,
    body: Any,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    before = _counts(sessions, storage)
    all_headers = auth(api_key) | headers
    if isinstance(body, bytes):
        response = client.post("/v1/jobs", data=body, headers=all_headers | {"Content-Type": "application/json"})
    else:
        response = client.post("/v1/jobs", json=body, headers=all_headers)
    assert (response.status_code, response.get_json()["error"]["code"]) == (status, code), response.get_json()
    assert response.get_json()["error"]["message"]
    assert _counts(sessions, storage) == before


@pytest.mark.parametrize(("form", "status", "code"), [c[1:] for c in UPLOAD_CASES], ids=[c[0] for c in UPLOAD_CASES])
def test_bad_uploads(
    client: FlaskClient,
    api_key: str,
    sessions: sessionmaker[Session],
    storage: Storage,
    form: dict[str, Any],
    status: int,
    code: str,
) -> None:
    before = _counts(sessions, storage)
    response = client.post("/v1/voices", data=form, headers=auth(api_key))
    assert (response.status_code, response.get_json()["error"]["code"]) == (status, code), response.get_json()
    assert _counts(sessions, storage) == before


@pytest.mark.parametrize(
    "path", ["/v1/jobs/../../etc/passwd", "/v1/jobs/%00", "/v1/voices/..%2f..%2fsecret", "/v1/jobs/' OR 1=1"]
)
def test_odd_ids_are_not_found(client: FlaskClient, api_key: str, path: str) -> None:
    response = client.get(path, headers=auth(api_key))
    assert response.status_code == 404 and response.get_json()["error"]["code"] in (
        "not_found",
        "job_not_found",
        "voice_not_found",
    )


def test_the_table_is_big_enough() -> None:
    assert len(JOB_CASES) + len(UPLOAD_CASES) >= 40
