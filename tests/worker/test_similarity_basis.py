"""Honest similarity: a long enough reference is split, the voice fitted to its first part, and every output's
`similarity` measured against the held-out rest; a short one is scored against the clip itself, and says so."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from worker.engines.kokoro import matching

RATE = 24_000
SENTENCES = (
    "My grandfather used to tell me long stories about the sea and the ships he sailed.",
    "He would sit by the window in the evening, and we listened until the lamps were lit.",
    "Every story ended in a harbour, with the sails coming down and the ropes tied fast.",
)


def test_split_keeps_a_long_reference_whole_but_for_its_held_out_tail() -> None:
    rng = np.random.default_rng(1)
    # Ten seconds of "speech" with a quiet gap at 6.4 s, close to where a 65/35 split falls.
    audio = (rng.standard_normal(10 * RATE) * 0.2).astype(np.float32)
    audio[int(6.4 * RATE) : int(6.5 * RATE)] = 0.0
    fitting, held = matching.split_reference(audio, RATE)
    assert held is not None and len(fitting) + len(held) == len(audio)
    assert 6.4 <= len(fitting) / RATE <= 6.5  # cut in the quiet gap, not mid-sound
    short, none = matching.split_reference(audio[: 5 * RATE], RATE)
    assert none is None and len(short) == 5 * RATE


@pytest.fixture(scope="module")
def engine() -> Any:
    from worker.engines.kokoro import KokoroEngine

    engine = KokoroEngine()
    engine.load()
    return engine


@pytest.mark.slow
def test_outputs_are_scored_against_speech_the_voice_was_not_fitted_to(engine: Any) -> None:
    from worker.evaluators.similarity import SpeakerEncoder

    encoder = SpeakerEncoder()
    pause = np.zeros(RATE // 3, dtype=np.float32)
    parts = [engine.synthesize(text, voice="jf_nezumi", language="en").audio for text in SENTENCES]
    reference = np.concatenate([parts[0], pause, parts[1], pause, parts[2]])
    assert len(reference) / RATE >= matching.HOLD_OUT_MIN_S
    profile = engine.clone(reference, RATE, transcript=None)
    parsed = matching.parse_profile(profile.data)
    fitting, held = matching.split_reference(reference, RATE)
    assert held is not None and parsed.held_out is not None
    assert encoder.similarity(parsed.held_out, encoder.embed(held, RATE)) > 0.999
    assert encoder.similarity(parsed.embedding, encoder.embed(fitting, RATE)) > 0.999  # type: ignore[arg-type]

    out = engine.synthesize("Thank you for calling; we will be right with you.", voice=profile, language="en")
    output = encoder.embed(out.audio, RATE)
    assert out.similarity_basis == "held_out"
    assert out.similarity == pytest.approx(encoder.similarity(output, encoder.embed(held, RATE)), abs=1e-3)
    in_sample = encoder.similarity(output, encoder.embed(fitting, RATE))
    print(f"similarity to held-out speech {out.similarity:.3f}, to the fitted part {in_sample:.3f}")

    short = engine.clone(reference[: 6 * RATE], RATE, transcript=None)
    assert matching.parse_profile(short.data).held_out is None
    out = engine.synthesize("Thank you for calling.", voice=short, language="en")
    assert out.similarity_basis == "fitting_clip" and out.similarity is not None


@pytest.mark.slow
def test_with_a_second_clip_the_voice_is_fitted_to_the_whole_reference_and_scored_on_the_second(engine: Any) -> None:
    from worker.evaluators.similarity import SpeakerEncoder

    encoder = SpeakerEncoder()
    pause = np.zeros(RATE // 3, dtype=np.float32)
    parts = [engine.synthesize(text, voice="jf_nezumi", language="en").audio for text in SENTENCES]
    reference = np.concatenate([parts[0], pause, parts[1]])  # long enough to be split, were no clip given
    assert len(reference) / RATE >= matching.HOLD_OUT_MIN_S
    profile = engine.clone(reference, RATE, transcript=None, held_out=parts[2])
    parsed = matching.parse_profile(profile.data)
    assert parsed.held_out_source == "second_clip" and parsed.held_out is not None
    assert encoder.similarity(parsed.embedding, encoder.embed(reference, RATE)) > 0.999  # type: ignore[arg-type]
    assert encoder.similarity(parsed.held_out, encoder.embed(parts[2], RATE)) > 0.999
    out = engine.synthesize("Thank you for calling; we will be right with you.", voice=profile, language="en")
    assert out.similarity_basis == "second_clip"
    assert out.similarity == pytest.approx(
        encoder.similarity(encoder.embed(out.audio, RATE), parsed.held_out), abs=1e-3
    )
    with pytest.raises(ValueError, match="second clip"):
        engine.clone(reference, RATE, transcript=None, held_out=np.zeros(0, dtype=np.float32))
