"""SSML at the API boundary (`text_format: "ssml"`, shared/text/ssml/): checked at submit, 400 before any work;
the job keeps the plain text it speaks and the document in its options. Real PostgreSQL, Redis and SeaweedFS; no
worker runs."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Job
from tests.support.batches import register_workers
from tests.support.fixtures import auth

DIALOGUE = (
    '<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="en-US">'
    '<voice name="jf_alpha">Did you bring the <sub alias="World Wide Web Consortium">W3C</sub> notes?</voice>'
    '<break time="400ms"/><voice name="jm_kumo">Yes, all <say-as interpret-as="cardinal">12</say-as> pages.</voice>'
    "</speak>"
)


def submit(client: FlaskClient, key: str, body: object) -> tuple[int, dict]:
    response = client.post("/v1/jobs", json=body, headers=auth(key))
    return response.status_code, response.get_json()


def count_jobs(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_ssml_job_keeps_plain_text_and_document(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session]
) -> None:
    status, body = submit(client, api_key, {"text": DIALOGUE, "text_format": "ssml", "voice": "jf_alpha"})
    assert status == 202, body
    assert body["text"] == "Did you bring the World Wide Web Consortium notes? Yes, all twelve pages."
    assert body["language"] == "en" and body["voice"] == "jf_alpha"
    with sessions() as session:
        job = session.get(Job, body["id"])
        assert job is not None and job.options == {"text_format": "ssml", "ssml": DIALOGUE}


def test_ssml_language_and_sole_voice_fill_what_the_request_leaves_out(client: FlaskClient, api_key: str) -> None:
    doc = '<speak xml:lang="ja-JP"><voice name="jm_kumo">こんにちは<break time="300ms"/>元気ですか</voice></speak>'
    status, body = submit(client, api_key, {"text": doc, "text_format": "ssml"})
    assert status == 202, body
    assert body["language"] == "ja" and body["voice"] == "jm_kumo" and body["text"] == "こんにちは元気ですか"


def test_the_same_string_as_plain_text_and_as_ssml_are_different_jobs(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session]
) -> None:
    doc = "<speak>Hello <break/> there.</speak>"
    _, plain = submit(client, api_key, {"text": doc})
    _, marked = submit(client, api_key, {"text": doc, "text_format": "ssml"})
    assert plain["text"] == doc and marked["text"] == "Hello there."
    with sessions() as session:
        keys = {session.get(Job, i).cache_key for i in (plain["id"], marked["id"])}  # type: ignore[union-attr]
    assert len(keys) == 2


@pytest.mark.parametrize(
    ("text", "code", "needle"),
    [
        ("<speak>Hello <break></speak>", "invalid_ssml", "line 1, column 23"),
        ("<speak>\n<s>Fine &nbsp; then</s>\n</speak>", "invalid_ssml", "line 2, column 9"),
        ('<!DOCTYPE speak [<!ENTITY a "aaaa">]><speak>&a;</speak>', "invalid_ssml", "DTD"),
        ("<voice>no speak</voice>", "invalid_ssml", "<speak>"),
        ('<speak><voice name="en-US-AvaNeural">Hi</voice></speak>', "unknown_voice", "en-US-AvaNeural"),
        ('<speak>Hi <lang xml:lang="de-DE">Guten Tag</lang></speak>', "unsupported_language", "'de'"),
    ],
)
def test_bad_ssml_is_refused_before_any_work(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], text: str, code: str, needle: str
) -> None:
    status, body = submit(client, api_key, {"text": text, "text_format": "ssml"})
    assert status == 400, body
    assert body["error"]["code"] == code and needle in body["error"]["message"]
    if code == "invalid_ssml" and "line" in needle:
        assert body["error"]["line"] >= 1 and body["error"]["column"] >= 1
    assert count_jobs(sessions) == 0


def test_batch_lines_take_text_format(client: FlaskClient, api_key: str, sessions: sessionmaker[Session]) -> None:
    register_workers(sessions, 1)
    lines = [
        {"id": "good", "text": "<speak>One <break time='1s'/> two.</speak>"},
        {"id": "bad", "text": "<speak>One <break time='1s'> two.</speak>"},
    ]
    body = {"lines": lines, "defaults": {"text_format": "ssml"}}
    response = client.post("/v1/batches", json=body, headers=auth(api_key))
    assert response.status_code == 422
    problems = response.get_json()["error"]["lines"]
    assert [(p["id"], p["field"], p["code"]) for p in problems] == [("bad", "text", "invalid_ssml")]
    assert "line 1, column" in problems[0]["message"]
    response = client.post("/v1/batches", json={**body, "lines": lines[:1]}, headers=auth(api_key))
    assert response.status_code in (201, 202), response.get_json()
    with sessions() as session:
        job = session.scalars(select(Job)).one()
        assert job.text == "One two." and (job.options or {}).get("text_format") == "ssml"


def test_speech_input_starting_with_speak_is_ssml(client: FlaskClient, api_key: str) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": "<speak>Hello <break time='x'></speak>"}
    response = client.post("/v1/audio/speech", json=body, headers=auth(api_key))
    error = response.get_json()["error"]
    assert response.status_code == 400 and error["code"] == "invalid_ssml" and "line 1" in error["message"]


def test_openapi_shows_text_format(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    prop = document["components"]["schemas"]["JobRequest"]["properties"]["text_format"]
    assert prop["enum"] == ["text", "ssml"] and prop["default"] == "text" and "SSML" in prop["description"]
