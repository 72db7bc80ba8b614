"""Kokoro voice matching: the WORLD transform, profiles, and (slow) similarity gains on non-Kokoro references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from worker.engines.kokoro import matching
from worker.engines.kokoro.matching import Transform, VoiceMatch, World, parse_profile

RATE = matching.RATE


def _vowel(f0: float, seconds: float = 1.5, formants: tuple[float, ...] = (700.0, 1200.0, 2600.0)) -> np.ndarray:
    """A buzzy vowel: harmonics of f0 shaped by resonances, with a slow vibrato."""
    t = np.arange(int(seconds * RATE)) / RATE
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 4 * t))) / RATE
    out = np.zeros_like(t)
    for k in range(1, int(5000 / f0)):
        amplitude = sum(1.0 / (1 + ((k * f0 - f) / 120.0) ** 2) for f in formants)
        out += amplitude * np.sin(k * phase)
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def _world(f0: np.ndarray, envelope: np.ndarray | None = None) -> World:
    frames = len(f0)
    sp = np.tile(np.exp(envelope if envelope is not None else np.zeros(513)), (frames, 1))
    return World(f0=np.asarray(f0, dtype=np.float64), sp=sp, ap=np.full((frames, 513), 0.1))


# -- fast ---------------------------------------------------------------------------------------------------------
def test_pitch_moves_log_f0_mean_and_spread_toward_the_reference() -> None:
    rng = np.random.default_rng(0)
    source = np.exp(np.log(120.0) + 0.1 * rng.standard_normal(400))
    source[::5] = 0.0  # unvoiced frames stay unvoiced
    target = np.exp(np.log(210.0) + 0.2 * rng.standard_normal(400))
    voice, reference = _world(source), _world(target)
    full = matching.design(reference, voice, pitch=1.0, warp=1.0, envelope=0.0)
    moved = full.f0(source)
    assert np.array_equal(moved == 0, source == 0)
    log_moved = np.log(moved[moved > 0])
    assert log_moved.mean() == pytest.approx(reference.log_f0_stats()[0], abs=1e-6)
    assert log_moved.std() == pytest.approx(reference.log_f0_stats()[1], rel=1e-6)
    half = matching.design(reference, voice, pitch=0.5, warp=1.0, envelope=0.0).f0(source)
    assert np.exp(np.log(half[half > 0]).mean()) == pytest.approx(math.sqrt(120 * 210), rel=0.05)
    assert np.array_equal(matching.design(reference, voice, 0.0, 1.0, 0.0).f0(source), source)
    octave_up = matching.design(_world(source * 8), voice, 1.0, 1.0, 0.0).f0(source)
    assert np.median(octave_up[octave_up > 0]) / np.median(source[source > 0]) == pytest.approx(2.0, rel=0.02)


def test_warp_moves_formants_and_gain_is_clamped() -> None:
    bins = np.arange(513)
    envelope = -(((bins - 100) / 10.0) ** 2) / 10
    warped = matching._warp(envelope, 1.1)
    assert int(np.argmax(warped)) == 110
    loud = _world(np.full(200, 150.0), envelope=np.where(bins > 300, 8.0, 0.0))
    quiet = _world(np.full(200, 150.0))
    transform = matching.design(loud, quiet, pitch=0.0, warp=1.0, envelope=1.5)
    gain = transform.envelope_gain(513)
    assert np.all(np.abs(gain) <= matching.MAX_GAIN_NEPERS + 1e-9)
    assert gain[450] > gain[50]  # toward the reference's brighter spectrum
    same = matching.design(loud, loud, pitch=1.0, warp=1.0, envelope=1.0)
    assert np.allclose(same.gain, 0.0, atol=1e-6)


def test_apply_shifts_the_pitch_of_real_audio() -> None:
    audio = _vowel(130.0)
    voice = matching.analyse(audio)
    reference = matching.analyse(_vowel(190.0))
    transform = matching.design(reference, voice, pitch=1.0, warp=1.05, envelope=1.0)
    out = transform.apply(audio)
    assert out.dtype == np.float32 and out.size == audio.size and np.abs(out).max() <= 0.99
    rms = lambda x: float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))  # noqa: E731
    assert rms(out) == pytest.approx(rms(audio), rel=0.05)
    f0 = matching.analyse(out).f0
    assert np.median(f0[f0 > 0]) == pytest.approx(190.0, rel=0.05)
    assert Transform(voice.log_f0_stats(), voice.log_f0_stats(), (0.0,) * 129, 0.0, 1.0, 0.0).apply(audio) is audio


def test_tune_keeps_the_plain_voice_when_nothing_beats_it() -> None:
    calibration = _vowel(140.0)
    voice, reference = matching.analyse(calibration), matching.analyse(_vowel(220.0))
    plain_best, score, plain = matching.tune(reference, voice, calibration, lambda a: 1.0 if a is calibration else 0.5)
    assert plain_best.identity and score == plain == 1.0

    def prefers_high_pitch(audio: np.ndarray) -> float:
        f0 = matching.analyse(audio).f0
        return -abs(float(np.median(f0[f0 > 0])) - 220.0)

    moved, score, plain = matching.tune(reference, voice, calibration, prefers_high_pitch)
    assert moved.pitch == 1.0 and score > plain


def test_profiles_round_trip_and_old_profiles_still_load() -> None:
    embedding = np.random.default_rng(1).random(256).astype(np.float32)
    embedding /= np.linalg.norm(embedding)
    transform = Transform((4.8, 0.1), (5.3, 0.15), tuple(np.linspace(-1, 1, 129)), 0.5, 1.1, 1.0)
    match = VoiceMatch("jf_alpha", {"jf_alpha": 0.7, "jm_kumo": 0.4}, tuple(embedding.tolist()), transform, (0.6, 0.7))
    data = match.to_bytes()
    assert json.loads(data)["match"]["distances"]["jm_kumo"] == pytest.approx(0.6)
    profile = parse_profile(data)
    assert profile.base_voice == "jf_alpha" and profile.transform is not None
    np.testing.assert_allclose(profile.embedding, embedding, atol=1e-5)  # type: ignore[arg-type]
    assert profile.transform.warp == 1.1 and profile.transform.pitch == 0.5
    np.testing.assert_allclose(profile.transform.gain, transform.gain, atol=1e-4)
    old = json.dumps({"format": matching.PROFILE_FORMAT, "version": 1, "base_voice": "jm_kumo"}).encode()
    assert parse_profile(old) == matching.Profile("jm_kumo", None, None)
    broken = json.loads(data)
    broken["transform"]["gain"] = [0.0, 1.0]
    with pytest.raises(ValueError, match="malformed"):
        parse_profile(json.dumps(broken).encode())
    with pytest.raises(ValueError, match="version"):
        parse_profile(json.dumps({"format": matching.PROFILE_FORMAT, "version": 9, "base_voice": "x"}).encode())


def test_blend_search_never_scores_below_the_base_voice_and_follows_the_score() -> None:
    voices = ("a", "b", "c")
    target = {"a": 0.3, "b": 0.7, "c": 0.0}

    def closeness(weights: dict[str, float]) -> float:  # peaks at the target blend
        return -sum((weights.get(n, 0.0) - w) ** 2 for n, w in target.items())

    weights, best, plain, spent = matching.search_blend("a", voices, closeness)
    assert plain == closeness({"a": 1.0}) and best > plain and spent <= matching.BLEND_RENDERS
    assert weights["b"] > weights.get("a", 0.0) and sum(weights.values()) == pytest.approx(1.0)
    assert min(weights.values()) >= -matching.MAX_AWAY
    stays, best, plain, _ = matching.search_blend("a", voices, lambda w: 1.0 if w == {"a": 1.0} else 0.0)
    assert stays == {"a": 1.0} and best == plain == 1.0
    _, _, _, spent = matching.search_blend("a", voices, closeness, budget=3)
    assert spent == 3
    packs = {"a": np.ones((510, 256), np.float32), "b": np.zeros((510, 256), np.float32)}
    np.testing.assert_allclose(matching.blend_pack(packs, {"a": 1.25, "b": -0.25}), 1.25)


def test_blend_profiles_round_trip_and_version_2_profiles_still_load() -> None:
    embedding = tuple(np.full(256, 1 / 16, dtype=np.float32).tolist())
    blend = {"jf_alpha": 0.75, "jm_kumo": 0.5, "jf_nezumi": -0.25}
    match = VoiceMatch("jf_alpha", {"jf_alpha": 0.7}, embedding, None, (0.6, 0.7), blend=blend, method="x")
    payload = json.loads(match.to_bytes())
    assert payload["version"] == 3 and payload["match"]["method"] == "x"
    assert parse_profile(match.to_bytes()).blend == blend
    payload["version"] = 2
    del payload["blend"]
    assert parse_profile(json.dumps(payload).encode()).blend is None
    payload["blend"] = {"jf_alpha": 2.0, "jm_kumo": -1.0}
    with pytest.raises(ValueError, match="blend"):
        parse_profile(json.dumps(payload).encode())


# -- slow: the engine, and references from other synthesizers ----------------------------------------------------
@pytest.fixture(scope="module")
def engine() -> object:
    from worker.engines.kokoro import KokoroEngine

    engine = KokoroEngine()
    engine.load()
    return engine


@pytest.mark.slow
def test_matched_voices_score_higher_than_the_best_stock_voice(engine: object) -> None:
    from benchmarks.matching import evaluate, make_references, print_table
    from worker.evaluators.similarity import SpeakerEncoder

    names = ["en-m3", "en-f2", "en-m7-low", "en-f4-high", "zh-f3", "en-m3-world-child"]
    rows = evaluate(engine, make_references(names), SpeakerEncoder())  # type: ignore[arg-type]
    print_table(rows)
    matched = float(np.mean([row.matched for row in rows]))
    unmatched = float(np.mean([row.best_unmatched for row in rows]))
    assert matched > unmatched, f"matched {matched:.3f} vs best unmatched stock voice {unmatched:.3f}"


@pytest.mark.slow
def test_stock_voices_report_no_similarity_and_profiles_do(engine: object) -> None:
    from benchmarks.matching import make_references
    from worker.evaluators.similarity import SpeakerEncoder

    plain = engine.synthesize("Good morning.", voice="jm_kumo", language="en")  # type: ignore[attr-defined]
    assert plain.similarity is None
    (reference,) = make_references(["en-croak"])
    profile = engine.clone(reference.audio, RATE, transcript=None)  # type: ignore[attr-defined]
    out = engine.synthesize("Good morning, how are you?", voice=profile, language="en")  # type: ignore[attr-defined]
    encoder = SpeakerEncoder()
    expected = encoder.similarity(encoder.embed(out.audio, RATE), encoder.embed(reference.audio, RATE))
    assert out.similarity == pytest.approx(expected, abs=1e-3)
    assert any("cannot clone" in warning for warning in out.warnings)
    assert out.audio.dtype == np.float32 and np.abs(out.audio).max() <= 1.0


@pytest.mark.slow
def test_matchers_never_score_below_the_best_stock_voice_on_a_held_out_speaker(engine: object) -> None:
    """One espeak-ng speaker of benchmarks/matcher_heldout.py: fitted to one clip, scored on another text
    against a held-out clip; the best stock voice is picked by looking at the held-out clip itself."""
    from benchmarks.matcher_heldout import espeak_speakers, evaluate, print_means
    from worker.evaluators.similarity import SpeakerEncoder

    matchers = ["world", "blend+world"]
    (row,) = evaluate(engine, espeak_speakers(["en_m3"]), matchers, SpeakerEncoder())  # type: ignore[arg-type]
    print_means([row], matchers)
    for matcher in matchers:
        assert row.matched[matcher] >= row.best_stock[1], (matcher, row.matched, row.best_stock)
    # A blend profile is spoken with the blended pack: neither of its stock voices' audio.
    from worker.engines.base import VoiceProfile

    match = VoiceMatch(
        "jf_alpha", {}, tuple(np.full(256, 1 / 16).tolist()), None, blend={"jf_alpha": 0.5, "jm_kumo": 0.5}
    )
    blended = engine.synthesize("Good morning.", voice=VoiceProfile("kokoro", match.to_bytes()), language="en")  # type: ignore[attr-defined]
    assert blended.similarity is not None and np.abs(blended.audio).max() > 0.05
    for stock in ("jf_alpha", "jm_kumo"):
        plain = engine.synthesize("Good morning.", voice=stock, language="en").audio  # type: ignore[attr-defined]
        assert plain.size != blended.audio.size or not np.allclose(plain, blended.audio, atol=1e-3)
