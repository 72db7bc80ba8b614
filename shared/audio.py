"""Audio utilities both sides use: encoding to the API's formats, resampling, joining segments."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

FORMATS = ("wav", "flac", "mp3", "ogg", "opus", "pcm")
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
CONTENT_TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "pcm": "audio/L16",
}
# libsndfile containers and subtypes for each API format; opus is only defined at 48 kHz.
_SF_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
}
_WRITE_BLOCK_FRAMES = 1 << 18
# mp3 in libsndfile supports only these rates.
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


@dataclass(frozen=True)
class Encoded:
    data: bytes
    format: str
    sample_rate: int
    duration_s: float

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    if src_rate == dst_rate:
        return audio.astype(np.float32, copy=False)
    return np.asarray(soxr.resample(audio.astype(np.float32), src_rate, dst_rate), dtype=np.float32)


def join_segments(segments: list[np.ndarray], sample_rate: int, pause_s: float) -> tuple[np.ndarray, list[float]]:
    """Concatenate segments with silence between them; returns the audio and each segment's start time."""
    gap = np.zeros(int(round(pause_s * sample_rate)), dtype=np.float32)
    pieces: list[np.ndarray] = []
    starts: list[float] = []
    cursor = 0
    for i, seg in enumerate(segments):
        if i:
            pieces.append(gap)
            cursor += len(gap)
        starts.append(cursor / sample_rate)
        pieces.append(seg.astype(np.float32, copy=False))
        cursor += len(seg)
    if not pieces:
        return np.zeros(0, dtype=np.float32), []
    return np.concatenate(pieces), starts


def encode(audio: np.ndarray, sample_rate: int, fmt: str, target_rate: int | None = None) -> Encoded:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    rate = target_rate or sample_rate
    if fmt == "opus":
        rate = 48000
    elif fmt == "mp3" and rate not in _MP3_RATES:
        raise ValueError(f"mp3 cannot be written at {rate} Hz")
    out = np.clip(resample(audio, sample_rate, rate), -1.0, 1.0)
    if fmt == "pcm":
        data = (out * 32767.0).astype("<i2").tobytes()
    else:
        container, subtype = _SF_FORMATS[fmt]
        buf = io.BytesIO()
        with sf.SoundFile(buf, "w", rate, 1, format=container, subtype=subtype) as f:
            # In blocks: libsndfile 1.2.2's Vorbis encoder crashes the process on one write of ~2M frames or more.
            for start in range(0, len(out), _WRITE_BLOCK_FRAMES):
                f.write(out[start : start + _WRITE_BLOCK_FRAMES])
        data = buf.getvalue()
    return Encoded(data=data, format=fmt, sample_rate=rate, duration_s=len(out) / rate)
