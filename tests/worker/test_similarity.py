"""The numpy GE2E speaker encoder (worker/evaluators/similarity.py) against resemblyzer itself (torch), and on real
voices.

resemblyzer, torch and librosa come from the `dev` extra; the runtime never imports them.
"""

from __future__ import annotations

import itertools
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worker.evaluators import similarity
from worker.evaluators.similarity import SpeakerEncoder

SENTENCES = (
    ("en", "My grandfather used to tell me long stories about the sea and the ships he sailed."),
    ("en", "The weather is lovely today, so we are going to take a long walk in the park."),
    ("ja", "駅の近くに新しいパン屋ができたので、明日の朝に行ってみます。"),
)


# -- fast ---------------------------------------------------------------------------------------------------------
def test_embedding_needs_no_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from worker.evaluators.similarity import SpeakerEncoder\n"
        "tone = np.sin(2 * np.pi * 180 * np.arange(48000) / 24000).astype(np.float32) * 0.3\n"
        "e = SpeakerEncoder().embed(tone, 24000)\n"
        "assert e.shape == (256,) and abs(float(np.linalg.norm(e)) - 1) < 1e-5\n"
        "assert 'resemblyzer.voice_encoder' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_unpickler_refuses_foreign_globals(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        for header in (1, 1001, {"little_endian": True}):
            pickle.dump(header, handle)
        handle.write(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="unexpected global"):
        similarity.load_state_dict(path)


def test_partial_slices_follow_resemblyzer() -> None:
    # 1 partial for anything up to 1.6 s plus a bit; then one more every 77 frames (0.77 s) once 75% covered
    assert similarity.partial_slices(8000) == [slice(0, 160)]
    assert similarity.partial_slices(16000 * 2) == [slice(0, 160), slice(77, 237)]
    for n in (100, 5000, 25600, 31999, 48000, 160000):
        slices = similarity.partial_slices(n)
        assert slices[0].start == 0 and all(s.stop - s.start == 160 for s in slices)
        assert all(b.start - a.start == 77 for a, b in itertools.pairwise(slices))


def test_partial_slices_equal_resemblyzers() -> None:
    import resemblyzer  # the dev extra installs it

    for n in (100, 5000, 25600, 31999, 32000, 48000, 77777, 160000, 480000):
        _, expected = resemblyzer.VoiceEncoder.compute_partial_slices(n, rate=1.3, min_coverage=0.75)
        assert similarity.partial_slices(n) == expected, n


def test_mel_filterbank_matches_librosa() -> None:
    import librosa  # the dev extra installs it

    expected = librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)
    np.testing.assert_allclose(similarity.mel_filterbank(), expected, rtol=1e-5, atol=1e-8)
    other = librosa.filters.mel(sr=24000, n_fft=1024, n_mels=80)
    np.testing.assert_allclose(similarity.mel_filterbank(24000, 1024, 80), other, rtol=1e-5, atol=1e-8)


def test_weights_match_torch_load() -> None:
    import torch  # the dev extra installs it

    checkpoint = torch.load(similarity.weights_path(), map_location="cpu", weights_only=False)
    ours = similarity.load_state_dict(similarity.weights_path())
    assert set(ours) == set(checkpoint["model_state"])
    for name, tensor in checkpoint["model_state"].items():
        np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=name)


def test_similarity_is_cosine() -> None:
    a, b = np.array([1.0, 0.0, 1.0]), np.array([2.0, 0.0, 2.0])
    assert SpeakerEncoder.similarity(a, b) == pytest.approx(1.0)
    assert SpeakerEncoder.similarity(a, np.array([0.0, 1.0, 0.0])) == pytest.approx(0.0)


def test_silence_cannot_be_embedded() -> None:
    with pytest.raises(ValueError, match="silent"):
        SpeakerEncoder().embed(np.zeros(100, dtype=np.float32), 16000)


# -- slow: kokoro stock voices as speakers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips() -> dict[tuple[str, int], np.ndarray]:
    """(voice, sentence index) -> 24 kHz audio, for every stock voice and sentence."""
    from worker.engines import create_engine

    engine = create_engine("kokoro")
    engine.load()
    return {
        (voice, i): engine.synthesize(text, voice=voice, language=language).audio
        for voice in engine.capabilities.stock_voices
        for i, (language, text) in enumerate(SENTENCES)
    }


@pytest.fixture(scope="module")
def resemblyzer_encoder() -> object:
    import resemblyzer  # the dev extra installs it

    return resemblyzer.VoiceEncoder("cpu", verbose=False)


@pytest.mark.slow
def test_network_matches_resemblyzer(clips: dict[tuple[str, int], np.ndarray], resemblyzer_encoder: object) -> None:
    """Same preprocessed input (resemblyzer's, VAD included): the numpy network gives the same embedding."""
    from resemblyzer import preprocess_wav

    ours = SpeakerEncoder()
    for audio in list(clips.values())[::2]:
        wav = preprocess_wav(audio, 24000)
        expected = resemblyzer_encoder.embed_utterance(wav)  # type: ignore[attr-defined]
        assert SpeakerEncoder.similarity(ours.embed_preprocessed(wav), expected) > 0.9999


@pytest.mark.slow
def test_end_to_end_matches_resemblyzer(clips: dict[tuple[str, int], np.ndarray], resemblyzer_encoder: object) -> None:
    """From raw audio. Our pause shortening is energy based, resemblyzer's is webrtcvad: on clips without long
    pauses (resemblyzer's own preprocessed output, fed again) they agree to > 0.99; on raw renders, which hold
    short pauses where the two may keep a window more or less, the partial windows shift a little."""
    from resemblyzer import preprocess_wav

    ours = SpeakerEncoder()
    raw = []
    for audio in clips.values():
        without_pauses = preprocess_wav(audio, 24000)
        expected = resemblyzer_encoder.embed_utterance(preprocess_wav(without_pauses, 16000))  # type: ignore[attr-defined]
        assert SpeakerEncoder.similarity(ours.embed(without_pauses, 16000), expected) > 0.99
        expected = resemblyzer_encoder.embed_utterance(without_pauses)  # type: ignore[attr-defined]
        raw.append(SpeakerEncoder.similarity(ours.embed(audio, 24000), expected))
    assert min(raw) > 0.97 and float(np.mean(raw)) > 0.99, raw


@pytest.mark.slow
def test_same_voice_scores_higher_than_other_voices(clips: dict[tuple[str, int], np.ndarray]) -> None:
    encoder = SpeakerEncoder()
    embeddings = {key: encoder.embed(audio, 24000) for key, audio in clips.items()}
    voices = sorted({voice for voice, _ in clips})
    for voice in voices:
        for a, b in itertools.permutations(range(len(SENTENCES)), 2):
            same = encoder.similarity(embeddings[voice, a], embeddings[voice, b])
            others = [
                encoder.similarity(embeddings[voice, a], embeddings[other, b]) for other in voices if other != voice
            ]
            assert same > max(others), f"{voice} sentences {a}/{b}: same {same:.3f}, others {np.round(others, 3)}"
