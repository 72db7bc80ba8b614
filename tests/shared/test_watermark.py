"""The watermark (shared/provenance/watermark.py): found in what it marks, absent from speech the farm never made,
still found after each transformation of benchmarks/watermark_robustness.py's table that it withstands (the
figures: docs/benchmarks/watermark.md). Its equality with Perth itself: tests/worker/test_watermark_upstream.py.
"""

from __future__ import annotations

import pickle
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from benchmarks.watermark_robustness import attacks
from shared.provenance import watermark
from tests.support.needs import debian_tool

RATE = 24000
TEXTS = (
    "The museum is on the right, just past the bakery on the corner.",
    "Please remember to back up your files before installing the update.",
    "去机场的火车每二十分钟从四号站台出发。",
)


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    """espeak-ng speech (the espeakng-loader wheel) at the farm's rate, three voices."""
    from benchmarks.make_eval_set import Espeak

    espeak = Espeak()
    voices = (("en-us+m3", 40), ("en-gb-x-rp+f3", 62), ("cmn+f2", 60))
    out = []
    for text, (voice, pitch) in zip(TEXTS, voices, strict=True):
        samples = espeak.speak(text, voice, pitch, 160).astype(np.float32) / 32768.0
        out.append(soxr.resample(samples, espeak.rate, RATE).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def marked(speech: list[np.ndarray]) -> list[np.ndarray]:
    return [watermark.embed(audio, RATE) for audio in speech]


def test_the_mark_is_found_and_the_take_keeps_its_length(speech: list[np.ndarray], marked: list[np.ndarray]) -> None:
    for clean, audio in zip(speech, marked, strict=True):
        assert audio.shape == clean.shape and audio.dtype == np.float32
        assert np.max(np.abs(audio)) <= np.max(np.abs(clean)) + 1e-6  # the mark never raises the peak
        found, score = watermark.detect(audio, RATE)
        assert found and score > 0.9, score
        assert not watermark.detect(clean, RATE)[0]
        # A mark, not a new signal: the speech is still there, well above it.
        snr = 10 * np.log10(np.sum(clean**2) / np.sum((audio - clean) ** 2))
        assert snr > 10, snr


def test_absent_from_speech_the_farm_never_made(speech: list[np.ndarray]) -> None:
    clips = [(audio, RATE) for audio in speech]
    flite = debian_tool("flite", "flite")
    with tempfile.TemporaryDirectory() as folder:
        for voice in ("slt", "rms"):
            path = Path(folder) / f"{voice}.wav"
            subprocess.run([flite, "-voice", voice, "-t", TEXTS[0], "-o", str(path)], check=True)
            audio, rate = sf.read(path, dtype="float32")
            clips.append((audio, rate))
    for audio, rate in clips:
        found, score = watermark.detect(audio, rate)
        assert not found and score < 0.1, score


# Every transformation of the robustness table but white noise at 10 dB SNR, which removes the mark (the table
# says so: docs/benchmarks/watermark.md).
SURVIVED = [
    "mp3 64 kbps",
    "mp3 128 kbps",
    "aac 96 kbps",
    "opus 32 kbps",
    "resample 16 kHz",
    "gain +6 dB",
    "gain -6 dB",
    "loudness -23 LUFS",
    "stretch 10 %",
    "trim 1 s",
    "music 10 dB SNR",
]


@pytest.mark.parametrize("name", SURVIVED)
def test_survives(name: str, marked: list[np.ndarray]) -> None:
    attack = attacks()[name]
    for audio in marked[:2]:
        changed, rate = attack(audio, RATE)
        found, score = watermark.detect(changed, rate)
        assert found, (name, score)


def test_silence_and_tiny_inputs() -> None:
    silence = np.zeros(RATE, dtype=np.float32)
    assert np.array_equal(watermark.embed(silence, RATE), silence)
    assert watermark.detect(silence, RATE) == (False, 0.0)
    blip = (np.random.default_rng(1).standard_normal(200) * 0.1).astype(np.float32)
    assert watermark.embed(blip, RATE).shape == blip.shape
    assert watermark.embed(np.zeros(0, dtype=np.float32), RATE).shape == (0,)
    assert watermark.detect(np.zeros(0, dtype=np.float32), RATE) == (False, 0.0)


def test_the_weights_file_may_name_nothing_but_tensors(tmp_path: Path) -> None:
    """The checkpoint is read with a restricted unpickler: a file that names any other global is refused."""

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, ("true",))

    path = tmp_path / "evil.pth.tar"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"model": {"w": Evil()}}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="unexpected global"):
        watermark.load_state_dict(path)
    state = watermark.load_state_dict(watermark.weights_path())
    assert sum("layers." in name for name in state) == 4 * 7 * 2  # embedder and three detector branches
    # The STFT window Perth saved with its network is the one used here (periodic Hann of 2048).
    assert np.allclose(state["ap.spectrogram.window"], watermark._WINDOW, atol=1e-7)
