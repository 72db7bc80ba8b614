"""The kokoro engine: capabilities, instructions, voices, and real synthesis checked by ASR (slow tests)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.support.asr import error_rate, transcribe
from worker.engines import create_engine
from worker.engines.base import Engine, VoiceProfile
from worker.engines.kokoro import KokoroEngine
from worker.engines.kokoro.engine import _split_phonemes
from worker.engines.kokoro.instruct import parse_instruction
from worker.engines.kokoro.matching import profile_base_voice

SENTENCES = {
    "en": "The weather is lovely today, so we are going to take a long walk in the park.",
    "zh": "今天天气很好，我们一起去公园散步吧。",
    "ja": "今日はとてもいい天気なので、公園を散歩しましょう。",
}
# Plausible speaking rates in characters per second (letters and spaces for English).
CHARS_PER_SECOND = {"en": (8.0, 25.0), "zh": (2.5, 9.0), "ja": (4.0, 14.0)}
# Error-rate ceilings for the ASR round trip. Measured on this sentence set with the default voices
# (jf_alpha): en WER 0.00 (Whisper tiny.en), zh CER 0.00-0.13, ja CER 0.00 (Whisper base); over 4 other
# sentences x 5 voices the worst single sentence was en 0.10, zh 0.13, ja 0.08. A broken G2P or voice pack
# (wrong phoneme ids, wrong style vector) gives 0.6-1.0, so 0.25 keeps a wide margin on both sides.
MAX_ERROR = {"en": 0.25, "zh": 0.25, "ja": 0.25}


# -- fast: no model needed -------------------------------------------------------------------------------------
def test_capabilities_describe_the_engine() -> None:
    caps = KokoroEngine.capabilities
    assert caps.name == "kokoro"
    assert set(caps.languages) == {"zh", "en", "ja"}
    assert set(caps.modes) == {"clone", "cross_lingual", "instruct"}
    assert caps.sample_rate == 24_000
    assert 50 <= caps.max_segment_chars <= 510
    assert len(caps.stock_voices) == 5
    assert set(caps.default_voices) == set(caps.languages)
    assert set(caps.default_voices.values()) <= set(caps.stock_voices)
    assert {"slow", "fast", "慢", "快"} <= set(caps.instructions)


def test_registry_builds_a_protocol_conforming_engine() -> None:
    engine = create_engine("kokoro")
    assert isinstance(engine, KokoroEngine)
    assert isinstance(engine, Engine)


@pytest.mark.parametrize(
    ("instruct", "factor", "warns"),
    [
        ("speak slowly", 0.8, False),
        ("Please speak a bit faster.", 1.25, False),
        ("请快一点说", 1.25, False),
        ("You are a helpful assistant. 请用尽可能慢地语速说一句话。<|endofprompt|>", 0.67, False),
        ("ゆっくり話してください", 0.8, False),
        ("用四川话说这句话", 1.0, True),
        ("快乐地说", 1.0, True),  # "happy", not "fast"
        ("関西弁で話して", 1.0, True),
        ("say it sadly", 1.0, True),
        ("speak slowly and angrily", 0.8, True),
        ("speak slower and faster", 1.0, True),
    ],
)
def test_instruction_parsing(instruct: str, factor: float, warns: bool) -> None:
    parsed = parse_instruction(instruct)
    assert parsed.speed_factor == pytest.approx(factor)
    assert bool(parsed.warnings) is warns


def test_bad_voices_and_arguments_raise_value_error_before_loading() -> None:
    engine = KokoroEngine()
    with pytest.raises(ValueError, match="unknown kokoro voice"):
        engine.synthesize("hello", voice="af_heart", language="en")
    with pytest.raises(ValueError, match="engine"):
        engine.synthesize("hello", voice=VoiceProfile(engine="cosyvoice", data=b"{}"), language="en")
    with pytest.raises(ValueError, match="not a kokoro profile"):
        engine.synthesize("hello", voice=VoiceProfile(engine="kokoro", data=b"\x00garbage"), language="en")
    with pytest.raises(ValueError, match="language"):
        engine.synthesize("bonjour", voice="jf_alpha", language="fr")
    with pytest.raises(ValueError, match="at most"):
        engine.synthesize("a" * 1000, voice="jf_alpha", language="en")
    with pytest.raises(ValueError, match="speed"):
        engine.synthesize("hello", voice="jf_alpha", language="en", speed=0)
    assert engine._model is None  # validation never paid for loading the model


def test_long_phoneme_strings_are_packed_under_the_model_limit() -> None:
    vocab = {char: 1 for char in "abc ,."}
    phonemes = ", ".join(["abc abc abc"] * 80) + "."
    chunks = _split_phonemes(phonemes, vocab)
    assert len(chunks) > 1
    assert all(sum(c in vocab for c in chunk) <= 510 for chunk in chunks)
    assert "".join(chunks).replace(" ", "") == phonemes.replace(" ", "")


def test_error_rate() -> None:
    assert error_rate("Hello, world!", "hello world", "en") == 0.0
    assert error_rate("the cat sat", "the cat sat down", "en") == pytest.approx(1 / 3)
    assert error_rate("今天天气很好。", "今天天气很好", "zh") == 0.0
    assert error_rate("今天天气很好", "今天天汽很好", "zh") == pytest.approx(1 / 6)
    assert error_rate("ＡＢＣ１２３", "ABC123", "ja") == 0.0


# -- slow: the real model ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def no_network() -> Iterator[None]:
    """Fail loudly if loading or synthesis tries to reach any host."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"kokoro tried to open a network connection: {args!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket.socket, "connect_ex", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module")
def engine(no_network: None) -> KokoroEngine:
    engine = KokoroEngine()
    engine.load()
    engine.load()  # idempotent
    return engine


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


@pytest.mark.slow
@pytest.mark.parametrize("language", ["en", "zh", "ja"])
def test_synthesis_is_intelligible(engine: KokoroEngine, language: str) -> None:
    text = SENTENCES[language]
    voice = engine.capabilities.default_voices[language]
    result = engine.synthesize(text, voice=voice, language=language, mode="clone", seed=7)
    assert result.sample_rate == 24_000
    assert result.audio.dtype == np.float32 and result.audio.ndim == 1
    assert np.all(np.isfinite(result.audio)) and np.max(np.abs(result.audio)) <= 1.0
    assert _rms(result.audio) > 0.02, "audio is (nearly) silent"
    seconds = result.audio.size / result.sample_rate
    low, high = CHARS_PER_SECOND[language]
    assert len(text) / high <= seconds <= len(text) / low, f"{seconds:.2f} s for {len(text)} characters"
    assert result.warnings == []
    heard = transcribe(result.audio, result.sample_rate, language)
    rate = error_rate(text, heard, language)
    assert rate <= MAX_ERROR[language], f"{language}: error rate {rate:.2f}, heard {heard!r}"


@pytest.mark.slow
def test_unsupported_instruction_is_reported(engine: KokoroEngine) -> None:
    result = engine.synthesize(
        "我们明天见。", voice="jf_alpha", language="zh", mode="instruct", instruct="用四川话说这句话"
    )
    assert result.audio.size > 0
    assert len(result.warnings) == 1
    assert "用四川话说这句话" in result.warnings[0] and "cannot follow" in result.warnings[0]
    honoured = engine.synthesize("See you tomorrow.", voice="jf_alpha", language="en", instruct="speak slowly")
    assert honoured.warnings == []


@pytest.mark.slow
def test_speed_changes_duration(engine: KokoroEngine) -> None:
    text = "This sentence is read once at normal speed and once faster."
    normal = engine.synthesize(text, voice="jf_alpha", language="en", speed=1.0)
    fast = engine.synthesize(text, voice="jf_alpha", language="en", speed=1.5)
    slow_words = engine.synthesize(text, voice="jf_alpha", language="en", instruct="slowly", mode="instruct")
    assert fast.audio.size < 0.85 * normal.audio.size
    assert slow_words.audio.size > 1.1 * normal.audio.size


@pytest.mark.slow
@pytest.mark.parametrize("voice", ["jf_nezumi", "jm_kumo"])
def test_clone_matches_the_stock_voice_that_spoke(engine: KokoroEngine, voice: str) -> None:
    # jf_nezumi is the hard case: its pitch equals jf_gongitsune's, only the spectrum tells them apart.
    reference = engine.synthesize(
        "My grandfather used to tell me long stories about the sea and the ships he sailed.",
        voice=voice,
        language="en",
    )
    profile = engine.clone(reference.audio, reference.sample_rate, transcript=None)
    assert profile.engine == "kokoro"
    assert profile_base_voice(profile.data) == voice
    details = json.loads(profile.data)["match"]
    assert min(details["distances"], key=details["distances"].get) == voice
    spoken = engine.synthesize("我们明天见。", voice=profile, language="zh", mode="cross_lingual")
    assert _rms(spoken.audio) > 0.02
    assert any(voice in warning and "cannot clone" in warning for warning in spoken.warnings)


@pytest.mark.slow
def test_clone_rejects_a_clip_without_speech(engine: KokoroEngine) -> None:
    noise = np.random.default_rng(0).normal(0, 0.01, 24_000 * 3).astype(np.float32)
    with pytest.raises(ValueError, match="voiced speech"):
        engine.clone(noise, 24_000, transcript=None)
