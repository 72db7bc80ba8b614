"""The streaming split (shared/text/split.py, `growing`): a streamed job's first segment is its first sentence or
that sentence's leading clauses, each next one at most twice the one before (at least the first cap, at most the
engine's), no text lost or changed but whitespace; every other job keeps the packing it had; the dedup key tells
the two apart."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.config import Settings
from shared.jobs import dedup
from shared.text.split import (
    GROWING,
    SPLIT_OPTION,
    STREAM_FIRST_CHARS,
    STREAM_GROWTH,
    is_growing,
    normalize_text,
    split_text,
)
from shared.text.ssml import parse_ssml
from worker.ssml_render import plan_for

FIVE_SENTENCES = (
    "The first train leaves the station at seven in the morning. "
    "It crosses the river and climbs slowly into the hills. "
    "By nine o'clock the valley is far behind. "
    "Passengers open their windows to smell the pine trees. "
    "At noon the train reaches the little town by the lake."
)
# Clause and sentence marks, as split.py reads them.
_BOUNDARY = re.compile(r"[，、；：,;:。！？!?…]\s?\S|[.;；]\s\S|\n")


def squeezed(text: str) -> str:
    return "".join(text.split())


def test_five_sentences_start_with_the_first_and_grow() -> None:
    segments = split_text(FIVE_SENTENCES, 200, growing=True)
    assert segments == [
        "The first train leaves the station at seven in the morning.",
        "It crosses the river and climbs slowly into the hills. By nine o'clock the valley is far behind.",
        "Passengers open their windows to smell the pine trees. At noon the train reaches the little town by the lake.",
    ]
    # Stored-only jobs keep today's packing: two segments up to the cap.
    assert split_text(FIVE_SENTENCES, 200) == [
        "The first train leaves the station at seven in the morning. It crosses the river and climbs slowly into "
        "the hills. By nine o'clock the valley is far behind.",
        "Passengers open their windows to smell the pine trees. At noon the train reaches the little town by the lake.",
    ]


def test_a_short_first_sentence_is_alone_and_the_next_cap_has_a_floor() -> None:
    assert split_text("Hi. Yes. No. Fine then. What now? Fine.", 200, growing=True) == [
        "Hi.",
        "Yes. No. Fine then. What now? Fine.",
    ]
    assert split_text("こんにちは。今日はいい天気ですね。散歩に行きましょう。", 200, growing=True) == [
        "こんにちは。",
        "今日はいい天気ですね。散歩に行きましょう。",
    ]


def test_a_long_first_sentence_gives_its_leading_clauses() -> None:
    sentence = (
        "When the sun finally rises over the hills behind the old farm, the animals wake up one by one, and the "
        "farmer, who has been awake for hours already, starts the long day of work."
    )
    segments = split_text(sentence + " " + sentence, 200, growing=True)
    assert segments[0] == "When the sun finally rises over the hills behind the old farm,"
    assert segments[1].startswith("the animals wake up") and segments[1].endswith("day of work.")
    assert segments[2] == sentence
    assert squeezed("".join(segments)) == squeezed(sentence * 2)


def test_a_first_clause_without_marks_is_cut_at_a_space_and_never_mid_word_twice() -> None:
    words = " ".join(["word"] * 100)
    segments = split_text(words, 200, growing=True)
    assert [len(s) for s in segments] == [79, 154, 199, 64]
    assert " ".join(segments) == words
    # No spaces at all: cut mid-word at each cap, and the pieces are never joined with a space again.
    segments = split_text("x" * 500, 200, growing=True)
    assert [len(s) for s in segments] == [80, 160, 200, 60] and "".join(segments) == "x" * 500


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.sampled_from(list("abc defg hij,;:.!?。、，\n")), min_size=1, max_size=120),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from([20, 60, 200]),
)
def test_growing_segments_keep_the_text_within_their_caps(parts: list[str], max_chars: int) -> None:
    text = " ".join(parts)
    segments = split_text(text, max_chars, growing=True)
    assert squeezed("".join(segments)) == squeezed(normalize_text(text))
    assert all(segment and segment == segment.strip() for segment in segments)
    floor = min(STREAM_FIRST_CHARS, max_chars)
    for i, segment in enumerate(segments):
        assert len(segment) <= max_chars
        cap = floor if i == 0 else min(max_chars, max(floor, STREAM_GROWTH * len(segments[i - 1])))
        if len(segment) > cap:  # only a single clause longer than its cap is spoken whole
            assert i > 0 and not _BOUNDARY.search(segment[:-1]), (segment, cap)


def test_is_growing_reads_the_job_option() -> None:
    assert is_growing({SPLIT_OPTION: GROWING, "lexicon": []})
    assert not is_growing(None) and not is_growing({}) and not is_growing({SPLIT_OPTION: "packed"})


def test_an_ssml_plan_grows_across_pieces_only_when_streamed() -> None:
    document = (
        "<speak>The first train leaves the station at seven in the morning. It crosses the river and climbs "
        "slowly into the hills. <prosody rate='slow'>By nine o'clock the valley is far behind. Passengers open "
        "their windows to smell the pine trees.</prosody></speak>"
    )
    doc = parse_ssml(document)
    plain = plan_for(doc, None, 200)
    assert len(plain.units) == 2
    streamed = plan_for(doc, {SPLIT_OPTION: GROWING}, 200)
    assert [u.text for u in streamed.units] == [
        "The first train leaves the station at seven in the morning.",
        "It crosses the river and climbs slowly into the hills.",
        "By nine o'clock the valley is far behind. Passengers open their windows to smell the pine trees.",
    ]
    assert streamed.gaps == [0.0, 0.25, 0.25] and streamed.stream_groups(24000) == [0, 1, 2]


@pytest.mark.parametrize("text_format", [None, "ssml"])
def test_the_streaming_split_is_part_of_the_dedup_key(text_format: str | None) -> None:
    options = {"text_format": text_format} if text_format else {}
    fields = {
        "engine": "kokoro", "text": "One. Two.", "voice": "jf_alpha", "mode": "clone", "instruct": None,
        "language": "en", "speed": 1.0, "seed": None, "format": "wav", "sample_rate": None,
        "options": options or None, "qa": None,
    }  # fmt: skip
    settings_ = Settings()
    stored = dedup.cache_key(settings_, fields, None)
    streamed = dedup.cache_key(settings_, fields | {"options": options | {SPLIT_OPTION: GROWING}}, None)
    assert stored != streamed
    assert streamed == dedup.cache_key(settings_, fields | {"options": options | {SPLIT_OPTION: GROWING}}, None)
