import io

import numpy as np
import pytest
import soundfile as sf

from shared.audio.codecs import FORMATS, encode, join_segments


def tone(seconds: float, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


# aac (in an MPEG-4 container libsndfile cannot read) is decoded back with PyAV in tests/worker/test_mastering.py.
@pytest.mark.parametrize("fmt", [f for f in FORMATS if f not in ("pcm", "aac")])
def test_every_container_decodes_back_to_the_same_duration(fmt: str) -> None:
    encoded = encode(tone(1.0), 24000, fmt)
    audio, rate = sf.read(io.BytesIO(encoded.data))
    assert rate == encoded.sample_rate == (48000 if fmt == "opus" else 24000)
    assert abs(len(audio) / rate - 1.0) < 0.08
    assert len(encoded.sha256) == 64


def test_pcm_is_raw_16_bit_little_endian() -> None:
    encoded = encode(tone(0.5), 24000, "pcm", 16000)
    assert encoded.sample_rate == 16000
    assert len(encoded.data) == 2 * 8000
    samples = np.frombuffer(encoded.data, "<i2")
    assert 0.25 * 32767 < np.abs(samples).max() < 0.35 * 32767


def test_resampled_wav_has_the_requested_rate() -> None:
    encoded = encode(tone(1.0), 24000, "wav", 44100)
    audio, rate = sf.read(io.BytesIO(encoded.data))
    assert rate == 44100 and len(audio) == 44100


def test_join_inserts_pauses_and_reports_starts() -> None:
    audio, starts = join_segments([tone(1.0), tone(0.5)], 24000, 0.25)
    assert len(audio) == int(1.75 * 24000)
    assert starts == [0.0, 1.25]
    assert np.all(audio[24000 : 24000 + 6000] == 0)


def test_unknown_format() -> None:
    with pytest.raises(ValueError):
        encode(tone(0.1), 24000, "aiff")


def test_long_vorbis_output_does_not_crash_the_encoder() -> None:
    """libsndfile 1.2.2 segfaults on one Vorbis write of ~2M frames (87 s at 24 kHz); encode() writes in blocks.
    Run in a child process so a crash fails this test instead of ending the test session."""
    import subprocess
    import sys

    code = (
        "import io, numpy as np, soundfile as sf; from shared.audio.codecs import encode; "
        "x = (0.1 * np.sin(np.arange(24000 * 100) / 7)).astype(np.float32); "
        "e = encode(x, 24000, 'ogg', 48000); print(round(sf.info(io.BytesIO(e.data)).duration))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "100"
