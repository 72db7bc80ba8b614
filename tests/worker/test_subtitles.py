"""Subtitles follow the script word for word, in cues of readable length, timed by a forced alignment of the
script onto Whisper's word timestamps (or by the segments when the job has no word timings)."""

from __future__ import annotations

from collections.abc import Iterator

import pysubs2
import pytest
from flask.testing import FlaskClient

from shared.audio import subtitles
from shared.config import Settings
from tests.support.fixtures import auth
from worker.alignment import align, script_words
from worker.context import WorkerContext
from worker.synthesis import run_synthesis

EN = (
    "The farm keeps every job in its database. A worker that dies in the middle of a job loses nothing, because "
    "its lease runs out, the reconciler puts the job back in the queue, and another worker speaks it again. Fine."
)
ZH = "今天天气很好，我们去公园散步吧。明天可能会下雨，所以要带伞，还要早点出门，不然会迟到的。"
JA = "今日はいい天気ですね。公園を散歩しましょう、それから家に帰りましょう。"


@pytest.mark.parametrize("script", [EN, ZH, JA, "Hi.", "One clause only with no end at all"])
def test_cues_are_the_script_in_readable_pieces(script: str) -> None:
    width = subtitles.CJK_LINE if subtitles.is_cjk(script) else subtitles.LATIN_LINE
    cue_spans = subtitles.chunk(script)
    joined = "".join(script[b:e] for b, e, _ in cue_spans)
    assert joined == script  # the spans tile the script: nothing dropped, nothing recognised
    for begin, end, lines in cue_spans:
        assert 1 <= len(lines) <= subtitles.LINES
        assert all(len(line) <= width for line in lines), lines
        sep = "" if subtitles.is_cjk(script) else " "
        assert sep.join(lines) == (script[begin:end].strip() if sep == "" else " ".join(script[begin:end].split()))


def test_a_cue_never_runs_across_a_sentence_end() -> None:
    spans = subtitles.chunk(EN)
    texts = [EN[b:e].strip() for b, e, _ in spans]
    assert texts[0] == "The farm keeps every job in its database."
    assert texts[-1] == "Fine."
    assert all(t.endswith((".", ",")) for t in texts)


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_srt_and_vtt_parse_back_to_the_script(fmt: str) -> None:
    segments = [{"text": EN, "start_s": 0.0, "end_s": 12.0}]
    text = subtitles.render(subtitles.cues(EN, segments), fmt)
    parsed = pysubs2.SSAFile.from_string(text, format_=fmt)
    assert " ".join(e.plaintext.replace("\n", " ") for e in parsed) == EN
    starts = [e.start for e in parsed]
    assert starts == sorted(starts) and parsed[-1].end <= 12000
    assert all(e.end > e.start for e in parsed)


def test_alignment_maps_recognised_words_onto_the_script_and_fills_the_rest() -> None:
    script = "Call me at 42 Baker Street, said Holmes."
    # What Whisper might hear: the number as words, the name misspelt.
    heard = [
        ("Call", 0.0, 0.2), ("me", 0.2, 0.3), ("at", 0.3, 0.4), ("forty", 0.4, 0.7), ("two", 0.7, 0.9),
        ("Baker", 0.9, 1.2), ("Street,", 1.2, 1.6), ("said", 1.8, 2.0), ("Homes.", 2.0, 2.5),
    ]  # fmt: skip
    words = align(script, heard, 3.0)
    assert [w["text"] for w in words] == [t for t, _, _ in script_words(script)]
    by_text = {w["text"]: w for w in words}
    assert by_text["Baker"] == {"text": "Baker", "start_s": 0.9, "end_s": 1.2}
    assert 0.4 <= by_text["42"]["start_s"] < by_text["42"]["end_s"] <= 0.9  # between its neighbours
    assert by_text["Holmes"]["start_s"] >= 2.0  # most of its letters were heard
    assert all(a["end_s"] <= b["start_s"] for a, b in zip(words, words[1:], strict=False))


@pytest.fixture
def ctx(farm_settings: Settings) -> Iterator[WorkerContext]:
    ctx = WorkerContext.build(farm_settings.model_copy(update={"worker_name": "subtitles-test"}))
    yield ctx
    ctx.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("The weather is lovely today. We are going for a long walk in the park, and then home.", "en"),
        ("今天天气很好。我们去公园散步吧，然后回家。", "zh"),
    ],
)
def test_a_job_with_word_timings_serves_subtitles_that_follow_the_script(
    client: FlaskClient, api_key: str, ctx: WorkerContext, text: str, language: str
) -> None:
    response = client.post("/v1/jobs", json={"text": text, "language": language, "words": True}, headers=auth(api_key))
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    early = client.get(f"/v1/jobs/{job_id}/subtitles", headers=auth(api_key))
    assert early.status_code == 409
    assert run_synthesis(ctx, job_id) == "succeeded"
    result = client.get(f"/v1/jobs/{job_id}", headers=auth(api_key)).get_json()["result"]
    words = result["words"]
    assert [w["text"] for w in words] == [t for t, _, _ in script_words(text)]
    assert all(0 <= w["start_s"] <= w["end_s"] <= result["duration_s"] + 0.01 for w in words)
    # Where the second segment starts is known exactly (the join); the aligned first word of the second sentence
    # must land near it.
    if len(result["segments"]) > 1:
        second = result["segments"][1]
        first_word = next(w for w in words if second["text"].startswith(w["text"]))
        assert abs(first_word["start_s"] - second["start_s"]) < 0.3, (first_word, second)
    for fmt in ("srt", "vtt"):
        answer = client.get(f"/v1/jobs/{job_id}/subtitles?format={fmt}", headers=auth(api_key))
        assert answer.status_code == 200 and answer.mimetype in ("application/x-subrip", "text/vtt")
        parsed = pysubs2.SSAFile.from_string(answer.get_data(as_text=True), format_=fmt)
        sep = "" if language == "zh" else " "
        assert sep.join(e.plaintext.replace("\n", sep) for e in parsed) == text
    bad = client.get(f"/v1/jobs/{job_id}/subtitles?format=ass", headers=auth(api_key))
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_subtitle_format"
