"""Reference-clip checks and normalisation (no services)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from shared.audio.reference import REFERENCE_RATE, TARGET_RMS_DBFS, inspect_upload, normalise
from shared.errors import BadRequest

FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def voiced(seconds: float, rate: int) -> np.ndarray:
    """A vowel-like buzz with a wobbling pitch: enough like speech for level and silence checks."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    return (0.2 * sum(np.sin(k * phase) / k for k in range(1, 8))).astype(np.float32)


def encode(audio: np.ndarray, rate: int, fmt: str) -> bytes:
    container, subtype = FORMATS[fmt]
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=container, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_upload_format_decodes(fmt: str) -> None:
    clip = inspect_upload(encode(voiced(5.0, 44100), 44100, fmt))
    assert clip.sample_rate == 44100 and clip.channels == 1
    assert clip.duration_s == pytest.approx(5.0, abs=0.1)


def test_stereo_is_mixed_down_with_a_warning() -> None:
    mono = voiced(4.0, 16000)
    clip = inspect_upload(encode(np.stack([mono, 0.5 * mono], axis=1), 16000, "flac"))
    assert clip.audio.ndim == 1 and "mixed 2 channels down to mono" in clip.warnings
    assert np.allclose(clip.audio, 0.75 * mono, atol=1e-3)


def test_normalise_trims_silence_resamples_and_levels() -> None:
    rate = 48000
    audio = np.concatenate([np.zeros(rate * 2), 0.05 * voiced(4.0, rate), np.zeros(rate * 2)]).astype(np.float32)
    clip = normalise(inspect_upload(encode(audio, rate, "wav")))
    assert clip.sample_rate == REFERENCE_RATE
    assert 4.0 <= clip.duration_s <= 4.4  # 4 s of voice plus at most 0.1 s of padding each side
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(clip.audio.astype(np.float64) ** 2)))
    assert rms_dbfs == pytest.approx(TARGET_RMS_DBFS, abs=0.5)
    assert np.abs(clip.audio).max() <= 0.95


def test_light_clipping_warns_heavy_clipping_refuses() -> None:
    audio = voiced(5.0, 24000)
    light = audio.copy()
    light[:500] = 1.0  # 0.4 % of the samples
    assert any("clipped" in w for w in inspect_upload(encode(light, 24000, "wav")).warnings)
    with pytest.raises(BadRequest) as caught:
        inspect_upload(encode(np.clip(audio * 20, -1, 1), 24000, "wav"))
    assert caught.value.code == "clipped_audio"
