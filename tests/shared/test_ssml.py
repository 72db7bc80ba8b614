"""The SSML reader (shared/text/ssml/): every element of the subset, malformed XML, DTDs and entity bombs, and
what it warns about; the request schema's and the worker plan's use of it; the dedup key's text_format."""

from __future__ import annotations

import numpy as np
import pytest

from shared.config import Settings
from shared.errors import BadRequest
from shared.jobs.dedup import cache_key
from shared.schemas import JobRequest
from shared.text.lexicon import Entry
from shared.text.ssml import (
    BREAK_STRENGTHS,
    MAX_BREAK_S,
    Break,
    Mark,
    Speech,
    SsmlError,
    looks_like_ssml,
    parse_ssml,
    rate_factor,
    xsampa_to_ipa,
)
from worker.ssml_render import Plan, plan_for


def speech(doc: str, language: str | None = "en") -> list[Speech]:
    return [p for p in parse_ssml(doc, language).pieces if isinstance(p, Speech)]


def test_speak_p_s_make_sentences_and_the_plain_text() -> None:
    doc = parse_ssml("<speak><p><s>First one</s><s>Second one!</s></p><p>A new   paragraph</p></speak>")
    assert doc.text == "First one. Second one! A new paragraph."
    assert doc.language == "en" and doc.warnings == [] and doc.marks == []
    assert [p.text for p in doc.pieces if isinstance(p, Speech)] == [doc.text]


def test_cjk_sentences_get_full_width_stops_and_no_spaces() -> None:
    doc = parse_ssml("<speak><s>你好</s>\n  <s>今天天气很好</s></speak>")
    assert doc.language == "zh"
    assert doc.text == "你好。今天天气很好。"


@pytest.mark.parametrize(
    ("attrs", "seconds"),
    [
        ('time="500ms"', 0.5),
        ('time="1.5s"', 1.5),
        ('time="2s" strength="weak"', 2.0),  # time wins
        ('strength="none"', 0.0),
        ('strength="x-weak"', BREAK_STRENGTHS["x-weak"]),
        ('strength="strong"', BREAK_STRENGTHS["strong"]),
        ('strength="x-strong"', BREAK_STRENGTHS["x-strong"]),
        ("", BREAK_STRENGTHS["medium"]),
    ],
)
def test_break_lengths(attrs: str, seconds: float) -> None:
    doc = parse_ssml(f"<speak>Before <break {attrs}/> after.</speak>")
    assert doc.pieces == [Speech("Before", "en"), Break(seconds), Speech("after.", "en")]
    assert doc.text == "Before after."


def test_break_too_long_or_unreadable_is_warned() -> None:
    doc = parse_ssml('<speak>One <break time="30s"/> two <break time="soon"/> three</speak>')
    assert [p.seconds for p in doc.pieces if isinstance(p, Break)] == [MAX_BREAK_S, BREAK_STRENGTHS["medium"]]
    assert len(doc.warnings) == 2 and "cut to 10 s" in doc.warnings[0] and "'soon'" in doc.warnings[1]


@pytest.mark.parametrize(
    ("inner", "said"),
    [
        ('<say-as interpret-as="cardinal">1,234</say-as>', "one thousand two hundred and thirty-four"),
        ('<say-as interpret-as="ordinal">21</say-as>', "twenty-first"),
        ('<say-as interpret-as="characters">abc9</say-as>', "A B C nine"),
        ('<say-as interpret-as="spell-out">NASA</say-as>', "N A S A"),
        ('<say-as interpret-as="date" format="mdy">12/25/2026</say-as>', "December twenty-fifth, twenty twenty-six"),
        ('<say-as interpret-as="date" format="dmy">25.12.2026</say-as>', "December twenty-fifth, twenty twenty-six"),
        ('<say-as interpret-as="date" format="ymd">2026-12-25</say-as>', "December twenty-fifth, twenty twenty-six"),
        ('<say-as interpret-as="date" format="yyyymmdd">20261225</say-as>', "December twenty-fifth, twenty twenty-six"),
        ('<say-as interpret-as="date" format="md">3/4</say-as>', "March fourth"),
        ('<say-as interpret-as="date" format="dm">3/4</say-as>', "April third"),
        ('<say-as interpret-as="date" format="y">1999</say-as>', "nineteen ninety-nine"),
        ('<say-as interpret-as="time">14:30</say-as>', "fourteen thirty"),
        ('<say-as interpret-as="time" format="hms12">2:05 pm</say-as>', "two oh five PM"),
        (
            '<say-as interpret-as="telephone">+1-800-555-0199</say-as>',
            "plus one, eight zero zero, five five five, zero one nine nine",
        ),
        ('<say-as interpret-as="currency">$12.50</say-as>', "twelve dollars fifty cents"),
        ('<say-as interpret-as="currency">EUR 3</say-as>', "three euros"),
    ],
)
def test_say_as_in_english(inner: str, said: str) -> None:
    assert parse_ssml(f"<speak>{inner}</speak>").text == said


def test_say_as_in_chinese_and_japanese() -> None:
    zh = parse_ssml('<speak xml:lang="zh-CN">电话<say-as interpret-as="telephone">138-0013</say-as></speak>')
    assert zh.text == "电话幺三八，零零幺三"
    zh = parse_ssml('<speak xml:lang="zh-CN"><say-as interpret-as="date">2026-05-01</say-as></speak>')
    assert zh.text == "二零二六年五月一日"
    ja = parse_ssml('<speak xml:lang="ja-JP"><say-as interpret-as="ordinal">3</say-as>回目</speak>')
    assert ja.text == "第三回目"
    ja = parse_ssml('<speak xml:lang="ja-JP"><say-as interpret-as="characters">AI</say-as>です</speak>')
    assert ja.text == "エーアイです"


def test_say_as_that_cannot_be_read_is_spoken_as_written_with_a_warning() -> None:
    doc = parse_ssml(
        '<speak><say-as interpret-as="cardinal">many</say-as> and '
        '<say-as interpret-as="address">1 Main St</say-as></speak>'
    )
    assert doc.text == "many and 1 Main St"
    assert any("'cardinal'" in w and "many" in w for w in doc.warnings)
    assert any("'address'" in w and "not supported" in w for w in doc.warnings)


def test_sub_speaks_its_alias() -> None:
    doc = parse_ssml('<speak>The <sub alias="World Wide Web Consortium">W3C</sub> met.</speak>')
    assert doc.text == "The World Wide Web Consortium met."


def test_phoneme_is_a_one_off_lexicon_entry_of_its_piece() -> None:
    doc = parse_ssml(
        '<speak>A <phoneme alphabet="ipa" ph="pɪˈkɑːn">pecan</phoneme> and a '
        '<phoneme alphabet="x-sampa" ph="t@&quot;mA:toU">tomato</phoneme>.</speak>'
    )
    (piece,) = [p for p in doc.pieces if isinstance(p, Speech)]
    assert piece.text == "A pecan and a tomato."
    assert piece.lexicon == (
        Entry("pecan", "en", "pɪˈkɑːn", "ipa", source="job"),
        Entry("tomato", "en", "tə\u02c8mɑːtoʊ", "ipa", source="job"),
    )
    assert doc.warnings == []


def test_phoneme_pinyin_and_kana() -> None:
    (zh,) = speech('<speak><phoneme alphabet="x-amazon-pinyin" ph="zeng1">曾</phoneme>先生好</speak>', None)
    assert zh.language == "zh" and zh.lexicon == (Entry("曾", "zh", "zeng1", "pinyin", source="job"),)
    (ja,) = speech('<speak><phoneme alphabet="x-amazon-yomigana" ph="ひがし">東</phoneme>へ行く</speak>', "ja")
    assert ja.lexicon == (Entry("東", "ja", "ひがし", "kana", source="job"),)


def test_phoneme_that_cannot_apply_is_warned_and_spoken_as_written() -> None:
    doc = parse_ssml(
        '<speak><phoneme alphabet="sapi" ph="x">one</phoneme> <phoneme alphabet="ipa" ph="ʘʘ">two</phoneme></speak>'
    )
    assert doc.text == "one two"
    assert all(not p.lexicon for p in doc.pieces if isinstance(p, Speech))
    assert len(doc.warnings) == 2 and "'sapi'" in doc.warnings[0] and "'two'" in doc.warnings[1]


def test_the_same_term_said_two_ways_makes_two_pieces() -> None:
    doc = parse_ssml(
        '<speak>I <phoneme alphabet="ipa" ph="ɹid">read</phoneme> what I '
        '<phoneme alphabet="ipa" ph="ɹɛd">read</phoneme></speak>'
    )
    pieces = [p for p in doc.pieces if isinstance(p, Speech)]
    assert [p.text for p in pieces] == ["I read what I", "read"]
    assert [p.lexicon[0].pronunciation for p in pieces] == ["ɹid", "ɹɛd"]


def test_xsampa_to_ipa() -> None:
    assert xsampa_to_ipa('"hEloU') == "ˈhɛloʊ"
    assert xsampa_to_ipa("D@ r\\Ed") == "ðə ɹɛd"
    assert xsampa_to_ipa("tS{t") == "tʃæt"
    with pytest.raises(ValueError, match="X-SAMPA"):
        xsampa_to_ipa("a$b")


@pytest.mark.parametrize(
    ("value", "factor"),
    [("x-slow", 0.5), ("slow", 0.75), ("medium", 1.0), ("fast", 1.25), ("x-fast", 1.5), ("80%", 0.8)]
    + [("150%", 1.5), ("+20%", 1.2), ("-10%", 0.9), ("1.5", 1.5), ("+0.5", 1.5), ("bogus", None), ("0%", None)],
)
def test_rate_values(value: str, factor: float | None) -> None:
    assert rate_factor(value) == (pytest.approx(factor) if factor else None)


def test_prosody_sets_rate_and_gain_nested_rates_multiply() -> None:
    pieces = speech(
        '<speak>Normal <prosody rate="slow" volume="loud">slow and loud <prosody rate="50%" volume="-3dB">'
        'slower</prosody></prosody> <prosody volume="silent">hush</prosody> <prosody volume="x-soft">soft</prosody>'
        "</speak>"
    )
    assert [(p.text, p.rate, p.gain_db, p.silent) for p in pieces] == [
        ("Normal", 1.0, 0.0, False),
        ("slow and loud", 0.75, 4.0, False),
        ("slower", 0.375, 1.0, False),
        ("hush", 1.0, 0.0, True),
        ("soft", 1.0, -12.0, False),
    ]


def test_prosody_pitch_emphasis_audio_and_vendor_tags_are_warned_and_spoken() -> None:
    doc = parse_ssml(
        '<speak><prosody pitch="+10%">high</prosody> <emphasis level="strong">big</emphasis> '
        '<audio src="https://example.com/ding.mp3">ding<desc>a bell</desc></audio> '
        '<amazon:effect name="whispered">quiet</amazon:effect> <mstts:express-as style="cheerful">happy'
        "</mstts:express-as></speak>"
    )
    assert doc.text == "high big ding quiet happy"
    joined = " | ".join(doc.warnings)
    for name in ("<prosody pitch>", "<emphasis>", "<audio>", "<amazon:effect>", "<mstts:express-as>"):
        assert name in joined


def test_lang_and_voice_make_pieces_of_a_dialogue() -> None:
    doc = parse_ssml(
        '<speak xml:lang="en-US"><voice name="jf_alpha">Hello, how are you?</voice>'
        '<voice name="jm_kumo">Fine, thanks. <lang xml:lang="ja-JP">ありがとう</lang></voice></speak>',
        None,
        "jf_nezumi",
    )
    pieces = [(p.text, p.language, p.voice) for p in doc.pieces if isinstance(p, Speech)]
    assert pieces == [
        ("Hello, how are you?", "en", "jf_alpha"),
        ("Fine, thanks.", "en", "jm_kumo"),
        ("ありがとう", "ja", "jm_kumo"),
    ]
    assert doc.voices() == ["jf_alpha", "jm_kumo"] and doc.languages() == ["en", "ja"]
    assert doc.sole_voice() is None
    assert parse_ssml('<speak><voice name="jm_kumo">Hi</voice></speak>').sole_voice() == "jm_kumo"


def test_speak_xml_lang_names_the_document_language() -> None:
    doc = parse_ssml('<speak xml:lang="cmn-CN">你好</speak>', None)
    assert doc.language == "zh"
    assert parse_ssml("<speak>こんにちは</speak>", None).language == "ja"


def test_marks_point_at_the_next_spoken_character_or_item() -> None:
    doc = parse_ssml(
        '<speak><mark name="start"/>One two <mark name="mid"/>three. <mark name="before_break"/>'
        '<break time="1s"/><mark name="after_break"/>Four<mark name="end"/></speak>'
    )
    assert doc.pieces == [Speech("One two three.", "en"), Break(1.0), Speech("Four", "en")]
    assert doc.marks == [
        Mark("start", 0, 0),
        Mark("mid", 0, len("One two ")),
        Mark("before_break", 1, 0),
        Mark("after_break", 2, 0),
        Mark("end", 3, 0),
    ]


def test_punctuation_after_a_piece_stays_with_its_words() -> None:
    doc = parse_ssml('<speak>I said <prosody rate="fast">quickly</prosody>, then stopped.</speak>')
    assert [p.text for p in doc.pieces if isinstance(p, Speech)] == ["I said", "quickly,", "then stopped."]
    assert doc.text == "I said quickly, then stopped."


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ("<speak>Hello <break></speak>", "line 1, column 23"),
        ("<speak>\n  Fish &amp; chips &nbsp; here</speak>", "line 2, column 20"),
        ('<speak>\n<prosody rate="slow>x</prosody></speak>', "line 2"),
        ("Just text", "line 1, column 1"),
        ("<speak>open", "line 1, column 12"),
    ],
)
def test_malformed_xml_is_invalid_ssml_with_line_and_column(doc: str, where: str) -> None:
    with pytest.raises(SsmlError) as info:
        parse_ssml(doc)
    assert isinstance(info.value, BadRequest) and info.value.status == 400 and info.value.code == "invalid_ssml"
    assert where in info.value.message
    assert {"line", "column"} <= set(info.value.details)


def test_entity_bomb_and_external_entities_are_refused() -> None:
    bomb = (
        '<?xml version="1.0"?>\n<!DOCTYPE speak [\n<!ENTITY a "aaaaaaaaaa">\n<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">\n'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">\n]>\n<speak>&c;&c;&c;&c;</speak>'
    )
    with pytest.raises(SsmlError, match="DTD"):
        parse_ssml(bomb)
    external = '<!DOCTYPE speak [<!ENTITY x SYSTEM "file:///etc/passwd">]><speak>&x;</speak>'
    with pytest.raises(SsmlError, match="DTD"):
        parse_ssml(external)


def test_root_must_be_speak_and_something_must_be_spoken() -> None:
    with pytest.raises(SsmlError, match="must be <speak>"):
        parse_ssml("<voice>Hi</voice>")
    with pytest.raises(SsmlError, match="no text to speak"):
        parse_ssml('<speak><break time="1s"/><mark name="x"/></speak>')
    deep = "<speak>" + "<s>" * 100 + "x" + "</s>" * 100 + "</speak>"
    with pytest.raises(SsmlError, match="deep"):
        parse_ssml(deep)


def test_looks_like_ssml() -> None:
    assert looks_like_ssml("<speak>hi</speak>")
    assert looks_like_ssml('  <?xml version="1.0"?>\n<speak version="1.1">hi</speak>')
    assert not looks_like_ssml("speak <speak> later") and not looks_like_ssml("<speaker>x</speaker>")


# -- the request, the dedup key, the worker's plan -------------------------------------------------------------
def test_job_request_reads_ssml_and_keeps_plain_text_and_document() -> None:
    doc = '<speak xml:lang="ja-JP"><voice name="jm_kumo">こんにちは<break time="300ms"/>元気ですか</voice></speak>'
    req = JobRequest(text=doc, text_format="ssml")
    assert req.language == "ja" and req.voice == "jm_kumo"
    fields = req.synthesis_fields("kokoro", "jm_kumo", "ja")
    assert fields["text"] == "こんにちは元気ですか"
    assert fields["options"] == {"text_format": "ssml", "ssml": doc}
    plain = JobRequest(text="Hello <break/>").synthesis_fields("kokoro", "jf_alpha", "en")
    assert plain["text"] == "Hello <break/>" and plain["options"] is None
    with pytest.raises(SsmlError, match="line 1"):
        JobRequest(text="<speak>oops</spek>", text_format="ssml")


def test_job_request_names_the_other_voices_and_languages() -> None:
    req = JobRequest(
        text='<speak>Hi <voice name="jm_kumo">there <lang xml:lang="zh-CN">你好</lang></voice></speak>',
        text_format="ssml",
        voice="jf_alpha",
    )
    assert req.ssml_voices() == ["jm_kumo"] and req.ssml_languages() == ["zh"]
    assert JobRequest(text="plain").ssml_voices() == []


def test_dedup_key_tells_ssml_from_plain_text_of_the_same_string() -> None:
    settings = Settings()
    doc = "<speak>Hello there</speak>"
    plain = JobRequest(text=doc).synthesis_fields("kokoro", "jf_alpha", "en")
    marked = JobRequest(text=doc, text_format="ssml").synthesis_fields("kokoro", "jf_alpha", "en")
    assert marked["text"] == "Hello there"
    assert cache_key(settings, plain, None) != cache_key(settings, marked, None)
    # Spoken as plain text, "Hello there" has the key it had before SSML existed: text_format joins only SSML keys.
    spoken = JobRequest(text="Hello there").synthesis_fields("kokoro", "jf_alpha", "en")
    assert cache_key(settings, spoken, None) != cache_key(settings, marked, None)
    assert cache_key(settings, spoken, None) == cache_key(settings, spoken | {"options": None}, None)
    # The format itself is in the key, not only the document beside it.
    unmarked = marked | {"options": {"ssml": doc}}
    assert cache_key(settings, unmarked, None) != cache_key(settings, marked, None)


def test_plan_splits_pieces_and_places_breaks_and_marks() -> None:
    doc = parse_ssml(
        '<speak><break time="200ms"/>One. <mark name="m"/>Two.<break time="1s"/><break strength="weak"/>'
        '<prosody rate="slow">Three</prosody><break time="500ms"/></speak>'
    )
    plan = plan_for(doc, None, 200)
    assert isinstance(plan, Plan)
    assert plan.texts == ["One. Two.", "Three"]
    assert plan.gaps == [0.2, 1.25] and plan.tail == 0.5
    rate = 1000
    audios = [np_ones(1.0, rate), np_ones(0.5, rate)]
    audio, starts = plan.join(audios, rate)
    assert len(audio) == round((0.2 + 1.0 + 1.25 + 0.5 + 0.5) * rate)
    assert starts == [0.2, 2.45]
    times = dict(plan.mark_times(audios, [None, None], starts, rate))
    assert times["m"] == pytest.approx(0.2 + 1.0 * len("One. ") / len("One. Two."))
    # A segment split by length keeps the farm's pause; pieces follow each other with it when no break is between.
    long = parse_ssml("<speak>" + "Words and more words. " * 20 + "<prosody rate='fast'>Fast.</prosody></speak>")
    plan = plan_for(long, None, 200)
    assert len(plan.units) == 4 and plan.gaps == [0.0, 0.25, 0.25, 0.25]
    assert "".join(u.text for u in plan.units).replace(" ", "") == long.text.replace(" ", "")


def test_stream_groups_merge_units_after_short_silences() -> None:
    doc = parse_ssml('<speak>A.<break time="50ms"/>B.<break time="2s"/>C.<break strength="none"/>D.</speak>')
    plan = plan_for(doc, None, 200)
    assert plan.gaps == [0.0, 0.05, 2.0, 0.0]
    assert plan.stream_groups(24000) == [0, 0, 1, 1]


def np_ones(seconds: float, rate: int) -> np.ndarray:
    return np.ones(int(seconds * rate), dtype=np.float32)


class _Engine:
    """A stand-in engine: a tone as long as the text, at the asked speed, so rendering runs without a model."""

    def __init__(self) -> None:
        from shared.engines import catalogue

        self.capabilities = catalogue("kokoro").capabilities
        self.calls: list[tuple[str, str, str, float, list[str]]] = []

    def synthesize(self, text: str, *, voice: str, language: str, speed: float, lexicon: list, **_: object) -> object:
        from worker.engines.base import Synthesis

        self.calls.append((text, voice, language, speed, [e.term for e in lexicon]))
        n = int(0.05 * len(text) / speed * 24000)
        return Synthesis(audio=np.full(n, 0.5, dtype=np.float32), sample_rate=24000)


class _Ctx:
    def __init__(self) -> None:
        self.engine = _Engine()
        self.published: list[tuple[int, int, np.ndarray]] = []

    def segment_done(self, attempt: object, index: int, count: int, audio: np.ndarray) -> None:
        self.published.append((index, count, audio))

    def progress(self, attempt: object, fraction: float) -> None:
        pass


def test_render_speaks_each_piece_as_marked_and_streams_what_it_stores() -> None:
    from shared.audio.streaming import SEGMENT_PAUSE_S
    from worker.ssml_render import render
    from worker.synthesis import JobSpec, _speak_whole

    document = (
        '<speak><break time="300ms"/>Hello there. <prosody rate="x-fast" volume="+30dB">Quick!</prosody>'
        '<break time="100ms"/><voice name="jm_kumo">Hi <phoneme alphabet="ipa" ph="ˈtʃɪkən">pecan</phoneme>.</voice>'
        '<break time="1s"/><lang xml:lang="ja-JP">はい</lang><break time="2s"/></speak>'
    )
    options = {"text_format": "ssml", "ssml": document}
    spec = JobSpec("j1", "t1", "", "jf_alpha", "clone", None, "en", 1.5, "wav", None, None, options)
    ctx = _Ctx()
    plan = plan_for(parse_ssml(document, "en", "jf_alpha"), options, 200)
    take = render(ctx, spec, object(), plan, spec.speed, lambda name: name, _speak_whole)  # type: ignore[arg-type]
    assert [call[:4] for call in ctx.engine.calls] == [
        ("Hello there.", "jf_alpha", "en", 1.5),
        ("Quick!", "jf_alpha", "en", 2.0),  # 1.5 x 1.5 held at 2.0
        ("Hi pecan.", "jm_kumo", "en", 1.5),
        ("はい", "jf_alpha", "ja", 1.5),
    ]
    assert ctx.engine.calls[2][4] == ["pecan"]
    assert any("spoke at 2" in w for w in take.warnings) and any("+12 dB" in w or "clip" in w for w in take.warnings)
    assert float(np.max(np.abs(take.audios[1]))) <= 0.99 + 1e-6
    stored, _starts = plan.join(take.audios, 24000)
    # The stream: its segments with the encoder's pause between them are the stored audio, sample for sample.
    assert [(index, count) for index, count, _a in ctx.published] == [(0, 3), (1, 3), (2, 3)]
    pause = np.zeros(int(round(SEGMENT_PAUSE_S * 24000)), dtype=np.float32)
    parts = [a for _i, _c, audio in ctx.published for a in (pause, audio)][1:]
    assert np.array_equal(np.concatenate(parts), stored)
