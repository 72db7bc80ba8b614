"""The spoken AI notice at the boundary: `disclosure` on jobs, batch defaults and lines, checked with a clear error;
the tenant's default set from the command line and applied where a request does not say; the position part of the
dedup key. Real PostgreSQL, Redis and SeaweedFS; no worker runs (tests/worker/test_disclosure.py speaks it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.audio import subtitles
from shared.db import make_engine, make_session_factory
from shared.models import Job, Tenant
from tests.support.batches import register_workers
from tests.support.fixtures import auth, new_api_key
from voicefarm.cli import main


def submit(client: FlaskClient, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = client.post("/v1/jobs", json=body, headers=auth(key))
    return response.status_code, response.get_json()


def job_row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def position(sessions: sessionmaker[Session], job_id: str) -> str | None:
    return (job_row(sessions, job_id).options or {}).get("disclosure")


def test_a_job_asks_for_a_notice_and_a_bad_value_is_refused_clearly(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session]
) -> None:
    for asked in ("start", "end"):
        status, body = submit(client, api_key, {"text": f"Notice at the {asked}.", "disclosure": asked})
        assert status == 202, body
        assert position(sessions, body["id"]) == asked
        assert body["disclosure"] == asked  # the job's view says which notice it gets
    status, body = submit(client, api_key, {"text": "No notice.", "disclosure": "none"})
    assert status == 202 and position(sessions, body["id"]) is None
    assert job_row(sessions, body["id"]).options is None  # nothing left behind: its key is as it always was
    status, body = submit(client, api_key, {"text": "Notice in the middle.", "disclosure": "middle"})
    assert status == 400
    error = body["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("disclosure:") and "'none', 'start' or 'end'" in error["message"]
    assert error["problems"][0]["field"] == "disclosure"
    status, body = submit(client, api_key, {"text": "Not a string.", "disclosure": True})
    assert status == 400 and body["error"]["problems"][0]["field"] == "disclosure"


def test_batch_defaults_and_lines_set_it_and_bad_lines_are_listed(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session]
) -> None:
    register_workers(sessions, 1)
    lines = [
        {"id": "a", "text": "The default applies."},
        {"id": "b", "text": "This line asks for the start.", "disclosure": "start"},
        {"id": "c", "text": "This line asks for none.", "disclosure": "none"},
    ]
    response = client.post(
        "/v1/batches", json={"lines": lines, "defaults": {"disclosure": "end"}}, headers=auth(api_key)
    )
    assert response.status_code == 202, response.get_json()
    with sessions() as session:
        rows = dict(
            session.execute(select(Job.line_id, Job.options).where(Job.batch_id == response.get_json()["id"]))
            .tuples()
            .all()
        )
    assert {line: (options or {}).get("disclosure") for line, options in rows.items()} == {
        "a": "end",
        "b": "start",
        "c": None,
    }
    bad = client.post(
        "/v1/batches",
        json={"lines": [{"text": "Fine."}, {"text": "Not fine.", "disclosure": "later"}]},
        headers=auth(api_key),
    )
    assert bad.status_code == 422
    problems = bad.get_json()["error"]["lines"]
    assert [(p["line"], p["field"]) for p in problems] == [(2, "disclosure")]
    assert "'none', 'start' or 'end'" in problems[0]["message"]
    bad_default = client.post(
        "/v1/batches", json={"lines": [{"text": "Fine."}], "defaults": {"disclosure": "always"}}, headers=auth(api_key)
    )
    assert bad_default.status_code == 422
    assert bad_default.get_json()["error"]["lines"][0]["field"] == "disclosure"


def test_the_tenant_default_is_set_from_the_command_line(
    pg_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    client: FlaskClient,
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_database_url)
    monkeypatch.setenv("VOICEFARM_DATA_DIR", str(tmp_path))
    sessions = make_session_factory(make_engine(pg_database_url))
    key = new_api_key(sessions, "studio")
    status, body = submit(client, key, {"text": "Before the default is set."})
    assert status == 202 and position(sessions, body["id"]) is None  # none until an operator says otherwise
    assert main(["tenants", "set-disclosure", "studio", "start"]) == 0
    assert "studio: jobs that do not say get a spoken notice at the start" in capsys.readouterr().out
    status, body = submit(client, key, {"text": "The tenant's default applies."})
    assert status == 202 and position(sessions, body["id"]) == "start" and body["disclosure"] == "start"
    status, body = submit(client, key, {"text": "The job's own choice wins.", "disclosure": "end"})
    assert status == 202 and position(sessions, body["id"]) == "end"
    status, body = submit(client, key, {"text": "A job may ask for none.", "disclosure": "none"})
    assert status == 202 and position(sessions, body["id"]) is None
    assert main(["tenants", "list"]) == 0
    assert "disclosure=start" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no tenant named 'nobody'"):
        main(["tenants", "set-disclosure", "nobody", "end"])
    with pytest.raises(SystemExit):
        main(["tenants", "set-disclosure", "studio", "middle"])  # argparse: none, start or end
    capsys.readouterr()
    with sessions() as session:
        assert session.scalar(select(Tenant.disclosure).where(Tenant.name == "studio")) == "start"
    assert main(["tenants", "set-disclosure", "studio", "none"]) == 0
    status, body = submit(client, key, {"text": "Back to none."})
    assert status == 202 and position(sessions, body["id"]) is None


def test_the_dedup_key_includes_the_notice(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "The same line, three ways."
    keys = {}
    for asked in ("none", "start", "end"):
        status, body = submit(client, api_key, {"text": text, "seed": 1, "disclosure": asked})
        assert status == 202
        keys[asked] = job_row(sessions, body["id"]).cache_key
    assert len(set(keys.values())) == 3
    status, body = submit(client, api_key, {"text": text, "seed": 1})  # the tenant's default: none
    assert job_row(sessions, body["id"]).cache_key == keys["none"]


def test_the_notice_is_a_cue_of_its_own() -> None:
    result = {
        "duration_s": 5.0,
        "segments": [{"text": "Hello there.", "start_s": 2.7, "end_s": 3.9}],
        "words": [
            {"text": "This", "start_s": 0.05, "end_s": 0.3, "disclosure": True},
            {"text": "Hello", "start_s": 2.7, "end_s": 3.2},
            {"text": "there", "start_s": 3.2, "end_s": 3.9},
        ],
        "disclosure": {"position": "start", "text": "This audio was generated by AI.", "start_s": 0.0, "end_s": 2.2},
    }
    cues = subtitles.for_result("Hello there.", result)
    assert [c.lines for c in cues] == [("This audio was generated by AI.",), ("Hello there.",)]
    assert (cues[0].start_s, cues[0].end_s) == (0.0, 2.2)
    assert cues[1].start_s == 2.7  # timed by the script's words, the notice's left out
    result["disclosure"] = {"position": "end", "text": "本内容由人工智能生成。", "start_s": 4.4, "end_s": 5.0}
    cues = subtitles.for_result("Hello there.", result)
    assert cues[-1].lines == ("本内容由人工智能生成。",) and cues[-1].start_s == 4.4
    # 17 characters, one over a CJK line: the full stop stays on the line it ends.
    result["disclosure"] |= {"text": "この音声はAIで生成されています。"}
    assert subtitles.for_result("Hello there.", result)[-1].lines == ("この音声はAIで生成されています。",)
