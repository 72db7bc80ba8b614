"""Clone jobs and cloned-voice synthesis, in-process against real PostgreSQL, Redis and SeaweedFS."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile as sf
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.models import Job, Voice
from tests.support.fixtures import auth
from worker.cloning import run_clone
from worker.context import WorkerContext
from worker.engines import create_engine
from worker.synthesis import run_synthesis

pytestmark = pytest.mark.slow
REFERENCE_TEXT = "The weather is lovely today, so we are going for a long walk in the park."


@pytest.fixture(scope="module")
def reference_wav() -> bytes:
    """About five seconds of speech at 24 kHz, stereo, with silence around it (the clone job trims it)."""
    engine = create_engine("kokoro")
    engine.load()
    speech = engine.synthesize(REFERENCE_TEXT, voice="jm_kumo", language="en").audio
    pad = np.zeros(12000, dtype=np.float32)
    mono = np.concatenate([pad, speech, pad]) * 0.5
    buf = io.BytesIO()
    sf.write(buf, np.stack([mono, mono * 0.8], axis=1), 24000, format="WAV")
    return buf.getvalue()


@pytest.fixture
def ctx(farm_settings: Settings) -> Iterator[WorkerContext]:
    ctx = WorkerContext.build(farm_settings.model_copy(update={"worker_name": "clone-test"}))
    yield ctx
    ctx.stop()


def upload(client: FlaskClient, key: str, data: bytes, **form: str) -> tuple[int, dict]:
    response = client.post("/v1/voices", data={"audio": (io.BytesIO(data), "ref.wav"), **form}, headers=auth(key))
    return response.status_code, response.get_json()


def test_clone_then_speak_in_every_mode(
    client: FlaskClient, api_key: str, ctx: WorkerContext, sessions: sessionmaker[Session], reference_wav: bytes
) -> None:
    status, body = upload(client, api_key, reference_wav, name="narrator")
    assert status == 202 and body["status"] == "pending" and body["id"].startswith("v_")
    assert "mixed 2 channels down to mono" in body["warnings"]
    voice_id = body["id"]
    # Not ready yet: jobs naming it are refused instead of failing later.
    early = client.post("/v1/jobs", json={"text": "Hi.", "voice": voice_id}, headers=auth(api_key))
    assert early.status_code == 409 and early.get_json()["error"]["code"] == "voice_not_ready"

    assert run_clone(ctx, body["job_id"]) == "succeeded"
    voice = client.get(f"/v1/voices/{voice_id}", headers=auth(api_key)).get_json()
    assert voice["status"] == "ready" and voice["language"] == "en"
    # No transcript was given: Whisper wrote one.
    assert "walk in the park" in voice["transcript"].lower()
    assert 4.0 < voice["duration_s"] < 8.0
    listing = client.get("/v1/voices", headers=auth(api_key)).get_json()
    assert [v["id"] for v in listing["voices"]] == [voice_id]
    assert {v["id"] for v in listing["stock"]} >= {"jf_alpha", "jm_kumo"}

    reference_key, profile_key = _voice_keys(sessions, voice_id)
    assert reference_key.endswith("/reference.a1.wav") and profile_key.endswith("/profile.a1.kokoro")
    reference = ctx.storage.get(reference_key)
    ref_audio, ref_rate = sf.read(io.BytesIO(reference))
    assert ref_rate == 24000 and ref_audio.ndim == 1

    fetches = []
    original_get = ctx.storage.get
    ctx.storage.get = lambda key: fetches.append(key) or original_get(key)  # type: ignore[method-assign]
    results = {}
    for mode, extra in [("clone", {}), ("cross_lingual", {}), ("instruct", {"instruct": "用四川话说"})]:
        response = client.post(
            "/v1/jobs",
            json={"text": "Thank you for calling.", "voice": voice_id, "mode": mode, **extra},
            headers=auth(api_key),
        )
        assert response.status_code == 202, response.get_json()
        assert run_synthesis(ctx, response.get_json()["id"]) == "succeeded"
        results[mode] = client.get(f"/v1/jobs/{response.get_json()['id']}", headers=auth(api_key)).get_json()
    # The profile was fetched once and reused; the reference itself is never reprocessed by synthesis.
    assert [k for k in fetches if "/voices/" in f"/{k}"] == [profile_key]
    for result in (r["result"] for r in results.values()):
        assert result["duration_s"] > 0.5
        # Measured against the reference: the matched output of a stock voice's own recording scores high.
        assert 0.6 < result["similarity"] <= 1.0
    # kokoro cannot speak dialects: it says so instead of ignoring the instruction.
    assert any("四川" in w or "dialect" in w.lower() for w in results["instruct"]["result"]["warnings"])


def _voice_keys(sessions: sessionmaker[Session], voice_id: str) -> tuple[str, str]:
    """The reference and profile objects the voice row names (one per clone attempt)."""
    with sessions() as session:
        voice = session.get(Voice, voice_id)
        assert voice is not None and voice.reference_key and voice.profile_key
        return voice.reference_key, voice.profile_key


def _tone(seconds: float, rate: int = 24000, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


def _wav(audio: np.ndarray, rate: int = 24000, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_audio"),
        (b"this is not audio at all" * 100, "undecodable_audio"),
        (_wav(_tone(5.0))[:44], "undecodable_audio"),  # a header and no samples
        (_wav(_tone(5.0))[:24000], "audio_too_short"),  # truncated: what is left is too short
        (_wav(_tone(1.0)), "audio_too_short"),
        (_wav(_tone(31.0)), "audio_too_long"),
        (_wav(np.zeros(24000 * 5, dtype=np.float32)), "silent_audio"),
        (_wav(_tone(5.0, 8000), 8000), "sample_rate_too_low"),
        (_wav(np.clip(_tone(5.0, level=3.0), -1, 1)), "clipped_audio"),
    ],
    ids=["empty", "not-audio", "header-only", "truncated", "short", "long", "silent", "8khz", "clipped"],
)
def test_bad_reference_clips_are_refused_and_nothing_is_stored(
    client: FlaskClient, api_key: str, ctx: WorkerContext, sessions: sessionmaker[Session], data: bytes, code: str
) -> None:
    stored = ctx.storage.list_keys("voices/")
    status, body = upload(client, api_key, data)
    assert status == 400 and body["error"]["code"] == code, body
    with sessions() as session:
        assert session.query(Voice).count() == 0 and session.query(Job).count() == 0
    assert ctx.storage.list_keys("voices/") == stored


def test_a_clone_job_of_bad_speech_fails_the_voice(
    client: FlaskClient, api_key: str, ctx: WorkerContext, sessions: sessionmaker[Session]
) -> None:
    # A 4 s clip that is mostly silence passes the upload checks but leaves < 3 s after trimming.
    audio = np.concatenate([np.zeros(24000 * 3, dtype=np.float32), _tone(1.0)])
    status, body = upload(client, api_key, _wav(audio), transcript="hello")
    assert status == 202
    assert run_clone(ctx, body["job_id"]) == "failed"
    voice = client.get(f"/v1/voices/{body['id']}", headers=auth(api_key)).get_json()
    assert voice["status"] == "failed" and voice["error"]["code"] == "audio_too_short"
    job = client.get(f"/v1/jobs/{body['job_id']}", headers=auth(api_key)).get_json()
    assert job["status"] == "failed" and job["error"]["code"] == "audio_too_short"


def test_voices_are_private_and_deletable(
    client: FlaskClient, api_key: str, ctx: WorkerContext, sessions: sessionmaker[Session], reference_wav: bytes
) -> None:
    from tests.support.fixtures import new_api_key

    _status, body = upload(client, api_key, reference_wav, transcript=REFERENCE_TEXT, language="en")
    assert run_clone(ctx, body["job_id"]) == "succeeded"
    other = new_api_key(sessions, "someone-else")
    assert client.get(f"/v1/voices/{body['id']}", headers=auth(other)).status_code == 404
    denied = client.post("/v1/jobs", json={"text": "Hi.", "voice": body["id"]}, headers=auth(other))
    assert denied.status_code == 404 and denied.get_json()["error"]["code"] == "voice_not_found"
    assert client.delete(f"/v1/voices/{body['id']}", headers=auth(other)).status_code == 404
    prefix = _voice_keys(sessions, body["id"])[0].rsplit("/", 1)[0] + "/"
    assert len(ctx.storage.list_keys(prefix)) == 3  # upload, reference, profile
    assert client.delete(f"/v1/voices/{body['id']}", headers=auth(api_key)).status_code == 204
    assert client.get(f"/v1/voices/{body['id']}", headers=auth(api_key)).status_code == 404
    assert ctx.storage.list_keys(prefix) == []
    assert json.loads(client.get("/v1/voices", headers=auth(api_key)).data)["voices"] == []


def test_clone_jobs_show_in_the_job_api_without_audio(
    client: FlaskClient, api_key: str, ctx: WorkerContext, reference_wav: bytes
) -> None:
    _status, body = upload(client, api_key, reference_wav, transcript=REFERENCE_TEXT)
    assert run_clone(ctx, body["job_id"]) == "succeeded"
    job = client.get(f"/v1/jobs/{body['job_id']}", headers=auth(api_key)).get_json()
    assert job["kind"] == "clone" and job["status"] == "succeeded"
    assert job["result"]["voice_id"] == body["id"] and "url" not in job["result"]
    assert not any(k.endswith("key") for k in job["result"])
    listing = client.get("/v1/jobs", headers=auth(api_key))
    assert listing.status_code == 200 and body["job_id"] in {j["id"] for j in listing.get_json()["jobs"]}
    audio = client.get(f"/v1/jobs/{body['job_id']}/audio", headers=auth(api_key))
    assert audio.status_code == 404 and audio.get_json()["error"]["code"] == "no_audio"
    # A transcript without a language: the language comes from the transcript.
    voice = client.get(f"/v1/voices/{body['id']}", headers=auth(api_key)).get_json()
    assert voice["language"] == "en"


def test_a_second_clip_is_what_outputs_are_scored_against(
    client: FlaskClient, api_key: str, ctx: WorkerContext, sessions: sessionmaker[Session], reference_wav: bytes
) -> None:
    from worker.engines.kokoro import matching

    engine = create_engine("kokoro")
    engine.load()
    speech = engine.synthesize(
        "My grandfather used to tell me long stories about the sea and the ships he sailed.",
        voice="jm_kumo",
        language="en",
    )
    second = _wav(speech.audio)
    # A bad second clip is refused like a bad reference: at once, nothing stored or queued.
    stored = ctx.storage.list_keys("voices/")
    response = client.post(
        "/v1/voices",
        data={"audio": (io.BytesIO(reference_wav), "ref.wav"), "second_clip": (io.BytesIO(b"RIFF"), "2.wav")},
        headers=auth(api_key),
    )
    assert response.status_code == 400 and response.get_json()["error"]["message"].startswith("second_clip: ")
    assert ctx.storage.list_keys("voices/") == stored

    response = client.post(
        "/v1/voices",
        data={"audio": (io.BytesIO(reference_wav), "ref.wav"), "second_clip": (io.BytesIO(second), "2.wav")},
        headers=auth(api_key),
    )
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert run_clone(ctx, body["job_id"]) == "succeeded"
    voice = client.get(f"/v1/voices/{body['id']}", headers=auth(api_key)).get_json()
    assert voice["status"] == "ready" and voice["second_clip_s"] == pytest.approx(len(speech.audio) / 24000, abs=0.01)
    _reference_key, profile_key = _voice_keys(sessions, body["id"])
    profile = matching.parse_profile(ctx.storage.get(profile_key))
    assert profile.held_out is not None and profile.held_out_source == "second_clip"

    response = client.post(
        "/v1/jobs", json={"text": "Thank you for calling.", "voice": body["id"]}, headers=auth(api_key)
    )
    assert run_synthesis(ctx, response.get_json()["id"]) == "succeeded"
    result = client.get(f"/v1/jobs/{response.get_json()['id']}", headers=auth(api_key)).get_json()["result"]
    assert result["similarity_basis"] == "second_clip" and 0.0 < result["similarity"] <= 1.0
