"""The QA gate: its checks on real synthesized takes with injected defects, its states in shared/jobs/state.py, the
synthesis -> check -> re-take loop in-process over real services, and a farm whose QA pool re-takes batch lines."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared import qa, tenants
from shared.audio.codecs import encode
from shared.config import Settings, TestingSettings
from shared.db import make_engine, make_session_factory, transaction
from shared.jobs import state as jobs
from shared.models import Job, Tenant, utcnow
from shared.schemas import JobRequest
from worker.qa import checks
from worker.takes import defect_for, retake_spec

RATE = 24_000
LINES = {
    "en": "The weather is lovely today, so we are going to take a long walk in the park.",
    "zh": "今天天气很好，我们一起去公园散步吧。",
    "ja": "駅の近くに新しいパン屋ができたので、明日の朝に行ってみます。",
}
OTHER = {
    "en": "My grandfather used to tell me long stories about the sea and the ships he sailed.",
    "zh": "这家餐厅的菜非常好吃，价格也很便宜。",
    "ja": "今日は雨が降っているので、家で本を読むことにしました。",
}
VOICE = {"en": "jf_alpha", "zh": "jf_alpha", "ja": "jf_alpha"}


# -- fast: settings, the test switch, re-take specs -----------------------------------------------------------
def test_thresholds_layer_defaults_tenant_then_job() -> None:
    limits = qa.thresholds({"max_wer": 0.2, "retakes": 1}, {"max_wer": 0.1})
    assert limits["max_wer"] == 0.1 and limits["retakes"] == 1
    assert limits["max_cer"] == qa.DEFAULTS["max_cer"]
    assert qa.thresholds(None, None) == qa.DEFAULTS


def test_request_field_is_off_for_jobs_and_on_for_batch_lines() -> None:
    plain = JobRequest.model_validate({"text": "Hello there."})
    assert plain.synthesis_fields("kokoro", "jf_alpha", "en")["qa"] is None
    assert plain.synthesis_fields("kokoro", "jf_alpha", "en", qa_default=True)["qa"] == {}
    off = JobRequest.model_validate({"text": "Hello there.", "qa": False})
    assert off.synthesis_fields("kokoro", "jf_alpha", "en", qa_default=True)["qa"] is None
    tuned = JobRequest.model_validate({"text": "Hello there.", "qa": {"max_wer": 0.1, "retakes": 3}})
    assert tuned.synthesis_fields("kokoro", "jf_alpha", "en")["qa"] == {"max_wer": 0.1, "retakes": 3}
    with pytest.raises(ValueError):
        JobRequest.model_validate({"text": "Hello there.", "qa": {"max_werr": 0.1}})


def test_error_rates_compare_what_was_said_not_how_it_is_written() -> None:
    # Whisper writes digits where the engine spoke the normalised words: the same speech, no error.
    assert checks.error_rate("Line fifteen.", "Line 15.", "en") == 0.0
    assert checks.error_rate("Line 15.", "line fifteen", "en") == 0.0
    assert checks.error_rate("我有十五个苹果。", "我有15个苹果", "zh") == 0.0
    assert checks.error_rate("Line fifteen.", "Line 16.", "en") == 0.5  # a wrong number still counts
    assert checks.error_rate("Line fifteen.", "", "en") == 1.0


def test_defect_switch_and_retake_spec() -> None:
    switch = "truncate@1,silence@*~never,gap@2-3"
    assert defect_for(switch, 1, "a line") == "truncate"
    assert defect_for(switch, 2, "a line") == "gap"
    assert defect_for(switch, 4, "a line") is None
    assert defect_for(switch, 5, "this never passes") == "silence"
    assert defect_for("", 1, "x") is None

    from worker.synthesis import JobSpec

    values: dict[str, Any] = {"id": "ab" * 16, "text": "hello", "speed": 1.0, "seed": None}
    spec = JobSpec(**{name: values.get(name) for name in JobSpec.__dataclass_fields__})
    assert retake_spec(spec, 1) is spec
    second, third = retake_spec(spec, 2), retake_spec(spec, 3)
    assert len({spec.seed, second.seed, third.seed}) == 3 and len({spec.speed, second.speed, third.speed}) == 3


# -- slow: the checks on real takes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine() -> Any:
    from worker.engines import create_engine

    engine = create_engine("kokoro")
    engine.load()
    return engine


@pytest.fixture(scope="module")
def transcriber(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from worker.evaluators.asr import Transcriber

    return Transcriber(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def encoder() -> Any:
    from worker.evaluators.similarity import shared_encoder

    return shared_encoder()


@pytest.fixture(scope="module")
def takes(engine: Any) -> dict[tuple[str, str], np.ndarray]:
    """(language, what) -> audio: each line as asked, another line, and the line in another voice."""
    out = {}
    for lang, text in LINES.items():
        out[lang, "good"] = engine.synthesize(text, voice=VOICE[lang], language=lang).audio
        out[lang, "other_text"] = engine.synthesize(OTHER[lang], voice=VOICE[lang], language=lang).audio
        out[lang, "other_voice"] = engine.synthesize(text, voice="jm_kumo", language=lang).audio
    # The reference clip of the voice: the same speaker saying something else.
    out["ref", "jf_alpha"] = engine.synthesize(OTHER["en"], voice="jf_alpha", language="en").audio
    return out


def _evaluate(audio: np.ndarray, lang: str, transcriber: Any, encoder: Any, ref: np.ndarray) -> checks.Report:
    return checks.evaluate(
        audio,
        RATE,
        text=LINES[lang],
        language=lang,
        speed=1.0,
        limits=qa.thresholds(None, None),
        transcriber=transcriber,
        encoder=encoder,
        reference=(ref, RATE),
    )


def _failed(report: checks.Report) -> set[str]:
    return {c.name for c in report.checks if not c.passed}


@pytest.mark.slow
@pytest.mark.parametrize("lang", list(LINES))
def test_gate_passes_good_takes_and_catches_injected_defects(
    lang: str, takes: dict[tuple[str, str], np.ndarray], transcriber: Any, encoder: Any
) -> None:
    ref = takes["ref", "jf_alpha"]
    good = _evaluate(takes[lang, "good"], lang, transcriber, encoder, ref)
    assert good.passed, good.to_dict()
    rate_check = "wer" if lang == "en" else "cer"
    assert good.to_dict()["checks"][rate_check]["value"] <= 0.2

    truncated = _evaluate(checks.inject(takes[lang, "good"], RATE, "truncate"), lang, transcriber, encoder, ref)
    assert {"tail_db", rate_check} <= _failed(truncated), truncated.to_dict()
    silent = _evaluate(checks.inject(takes[lang, "good"], RATE, "silence"), lang, transcriber, encoder, ref)
    assert {"duration_ratio_min", rate_check, "similarity"} <= _failed(silent), silent.to_dict()
    clipped = _evaluate(checks.inject(takes[lang, "good"], RATE, "clip"), lang, transcriber, encoder, ref)
    assert "clipped" in _failed(clipped), clipped.to_dict()
    gap = _evaluate(checks.inject(takes[lang, "good"], RATE, "gap"), lang, transcriber, encoder, ref)
    assert "inner_silence_s" in _failed(gap), gap.to_dict()

    wrong_text = _evaluate(takes[lang, "other_text"], lang, transcriber, encoder, ref)
    assert rate_check in _failed(wrong_text), wrong_text.to_dict()
    wrong_voice = _evaluate(takes[lang, "other_voice"], lang, transcriber, encoder, ref)
    assert _failed(wrong_voice) == {"similarity"}, wrong_voice.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "opus", "aac", "pcm"])
def test_stored_takes_decode_in_every_format(fmt: str, takes: dict[tuple[str, str], np.ndarray]) -> None:
    audio = takes["en", "good"]
    encoded = encode(audio, RATE, fmt)
    decoded, rate = checks.decode(encoded.data, fmt, encoded.sample_rate)
    assert rate == encoded.sample_rate
    assert len(decoded) / rate == pytest.approx(len(audio) / RATE, abs=0.1)
    # Same signal: the speech span agrees to a frame or two whatever the codec.
    assert checks.speech_span_s(decoded, rate) == pytest.approx(checks.speech_span_s(audio, RATE), abs=0.08)


# -- job states: checking, fenced ------------------------------------------------------------------------------
FIELDS: dict[str, Any] = {"engine": "kokoro", "text": "hello", "voice": "jf_alpha", "mode": "clone", "language": "en"}


@pytest.fixture
def db(database_url: str) -> sessionmaker[Session]:
    return make_session_factory(make_engine(database_url))


def _checking_job(db: sessionmaker[Session]) -> tuple[str, jobs.Attempt]:
    with transaction(db) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        job, _ = jobs.create_job(session, tenant_id=tenant.id, idempotency_key=None, qa={}, **FIELDS)
        job_id = job.id
    with transaction(db) as session:
        claimed = jobs.claim(session, job_id, "w1", 60, 3)
        assert claimed is not None
        attempt = claimed[1]
        assert jobs.to_checking(session, attempt, {"key": "k1"}, 60)
    return job_id, attempt


def _status(db: sessionmaker[Session], job_id: str) -> Job:
    with db() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_checking_state_is_fenced_on_the_take(db: sessionmaker[Session]) -> None:
    job_id, attempt = _checking_job(db)
    with transaction(db) as session:
        # The synthesis attempt's own writes are over: the take belongs to the gate now.
        assert not jobs.set_progress(session, attempt, 0.5, 60)
        assert not jobs.complete(session, attempt, {"key": "late"})
        assert not jobs.hold_check(session, job_id, attempt.number + 1, "qa", 60)
        assert jobs.hold_check(session, job_id, attempt.number, "qa", 60)
        assert jobs.retake(session, job_id, attempt.number, "qa", [{"take": 1, "passed": False}])
        # A second check of the same take (the reconciler re-sent it) finds nothing to do.
        assert not jobs.pass_check(session, job_id, attempt.number, "qa", {"key": "k1"}, [])
    job = _status(db, job_id)
    assert (
        job.status == "queued"
        and job.sent_at is None
        and job.result is None
        and job.qa_takes == [{"take": 1, "passed": False}]
    )
    with transaction(db) as session:
        claimed = jobs.claim(session, job_id, "w2", 60, 3)
        assert claimed is not None and claimed[1].number == attempt.number + 1
        assert jobs.to_checking(session, claimed[1], {"key": "k2"}, 60)
        assert not jobs.pass_check(session, job_id, attempt.number, "qa", {"key": "k1"}, [])  # the old take's check
        assert jobs.hold_check(session, job_id, claimed[1].number, "qa", 60)
        assert jobs.pass_check(session, job_id, claimed[1].number, "qa", {"key": "k2", "qa": {"passed": True}}, [])
    job = _status(db, job_id)
    assert job.status == "succeeded" and job.result == {"key": "k2", "qa": {"passed": True}}


def test_a_checking_job_can_be_canceled_and_its_check_then_writes_nothing(db: sessionmaker[Session]) -> None:
    job_id, attempt = _checking_job(db)
    with transaction(db) as session:
        tenant_id = _status(db, job_id).tenant_id
        _job, changed = jobs.cancel(session, tenant_id, job_id)
        assert changed
        assert not jobs.hold_check(session, job_id, attempt.number, "qa", 60)
        assert not jobs.retake(session, job_id, attempt.number, "qa", [])
    assert _status(db, job_id).status == "canceled"


def test_a_held_check_belongs_to_its_qa_worker_until_its_lease_lapses(db: sessionmaker[Session]) -> None:
    job_id, attempt = _checking_job(db)
    n = attempt.number
    with transaction(db) as session:
        assert jobs.hold_check(session, job_id, n, "qa-a", 60)
        assert jobs.hold_check(session, job_id, n, "qa-a", 60)  # renewing its own hold
        # A re-sent check on another QA worker neither takes nor writes the held check.
        assert not jobs.hold_check(session, job_id, n, "qa-b", 60)
        assert not jobs.pass_check(session, job_id, n, "qa-b", {"key": "k1"}, [])
        assert not jobs.retake(session, job_id, n, "qa-b", [])
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    with transaction(db) as session:
        # qa-a went quiet past its lease: qa-b may take the check, and qa-a's late writes are refused.
        assert jobs.hold_check(session, job_id, n, "qa-b", 60)
        assert not jobs.hold_check(session, job_id, n, "qa-a", 60)
        assert not jobs.pass_check(session, job_id, n, "qa-a", {"key": "k1"}, [])
        assert jobs.pass_check(session, job_id, n, "qa-b", {"key": "k1"}, [])
    assert _status(db, job_id).status == "succeeded"


def test_readiness_warns_of_takes_no_qa_worker_has_taken(
    farm_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    from producer.app import create_app

    client = create_app(farm_settings.model_copy(update={"metrics_cache_s": 0})).test_client()  # no kept answer
    job_id, attempt = _checking_job(sessions)
    assert client.get("/readyz").get_json()["warnings"] == []  # just handed to the gate
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(started_at=utcnow() - timedelta(seconds=600)))
    body = client.get("/readyz").get_json()
    assert len(body["warnings"]) == 1 and "voicefarm qa-worker" in body["warnings"][0], body
    assert "qa" not in body["checks"]  # a warning, not a readiness failure
    with transaction(sessions) as session:
        assert jobs.hold_check(session, job_id, attempt.number, "qa", 60)  # a QA worker took it
    assert client.get("/readyz").get_json()["warnings"] == []


def test_lapsed_checks_are_found_once_per_lease(db: sessionmaker[Session]) -> None:
    job_id, attempt = _checking_job(db)

    def lapse(worker: str | None) -> None:
        with transaction(db) as session:
            late = utcnow() - timedelta(seconds=1)
            session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=late, worker=worker))

    with transaction(db) as session:
        assert jobs.lapsed_checks(session, 60) == []
    # Never taken, the QA queue busy: most likely waiting in line there; a re-send would be a duplicate.
    lapse(None)
    with transaction(db) as session:
        assert jobs.lapsed_checks(session, 60, queue_empty=False) == []
    # Never taken and the queue empty: the message was lost.
    with transaction(db) as session:
        assert jobs.lapsed_checks(session, 60, queue_empty=True) == [job_id]
    with transaction(db) as session:
        assert jobs.lapsed_checks(session, 60) == []  # renewed: not re-sent on every pass
    # Taken by a QA worker that then went quiet past its lease: re-sent even while the queue is busy.
    lapse("qa-dead")
    with transaction(db) as session:
        assert jobs.lapsed_checks(session, 60, queue_empty=False) == [job_id]
        assert jobs.hold_check(session, job_id, attempt.number, "qa-new", 60)
    assert _status(db, job_id).status == "checking"


# -- in-process: synthesis worker -> check -> re-take -> check, over real PostgreSQL and S3 ------------------------
@pytest.mark.slow
def test_a_truncated_first_take_is_retaken_and_passes(farm_settings: Settings, sessions: sessionmaker[Session]) -> None:
    from worker.context import WorkerContext
    from worker.qa.app import build_context
    from worker.qa.step import run_check
    from worker.synthesis import run_synthesis

    settings = farm_settings.model_copy(
        update={"worker_name": "qa-test", "testing": TestingSettings(take_defect="truncate@1")}
    )
    ctx = WorkerContext.build(settings)
    sent: list[str] = []
    ctx.send_check = sent.append
    check_ctx = build_context(settings)
    with transaction(sessions) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        fields = JobRequest.model_validate({"text": LINES["en"], "qa": True}).synthesis_fields(
            "kokoro", "jf_alpha", "en"
        )
        job, _ = jobs.create_job(session, tenant_id=tenant.id, idempotency_key=None, **fields)
        job_id = job.id
    assert run_synthesis(ctx, job_id) == "checking" and sent == [job_id]
    first = _row(sessions, job_id)
    assert first.status == "checking" and first.result is not None and first.result["test_defect"] == "truncate"
    assert run_check(check_ctx, job_id) == "retake"
    assert _row(sessions, job_id).status == "queued"
    assert run_synthesis(ctx, job_id) == "checking"
    assert run_check(check_ctx, job_id) == "passed"
    done = _row(sessions, job_id)
    assert done.status == "succeeded" and done.result is not None
    result = done.result
    assert result["qa"]["passed"] and not result["qa"]["needs_review"] and result["qa"]["takes"] == 2
    assert result["qa"]["kept_take"] == 2 and result["qa"]["checks"]["wer"]["pass"]
    assert [t["passed"] for t in done.qa_takes or []] == [False, True]
    assert not (done.qa_takes or [])[0]["checks"]["tail_db"]["pass"]
    # Only the kept take's object is left.
    assert ctx.storage.list_keys(f"jobs/{tenant.id}/{job_id}/") == [result["key"]]


class _SlowTranscriber:
    """The real transcriber, after a pause: a check that outlasts its lease (a long line on a busy QA node)."""

    def __init__(self, inner: checks.Transcribes, pause_s: float) -> None:
        self.inner, self.pause_s = inner, pause_s

    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str | None = None) -> tuple[str, str]:
        time.sleep(self.pause_s)
        return self.inner.transcribe(audio, sample_rate, language)


@pytest.mark.slow
def test_a_check_longer_than_its_lease_keeps_it_and_a_resent_check_does_nothing(
    farm_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    from worker.context import WorkerContext
    from worker.qa.app import build_context
    from worker.qa.step import run_check
    from worker.synthesis import run_synthesis

    lease = 2
    settings = farm_settings.model_copy(update={"worker_name": "qa-lease", "job_lease_s": lease})
    ctx = WorkerContext.build(settings)
    ctx.send_check = lambda job_id: None
    slow = build_context(settings)
    slow.name = "qa-slow"
    slow.transcriber = _SlowTranscriber(slow.transcriber, pause_s=3 * lease)
    other = build_context(settings)
    other.name = "qa-other"
    with transaction(sessions) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        fields = FIELDS | {"text": LINES["en"]}
        job, _ = jobs.create_job(session, tenant_id=tenant.id, idempotency_key=None, qa={}, **fields)
        job_id = job.id
    assert run_synthesis(ctx, job_id) == "checking"
    outcome: list[str] = []
    checking = threading.Thread(target=lambda: outcome.append(run_check(slow, job_id)))
    checking.start()
    resent: list[str] = []
    deadline = time.monotonic() + 2 * lease + 1
    while time.monotonic() < deadline:  # the reconciler's passes, well past the first lease
        with transaction(sessions) as session:
            resent += jobs.lapsed_checks(session, lease)
        time.sleep(0.25)
    # Delivered twice anyway (a broker redelivery): the second QA worker finds the check held.
    assert run_check(other, job_id) == "skipped"
    checking.join(timeout=120)
    assert resent == [] and outcome == ["passed"]
    done = _row(sessions, job_id)
    assert done.status == "succeeded" and done.worker == "qa-slow" and done.result["qa"]["takes"] == 1


@pytest.mark.slow
def test_tenant_thresholds_apply_and_a_line_that_never_passes_needs_review(
    farm_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    from worker.context import WorkerContext
    from worker.qa.app import build_context
    from worker.qa.step import run_check
    from worker.synthesis import run_synthesis

    ctx = WorkerContext.build(farm_settings.model_copy(update={"worker_name": "qa-test-2"}))
    check_ctx = build_context(farm_settings)
    with transaction(sessions) as session:
        tenant = tenants.get_or_create_tenant(session, "strict")
        # No take can be this exact about its duration: every take fails, one re-take is allowed.
        session.execute(
            update(Tenant).where(Tenant.id == tenant.id).values(qa={"min_duration_ratio": 9.0, "retakes": 1})
        )
        job, _ = jobs.create_job(session, tenant_id=tenant.id, idempotency_key=None, qa={}, **FIELDS)
        job_id = job.id
    assert run_synthesis(ctx, job_id) == "checking"
    assert run_check(check_ctx, job_id) == "retake"
    assert run_synthesis(ctx, job_id) == "checking"
    assert run_check(check_ctx, job_id) == "needs_review"
    done = _row(sessions, job_id)
    assert done.status == "succeeded" and done.result is not None
    assert done.result["qa"]["needs_review"] and not done.result["qa"]["passed"] and done.result["qa"]["takes"] == 2
    assert done.result["qa"]["checks"]["duration_ratio_min"]["threshold"] == 9.0
    speeds = [t["speed"] for t in done.result["qa"]["history"]]
    assert len(set(speeds)) == 2  # the re-take was another take, not the same one again


def _row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


# -- a farm: `voicefarm api`, `worker --cpu 1`, `reconcile` and `qa-worker` as processes over real services --------
@pytest.mark.slow
def test_farm_retakes_a_bad_batch_line_and_marks_one_that_never_passes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import requests

    from tests.support.faultfarm import FaultFarm, log

    # Every line's first take is cut short; every take of the line with "never" in it is silent.
    farm = FaultFarm(
        tmp_path_factory.mktemp("qafarm"),
        lease_s=20,
        worker_cpu=1,
        qa_worker=True,
        extra_env={"VOICEFARM_TEST_TAKE_DEFECT": "silence@*~never,truncate@1"},
    )
    try:
        farm.start_all()
        lines = [
            {"id": "good", "text": LINES["en"]},
            {"id": "bad", "text": "This line will never pass the gate, whatever the farm does."},
            {"id": "off", "text": "This one skips the gate.", "qa": False},
        ]
        headers = farm.headers()
        response = requests.post(
            f"{farm.url}/v1/batches", json={"lines": lines, "defaults": {"qa": {"retakes": 1}}}, headers=headers
        )
        assert response.status_code == 202, response.text
        batch_id = response.json()["id"]

        def manifest() -> dict[str, dict[str, Any]]:
            got = requests.get(f"{farm.url}/v1/batches/{batch_id}/manifest", headers=headers, timeout=30)
            assert got.status_code == 200, got.text
            return {row["line_id"]: row for row in got.json()["lines"]}

        farm.wait_until(
            lambda: all(r["status"] in jobs.TERMINAL for r in manifest().values()), 600, "the batch", interval=2
        )
        rows = manifest()
        log(f"manifest: {rows}")
        assert {r["status"] for r in rows.values()} == {"succeeded"}
        assert (rows["good"]["qa"], rows["good"]["qa_takes"]) == ("passed", 2)
        assert (rows["bad"]["qa"], rows["bad"]["qa_takes"]) == ("needs_review", 2)
        assert (rows["off"]["qa"], rows["off"]["qa_takes"]) == (None, None)
        good = requests.get(f"{farm.url}/v1/jobs/{rows['good']['job_id']}", headers=headers, timeout=30).json()
        report = good["result"]["qa"]
        assert report["kept_take"] == 2 and report["checks"]["wer"]["pass"] and report["checks"]["tail_db"]["pass"]
        assert [h["passed"] for h in report["history"]] == [False, True]
        bad = requests.get(f"{farm.url}/v1/jobs/{rows['bad']['job_id']}", headers=headers, timeout=30).json()
        assert bad["result"]["qa"]["needs_review"] and not bad["result"]["qa"]["checks"]["wer"]["pass"]
        # The checks ran in the QA pool, not in the synthesis worker.
        assert "qa check of job" in farm.log_tail("qa-worker", 20000)
        assert "qa check of job" not in farm.log_tail("worker", 200000)
    finally:
        farm.stop_all()


def test_tenant_thresholds_are_set_and_checked_from_the_command_line(tmp_path: Any) -> None:
    import json
    import os
    import subprocess
    import sys

    env = os.environ | {"VOICEFARM_DATA_DIR": str(tmp_path), "DATABASE_URL": ""}
    cli = [sys.executable, "-m", "voicefarm.cli"]
    subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True, timeout=120)
    done = subprocess.run(
        [*cli, "qa-thresholds", "acme", '{"max_wer": 0.2, "retakes": 1}'], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["tenant"] == {"max_wer": 0.2, "retakes": 1} and shown["effective"]["max_cer"] == 0.35
    refused = subprocess.run(
        [*cli, "qa-thresholds", "acme", '{"max_werr": 1}'], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "invalid thresholds" in refused.stderr
    url = f"sqlite:///{tmp_path / 'voicefarm.db'}"
    with make_session_factory(make_engine(url))() as session:
        tenant = session.query(Tenant).filter_by(name="acme").one()
        assert tenant.qa == {"max_wer": 0.2, "retakes": 1}  # the refused call changed nothing
