"""Word timings from Kokoro's own duration predictor (worker/engines/kokoro/durations.py)."""

from __future__ import annotations

import difflib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pysubs2
import pytest
from flask.testing import FlaskClient

from shared.config import Settings
from tests.support.fixtures import auth
from worker.alignment import joined_words, script_words
from worker.context import WorkerContext
from worker.engines.kokoro.durations import FRAME_SAMPLES, phoneme_owners, reading_groups
from worker.engines.kokoro.engine import KokoroEngine
from worker.engines.kokoro.model import read_model_bytes
from worker.evaluators.asr import Transcriber
from worker.synthesis import run_synthesis

LINES = {
    "en": "The weather is lovely today, so we are going for a long walk in the park.",
    "zh": "今天天气很好，我们去公园散步吧。",
    "ja": "今日はいい天気ですね。公園を散歩しましょう。",
}


@pytest.fixture(scope="module")
def engine() -> KokoroEngine:
    engine = KokoroEngine(threads=2)
    engine.load()
    return engine


def _check_words(words: list[dict[str, float]], text: str, duration_s: float) -> None:
    assert [w["text"] for w in words] == [t for t, _b, _e in script_words(text)]
    assert all(0 <= w["start_s"] <= w["end_s"] <= duration_s + 1e-3 for w in words), words
    assert all(a["end_s"] <= b["start_s"] for a, b in zip(words, words[1:], strict=False)), words
    # Every word was said for some time (no word squeezed to a point).
    assert all(w["end_s"] - w["start_s"] >= 0.02 for w in words), words


def test_the_duration_output_leaves_the_audio_identical(engine: KokoroEngine) -> None:
    import onnxruntime as ort

    model = engine.model
    assert model.durations_output is not None
    plain = ort.InferenceSession(read_model_bytes(), providers=["CPUExecutionProvider"])
    assert [o.name for o in plain.get_outputs()] == ["audio"]
    for language, text in LINES.items():
        tokens, _ = model.tokenize(engine._phonemizer(text, language))
        style = model.voices["jf_alpha"][len(tokens) - 1].reshape(1, 256)
        feed = {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": style,
            "speed": np.array([1.0], dtype=np.float32),
        }
        (reference,) = plain.run(["audio"], feed)
        audio, frames = model.infer_timed(tokens, "jf_alpha", 1.0)
        assert hashlib.sha256(audio.tobytes()).hexdigest() == hashlib.sha256(reference.tobytes()).hexdigest()
        assert frames is not None and frames.shape == (len(tokens) + 2,) and frames.min() >= 1
        # The frames are what the decoder expands: together they are the whole utterance.
        assert int(frames.sum()) * FRAME_SAMPLES == audio.size


@pytest.mark.parametrize("language", ["en", "zh", "ja"])
def test_engine_words_cover_the_script_in_order_within_the_audio(engine: KokoroEngine, language: str) -> None:
    text = LINES[language]
    out = engine.synthesize(text, voice="jf_alpha", language=language)
    assert out.words is not None
    _check_words(out.words, text, len(out.audio) / out.sample_rate)
    # Words are spread over the speech, not bunched at one end.
    assert out.words[0]["start_s"] < 0.3 and out.words[-1]["end_s"] > 0.8 * len(out.audio) / out.sample_rate


def test_a_segment_spoken_in_several_model_runs_is_timed_on_the_joined_audio(
    engine: KokoroEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Phonemes past the model's context are spoken in several runs joined with gaps; a smaller context here makes
    # one segment take four runs, and the times must follow the joined audio.
    monkeypatch.setattr("worker.engines.kokoro.engine.MAX_TOKENS", 60)
    text = "Every job is kept in the database, and a worker that dies loses nothing. Another one takes over the job."
    out = engine.synthesize(text, voice="jf_alpha", language="en")
    assert out.words is not None
    _check_words(out.words, text, len(out.audio) / out.sample_rate)
    assert out.words[-1]["end_s"] > len(out.audio) / out.sample_rate - 0.3


def test_a_sound_a_word_ends_with_goes_to_the_word_after_a_break() -> None:
    # "ne" then a pause, then a reading the per-word phonemes did not predict: it starts the next word.
    owners = phoneme_owners("desɨ ne. koːeɴ", ["de", "sɨ", "ne", "oːeɴ"])
    assert owners == [0, 0, 1, 1, 2, 2, None, 3, 3, 3, 3, 3]
    assert phoneme_owners("abc", ["xyz"]) is None  # nothing matches: no engine words, forced alignment instead


def test_tagger_pieces_group_characters_and_a_rewritten_text_falls_back_to_single_words() -> None:
    assert reading_groups("今日は天気", ["今日", "は", "天気"]) == [[0, 1], [2], [3, 4]]
    assert reading_groups("25個", ["二", "十", "五", "個"]) == [[0], [1]]


def test_joined_words_need_every_segment_and_the_whole_script() -> None:
    first = [{"text": "Hello", "start_s": 0.1, "end_s": 0.4}]
    second = [{"text": "there", "start_s": 0.05, "end_s": 0.3}]
    words = joined_words("Hello. There", [first, [{**second[0], "text": "There"}]], [0.0, 1.0], lambda t: t)
    assert words == [
        {"text": "Hello", "start_s": 0.1, "end_s": 0.4},
        {"text": "There", "start_s": 1.05, "end_s": 1.3},
    ]
    assert joined_words("Hello. There", [first, None], [0.0, 1.0], lambda t: t) is None
    assert joined_words("Hello. 2", [first, second], [0.0, 1.0], lambda t: t) is None  # text was rewritten


@pytest.mark.slow
def test_an_english_word_span_holds_what_asr_hears_there(engine: KokoroEngine) -> None:
    text = "Please read the next line slowly, because it names three cities and a river."
    out = engine.synthesize(text, voice="jf_alpha", language="en")
    assert out.words is not None
    heard = Transcriber(Path(tempfile.mkdtemp(prefix="vf-words-"))).words(out.audio, out.sample_rate, "en")
    ours = [w["text"].lower() for w in out.words]
    theirs = ["".join(ch for ch in word.lower() if ch.isalnum() or ch == "'") for word, _s, _e in heard]
    pairs = [
        (block.a + n, block.b + n)
        for block in difflib.SequenceMatcher(None, ours, theirs, autojunk=False).get_matching_blocks()
        for n in range(block.size)
    ]
    assert len(pairs) >= 0.7 * len(ours), (heard, out.words)  # ASR heard most of the script's words
    for mine, asr in pairs:
        span, (word, start, end) = out.words[mine], heard[asr]
        # Whisper's word times are quantised to 20 ms and drift a little: its middle must fall in our span.
        assert span["start_s"] - 0.15 <= (start + end) / 2 <= span["end_s"] + 0.15, (word, start, end, span)


@pytest.fixture
def ctx(farm_settings: Settings) -> Iterator[WorkerContext]:
    ctx = WorkerContext.build(farm_settings.model_copy(update={"worker_name": "word-timings-test"}))
    yield ctx
    ctx.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("The weather is lovely today. We are going for a long walk in the park, and then home.", "en"),
        ("今日はいい天気ですね。公園を散歩しましょう。", "ja"),
    ],
)
def test_a_job_takes_its_word_times_from_the_engine_and_subtitles_follow_the_script(
    client: FlaskClient, api_key: str, ctx: WorkerContext, text: str, language: str
) -> None:
    body = {"text": text, "language": language, "words": True, "loudness": -16}
    response = client.post("/v1/jobs", json=body, headers=auth(api_key))
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    assert run_synthesis(ctx, job_id) == "succeeded"
    result = client.get(f"/v1/jobs/{job_id}", headers=auth(api_key)).get_json()["result"]
    assert result["words_source"] == "engine"
    _check_words(result["words"], text, result["duration_s"])
    # Each segment's first word starts where the segment does (the join is known to the sample).
    cursor = 0
    for segment in result["segments"]:
        first = result["words"][cursor]
        assert segment["start_s"] - 0.01 <= first["start_s"] <= segment["start_s"] + 0.2, (first, segment)
        cursor += len(script_words(segment["text"]))
    answer = client.get(f"/v1/jobs/{job_id}/subtitles?format=srt", headers=auth(api_key))
    assert answer.status_code == 200
    parsed = pysubs2.SSAFile.from_string(answer.get_data(as_text=True), format_="srt")
    sep = "" if language == "ja" else " "
    assert sep.join(e.plaintext.replace("\n", sep) for e in parsed) == text
