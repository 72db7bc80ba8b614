"""SSML jobs spoken end to end in-process (worker/ssml_render.py): real kokoro, real database and S3, Whisper to
hear the result. The documents are written in the styles of the three services' SSML (Azure wraps the text in
<voice> with the W3C namespace, Polly uses bare <speak> with say-as and sub, Google likes p/s and prosody), and
the audio is checked for what the markup asks: break lengths as silence runs, aliases and phonemes as heard
words, rates as duration ratios, marks' times against the engine's word times, two voices in one job."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy.orm import Session, sessionmaker

from shared import tenants
from shared.audio import subtitles
from shared.config import Settings
from shared.db import transaction
from shared.jobs import state as jobs
from shared.models import Job
from shared.schemas import JobRequest
from tests.support.asr import error_rate, transcribe
from worker.context import WorkerContext
from worker.synthesis import run_synthesis

pytestmark = pytest.mark.slow

FRAME_S = 0.01
SILENT_DB = -50.0  # a 10 ms frame quieter than this is silence (kokoro trims its output at about -46 dBFS)
# A break's silence run is the break plus what the engine leaves quiet at each side (its 50 ms trim pads, soft
# consonants): at least the break, at most this much more.
BREAK_SLACK_S = 0.3


@pytest.fixture
def ctx(farm_settings: Settings) -> WorkerContext:
    return WorkerContext.build(farm_settings.model_copy(update={"worker_name": "test-worker"}))


def speak(
    ctx: WorkerContext, sessions: sessionmaker[Session], document: str, **request: Any
) -> tuple[Job, dict[str, Any], np.ndarray, int]:
    """Submit `document` as the API does (JobRequest), run the job, and return it with its decoded audio."""
    req = JobRequest(text=document, text_format="ssml", **request)
    language = req.language or "en"
    voice = req.voice or "jf_alpha"
    fields = req.synthesis_fields("kokoro", voice, language)
    with transaction(sessions) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        job, _ = jobs.create_job(session, tenant_id=tenant.id, idempotency_key=None, **fields)
        job_id = job.id
    assert run_synthesis(ctx, job_id) == "succeeded"
    with sessions() as session:
        done = session.get(Job, job_id)
        assert done is not None and done.result is not None
    audio, rate = sf.read(io.BytesIO(ctx.storage.get(done.result["key"])), dtype="float32")
    return done, done.result, audio, rate


def silences(audio: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """(start, length) of each run of silent frames between sounds, in seconds."""
    n = int(FRAME_S * rate)
    frames = audio[: len(audio) // n * n].reshape(-1, n)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    quiet = db < SILENT_DB
    runs, start = [], None
    for i, q in enumerate(quiet):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if start > 0:  # not the leading silence
                runs.append((start * FRAME_S, (i - start) * FRAME_S))
            start = None
    return runs


def rms_db(audio: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(audio**2) + 1e-12))


def segment_audio(result: dict[str, Any], audio: np.ndarray, rate: int, i: int) -> np.ndarray:
    seg = result["segments"][i]
    return audio[int(seg["start_s"] * rate) : int(seg["end_s"] * rate)]


# -- breaks ------------------------------------------------------------------------------------------------------
AZURE_BREAKS = (
    '<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" '
    'xmlns:mstts="https://www.w3.org/2001/mstts" xml:lang="en-US">'
    '<voice name="jf_alpha">Welcome aboard the harbour ferry.<break time="1500ms"/>'
    'Please keep your tickets ready.<break time="600ms"/>We leave in five minutes.</voice></speak>'
)
POLLY_BREAKS = (
    "<speak>The museum opens early."
    '<break strength="x-strong"/>Guided walks start on the hour.<break time="2s"/>Enjoy your visit.</speak>'
)
GOOGLE_BREAKS = (
    "<speak><p><s>First the flour.</s></p>"
    '<break time="0.8s"/><p><s>Then the water.</s></p><break strength="weak"/><p><s>Stir well.</s></p></speak>'
)


@pytest.mark.parametrize(
    ("document", "breaks"),
    [(AZURE_BREAKS, [1.5, 0.6]), (POLLY_BREAKS, [1.2, 2.0]), (GOOGLE_BREAKS, [0.8, 0.25])],
    ids=["azure", "polly", "google"],
)
def test_breaks_are_silences_of_their_length(
    farm_settings: Settings, sessions: sessionmaker[Session], document: str, breaks: list[float]
) -> None:
    # Measured without the watermark: inaudible, it is still not digital silence, and near speech it lifts the
    # frames at a break's edges over this test's -50 dB silence threshold (a short break then measures short).
    unmarked = farm_settings.model_copy(update={"worker_name": "test-worker", "watermark": False})
    job, result, audio, rate = speak(WorkerContext.build(unmarked), sessions, document)
    runs = silences(audio, rate)
    for want in breaks:
        found = [length for _start, length in runs if want - 0.02 <= length <= want + BREAK_SLACK_S]
        assert found, f"no silence of {want} s in {runs}"
    # The longest silences are the breaks: the words themselves have no gap that long.
    longest = sorted((length for _s, length in runs), reverse=True)[: len(breaks)]
    assert min(longest) >= min(breaks) - 0.02
    assert len(result["segments"]) == 3 and job.text == " ".join(s["text"] for s in result["segments"])
    assert error_rate(job.text, transcribe(audio, rate, "en"), "en") <= 0.15


# -- say-as and sub: heard by Whisper ------------------------------------------------------------------------------
def test_aliases_and_say_as_are_heard(ctx: WorkerContext, sessions: sessionmaker[Session]) -> None:
    document = (
        '<speak>Add the <sub alias="magnesium">Mg</sub> tablets to the <sub alias="World Health Organization">WHO'
        '</sub> order. The locker code is <say-as interpret-as="characters">K9</say-as>, '
        'and the meeting is on <say-as interpret-as="date" format="dmy">03/11/2026</say-as>.</speak>'
    )
    job, result, audio, rate = speak(ctx, sessions, document)
    assert job.text == (
        "Add the magnesium tablets to the World Health Organization order. The locker code is K nine, "
        "and the meeting is on November third, twenty twenty-six."
    )
    heard = transcribe(audio, rate, "en").lower()
    assert "magnesium" in heard and "world health organization" in heard and "november" in heard, heard
    assert "mg" not in heard.split() and "who" not in heard.split(), heard


# -- phoneme: the pronunciation is what Whisper hears -------------------------------------------------------------
def test_phonemes_change_what_is_heard(ctx: WorkerContext, sessions: sessionmaker[Session]) -> None:
    document = (
        '<speak>I would like the <phoneme alphabet="ipa" ph="ˈtʃɪkən">pecan</phoneme> pie, and a slice of '
        '<phoneme alphabet="x-sampa" ph="&quot;t_hVrkI">lemon</phoneme> cake.</speak>'
    )
    job, result, audio, rate = speak(ctx, sessions, document)
    assert job.text == "I would like the pecan pie, and a slice of lemon cake."
    heard = transcribe(audio, rate, "en").lower()
    assert "chicken" in heard and "turkey" in heard, heard
    assert "pecan" not in heard and "lemon" not in heard, heard
    assert not result["warnings"], result["warnings"]


# -- prosody ---------------------------------------------------------------------------------------------------------
def test_rates_and_volumes_are_measured(ctx: WorkerContext, sessions: sessionmaker[Session]) -> None:
    sentence = "Every morning the baker opens the shop at seven."
    document = (
        f"<speak><p>{sentence}</p>"
        f'<break time="500ms"/><p><prosody rate="x-slow">{sentence}</prosody></p>'
        f'<break time="500ms"/><p><prosody rate="150%">{sentence}</prosody></p>'
        f'<break time="500ms"/><p><prosody volume="x-soft">{sentence}</prosody></p>'
        f'<break time="500ms"/><p><prosody rate="4.0" pitch="+20%">{sentence}</prosody></p></speak>'
    )
    job, result, audio, rate = speak(ctx, sessions, document)
    durations = [s["end_s"] - s["start_s"] for s in result["segments"]]
    assert len(durations) == 5
    normal, slow, fast, soft, clamped = durations
    assert slow / normal == pytest.approx(2.0, rel=0.15)
    assert fast / normal == pytest.approx(1 / 1.5, rel=0.15)
    assert clamped / normal == pytest.approx(1 / 2.0, rel=0.15)  # 4x is held at kokoro's 2.0
    assert soft / normal == pytest.approx(1.0, rel=0.05)
    gain = rms_db(segment_audio(result, audio, rate, 3)) - rms_db(segment_audio(result, audio, rate, 0))
    assert gain == pytest.approx(-12.0, abs=1.0)
    warnings = " | ".join(result["warnings"])
    assert "<prosody pitch>" in warnings and "spoke at 2" in warnings
    # Whisper (tiny.en) hears the sentence at the asked, the slow and the soft take; kokoro at 1.5x and more is
    # too quick for it, so those two are checked by their lengths alone.
    for i in (0, 1, 3):
        heard = transcribe(segment_audio(result, audio, rate, i), rate, "en")
        assert error_rate(sentence, heard.replace("7", "seven"), "en") <= 0.15, (i, heard)


# -- marks -----------------------------------------------------------------------------------------------------------
def test_marks_are_on_the_output_timeline(ctx: WorkerContext, sessions: sessionmaker[Session]) -> None:
    document = (
        '<speak><mark name="intro"/>Chapter one. The quick brown <mark name="fox"/>fox jumps over the lazy dog.'
        '<mark name="pause"/><break time="1s"/><mark name="chapter_two"/>Chapter two begins here.'
        '<mark name="end"/></speak>'
    )
    job, result, audio, rate = speak(ctx, sessions, document, words=True)
    marks = {m["name"]: m["time_s"] for m in result["marks"]}
    assert list(marks) == ["intro", "fox", "pause", "chapter_two", "end"]
    first, second = result["segments"]
    assert marks["intro"] == pytest.approx(first["start_s"], abs=0.01)
    assert marks["pause"] == pytest.approx(first["end_s"], abs=0.01)
    assert marks["chapter_two"] == pytest.approx(second["start_s"], abs=0.01)
    assert marks["chapter_two"] - marks["pause"] == pytest.approx(1.0, abs=0.01)
    assert marks["end"] == pytest.approx(result["duration_s"], abs=0.01)
    # Inside a segment a mark takes the start of the word it stands before (the engine's word times).
    fox = next(w for w in result["words"] if w["text"] == "fox")
    assert marks["fox"] == pytest.approx(fox["start_s"], abs=0.02)
    # ... and the audio splits there: Whisper hears "... quick brown" before it and "... jumps ..." after it (the
    # engine's word start can fall a few tens of ms into a soft onset like f: "brown(s)" / "(f)ox").
    before = transcribe(audio[: int(marks["fox"] * rate)], rate, "en").lower().rstrip(".")
    after = transcribe(audio[int(marks["fox"] * rate) : int(marks["pause"] * rate)], rate, "en").lower()
    assert re.search(r"quick brown\w*$", before) and "brown" not in after, (before, after)
    assert re.match(r"\w?ox jumps over the lazy dog", after), after
    # Subtitles and word timings follow the spoken text, not the markup.
    assert result["words_source"] == "engine"
    cues = subtitles.for_result(job.text, result)
    assert subtitles.script_of(cues) == job.text


def test_marks_follow_trimming(ctx: WorkerContext, sessions: sessionmaker[Session]) -> None:
    document = '<speak><break time="2s"/><mark name="go"/>Ready, steady, go.</speak>'
    _job, result, _audio, _rate = speak(ctx, sessions, document, trim_silence_s=0.1)
    (mark,) = result["marks"]
    assert mark["time_s"] == pytest.approx(result["segments"][0]["start_s"], abs=0.01)
    assert mark["time_s"] < 0.3  # the leading 2 s break was trimmed away, and the mark moved with it


# -- voices and languages ----------------------------------------------------------------------------------------
def median_f0(audio: np.ndarray, rate: int) -> float:
    import pyworld

    f0, _t = pyworld.dio(audio.astype(np.float64), rate)
    voiced = f0[f0 > 0]
    return float(np.median(voiced))


def test_a_two_voice_dialogue(ctx: WorkerContext, sessions: sessionmaker[Session]) -> None:
    document = (
        '<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="en-US">'
        '<voice name="jf_alpha">Did you remember to water the tomatoes?</voice>'
        '<voice name="jm_kumo">I did, twice, because it was so hot today.</voice>'
        '<voice name="jf_alpha">Thank you, they look much happier now.</voice></speak>'
    )
    job, result, audio, rate = speak(ctx, sessions, document)
    assert len(result["segments"]) == 3
    pitches = [median_f0(segment_audio(result, audio, rate, i), rate) for i in range(3)]
    # jf_alpha is a woman's voice, jm_kumo a man's: the middle line is clearly lower.
    assert pitches[1] < 0.75 * min(pitches[0], pitches[2]), pitches
    heard = transcribe(audio, rate, "en")
    assert error_rate(job.text, heard, "en") <= 0.15, heard


def test_lang_switches_the_piece_language(ctx: WorkerContext, sessions: sessionmaker[Session]) -> None:
    document = (
        '<speak xml:lang="ja-JP"><s>東京駅に着きました。</s>'
        '<s><lang xml:lang="en-US">Welcome to Tokyo.</lang></s></speak>'
    )
    job, result, audio, rate = speak(ctx, sessions, document, voice="jf_alpha")
    assert job.language == "ja" and job.text == "東京駅に着きました。 Welcome to Tokyo."
    english = segment_audio(result, audio, rate, 1)
    heard = transcribe(english, rate, "en").lower()
    assert "welcome" in heard and "tokyo" in heard, heard
    japanese = transcribe(segment_audio(result, audio, rate, 0), rate, "ja")
    assert error_rate("東京駅に着きました", japanese, "ja") <= 0.3, japanese
