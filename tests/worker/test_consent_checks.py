"""The clone job's consent checks (worker/cloning.py) with the real Whisper and the real GE2E speaker encoder, on
speech of other synthesizers: espeak-ng (the `espeakng-loader` wheel's library and data), Debian's flite, and the
kokoro engine's stock voices. A same-speaker recording passes; another speaker, or the right speaker reading other
words, is refused with its reason, and the record keeps what was heard and the scores. Expired and reused
statements are refused at the API before any work (tests/api/test_consent.py). Real PostgreSQL, Redis, SeaweedFS."""

from __future__ import annotations

import io
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from benchmarks.make_eval_set import Espeak
from shared.audio.codecs import resample
from shared.audio.reference import Clip, normalise
from shared.config import Settings
from shared.models import Consent, Job
from shared.provenance import consent
from tests.support.fixtures import auth, new_api_key
from tests.support.needs import debian_tool
from worker.cloning import judge_consent, missing_words, run_clone
from worker.context import WorkerContext
from worker.engines import create_engine
from worker.evaluators.asr import Transcriber
from worker.evaluators.similarity import shared_encoder

pytestmark = pytest.mark.slow
REFERENCE = "Every morning I walk to the station, buy a paper, and read the weather report while the train is late."
REFERENCES = {
    "zh": "每天早上我走路去车站，买一份报纸，在火车晚点的时候看天气预报。",
    "ja": "毎朝駅まで歩いて新聞を買い、電車が遅れている間に天気予報を読みます。",
}
Speak = Callable[[str], bytes]


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.asarray(audio, dtype=np.float32), rate, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def speakers() -> dict[str, Speak]:
    """Each speaker as text -> WAV bytes."""
    espeak = Espeak()
    kokoro = create_engine("kokoro")
    kokoro.load()
    rate = kokoro.capabilities.sample_rate

    def espeak_voice(voice: str, pitch: int, wpm: int) -> Speak:
        return lambda text: wav_bytes(espeak.speak(text, voice, pitch, wpm).astype(np.float32) / 32768, espeak.rate)

    def kokoro_voice(voice: str, language: str = "en") -> Speak:
        return lambda text: wav_bytes(kokoro.synthesize(text, voice=voice, language=language).audio, rate)

    return {
        "espeak-m3": espeak_voice("en-us+m3", 40, 165),
        "kokoro-alpha": kokoro_voice("jf_alpha"),
        "kokoro-kumo": kokoro_voice("jm_kumo"),
        "kokoro-kumo-zh": kokoro_voice("jm_kumo", "zh"),
        "kokoro-alpha-ja": kokoro_voice("jf_alpha", "ja"),
    }


@pytest.fixture(scope="module")
def flite() -> dict[str, Speak]:
    """Debian's flite voices slt (16 kHz) and kal (8 kHz, sent resampled to 16 kHz), as text -> WAV bytes."""
    command = debian_tool("flite", "flite")

    def voice(name: str) -> Speak:
        def speak(text: str) -> bytes:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "out.wav"
                subprocess.run([command, "-voice", name, "-t", text, "-o", str(out)], check=True)
                audio, rate = sf.read(out, dtype="float32")
            # kal speaks at 8 kHz: a clip sent to the farm has at least 16 kHz.
            return wav_bytes(resample(audio, rate, 16000), 16000) if rate < 16000 else wav_bytes(audio, rate)

        return speak

    return {"flite-slt": voice("slt"), "flite-kal": voice("kal")}


@pytest.fixture
def ctx(farm_settings: Settings) -> Iterator[WorkerContext]:
    ctx = WorkerContext.build(farm_settings.model_copy(update={"worker_name": "consent-test"}))
    yield ctx
    ctx.stop()


@pytest.fixture(scope="module")
def transcriber(tmp_path_factory: pytest.TempPathFactory) -> Transcriber:
    return Transcriber(tmp_path_factory.mktemp("whisper-cache"))


def clip(data: bytes) -> Clip:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    return normalise(Clip(np.asarray(audio).reshape(-1), int(rate), 1))


def submit(client: FlaskClient, key: str, reference: bytes, recording: bytes, statement_id: str) -> dict:
    form = {
        "audio": (io.BytesIO(reference), "ref.wav"),
        "consent_audio": (io.BytesIO(recording), "consent.wav"),
        "consent_id": statement_id,
        "transcript": REFERENCE,
        "language": "en",
    }
    response = client.post("/v1/voices", data=form, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    return dict(response.get_json())


def statement(client: FlaskClient, key: str, language: str = "en") -> dict:
    return dict(client.get(f"/v1/consent/statement?language={language}", headers=auth(key)).get_json())


def job_error(sessions: sessionmaker[Session], job_id: str) -> str | None:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.error_code


def test_the_speaker_reading_the_statement_clones_and_the_record_shows_the_checks(
    client: FlaskClient, ctx: WorkerContext, sessions: sessionmaker[Session], flite: dict[str, Speak]
) -> None:
    key = new_api_key(sessions, "studio", consent_policy="verified")
    issued = statement(client, key)
    speak = flite["flite-slt"]
    voice = submit(client, key, speak(REFERENCE), speak(issued["text"]), issued["id"])
    outcome = run_clone(ctx, voice["job_id"])
    shown = client.get(f"/v1/voices/{voice['id']}", headers=auth(key)).get_json()
    assert outcome == "succeeded" and shown["status"] == "ready", shown
    record = shown["consent"]
    assert record["method"] == "verified" and record["status"] == "verified" and record["checked_at"]
    scores = record["scores"]
    assert len(scores["words_missed"]) <= consent.MAX_MISSED_WORDS and scores["text_error"] <= scores["max_error"]
    assert scores["similarity"] >= scores["min_similarity"] == ctx.settings.consent_min_similarity
    words = issued["text"].split("My words are ")[1].rstrip(".").replace(" and ", ", ").split(", ")
    heard = [word for word in words if word in record["transcript"].lower()]
    assert len(heard) >= len(words) - consent.MAX_MISSED_WORDS, record["transcript"]


@pytest.mark.parametrize(
    ("reader", "reference_by"),
    [("kokoro-alpha", "espeak-m3"), ("kokoro-kumo", "flite-slt"), ("flite-slt", "kokoro-kumo")],
)
def test_another_speaker_reading_the_statement_is_refused(
    client: FlaskClient,
    ctx: WorkerContext,
    sessions: sessionmaker[Session],
    speakers: dict[str, Speak],
    flite: dict[str, Speak],
    reader: str,
    reference_by: str,
) -> None:
    voices = speakers | flite
    key = new_api_key(sessions, "studio", consent_policy="verified")
    issued = statement(client, key)
    voice = submit(client, key, voices[reference_by](REFERENCE), voices[reader](issued["text"]), issued["id"])
    outcome = run_clone(ctx, voice["job_id"])
    shown = client.get(f"/v1/voices/{voice['id']}", headers=auth(key)).get_json()
    assert outcome == "failed" and job_error(sessions, voice["job_id"]) == "consent_speaker_mismatch", shown
    assert shown["status"] == "failed" and shown["error"]["code"] == "consent_speaker_mismatch"
    assert "speaker is not the reference's" in shown["error"]["message"]
    record = shown["consent"]
    assert record["status"] == "refused" and record["error"] == "consent_speaker_mismatch"
    assert len(record["scores"]["words_missed"]) <= consent.MAX_MISSED_WORDS  # the words passed: the speaker not
    assert record["scores"]["similarity"] < ctx.settings.consent_min_similarity
    assert ctx.storage.list_keys(f"voices/{_tenant_prefix(shown, sessions)}") != []  # kept until deleted


def test_the_right_speaker_reading_other_words_is_refused(
    client: FlaskClient, ctx: WorkerContext, sessions: sessionmaker[Session], speakers: dict[str, Speak]
) -> None:
    key = new_api_key(sessions, "studio", consent_policy="verified")
    issued, older = statement(client, key), statement(client, key)
    speak = speakers["espeak-m3"]
    # A recording of another statement (say, one made for an earlier voice) sent with this one's id.
    voice = submit(client, key, speak(REFERENCE), speak(older["text"]), issued["id"])
    assert run_clone(ctx, voice["job_id"]) == "failed"
    assert job_error(sessions, voice["job_id"]) == "consent_text_mismatch"
    shown = client.get(f"/v1/voices/{voice['id']}", headers=auth(key)).get_json()
    record = shown["consent"]
    assert record["status"] == "refused" and record["error"] == "consent_text_mismatch"
    assert record["scores"]["words_missed"], record
    assert "missing the words" in shown["error"]["message"]
    # And a recording that says something else altogether.
    other = statement(client, key)
    voice = submit(client, key, speak(REFERENCE), speak(REFERENCE), other["id"])
    assert run_clone(ctx, voice["job_id"]) == "failed"
    assert job_error(sessions, voice["job_id"]) == "consent_text_mismatch"
    with sessions() as session:
        row = session.get(Consent, other["id"])
        assert row is not None and row.scores is not None and row.scores["text_error"] > 0.35


@pytest.mark.parametrize(
    ("speaker", "language"),
    [("kokoro-alpha", "en"), ("flite-kal", "en"), ("kokoro-kumo-zh", "zh"), ("kokoro-alpha-ja", "ja")],
)
def test_same_speaker_recordings_pass_in_each_language(
    speakers: dict[str, Speak], flite: dict[str, Speak], transcriber: Transcriber, speaker: str, language: str
) -> None:
    speak = (speakers | flite)[speaker]
    words = consent.choose_words(language)
    verdict = judge_consent(
        clip(speak(consent.statement_text(language, words))),
        clip(speak(REFERENCES.get(language, REFERENCE))),
        statement=consent.statement_text(language, words),
        words=words,
        language=language,
        transcriber=transcriber,
        encoder=shared_encoder(),
        max_error=Settings().consent_max_error,
        min_similarity=Settings().consent_min_similarity,
    )
    assert verdict["error_code"] is None, verdict


def test_words_are_matched_as_spoken() -> None:
    # English: as words, within a close mishearing, or two neighbours run together.
    assert missing_words(["penguin", "zebra"], "My words are Penguins, and zebra.", "en") == []
    assert missing_words(["waterfall", "camera"], "My words are water fall and a camera.", "en") == []
    assert missing_words(["penguin", "zebra"], "My words are pumpkin and banana.", "en") == ["penguin", "zebra"]
    # Mandarin by toneless pinyin: a homophone Whisper writes differently still counts; another word does not.
    assert missing_words(["森林", "老虎"], "我的验证词是森林、老湖。", "zh") == []
    assert missing_words(["森林", "熊猫"], "我的验证词是森林、老虎。", "zh") == ["熊猫"]
    # Japanese by kana reading: katakana or hiragana.
    assert missing_words(["カメラ", "バナナ"], "確認の言葉は、かめら、バナナです。", "ja") == []
    assert missing_words(["カメラ", "ピアノ"], "確認の言葉は、カメラ、バナナです。", "ja") == ["ピアノ"]


def _tenant_prefix(voice: dict, sessions: sessionmaker[Session]) -> str:
    from shared.models import Voice

    with sessions() as session:
        row = session.get(Voice, voice["id"])
        assert row is not None
        return f"{row.tenant_id}/{row.id}/"
