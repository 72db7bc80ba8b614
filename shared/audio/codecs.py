"""Audio utilities both sides use: encoding to the API's formats, resampling, joining segments."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

FORMATS = ("wav", "flac", "mp3", "ogg", "opus", "aac", "pcm")
# Any output rate in this range for wav, flac, ogg and pcm (resampled with soxr); mp3 and aac have fixed sets.
MIN_RATE, MAX_RATE = 8000, 48000
CODEC_RATES = {
    "mp3": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
    "aac": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
    "opus": (48000,),
}
# The file name extension of each format (aac comes in an MPEG-4 audio container).
EXTENSIONS = {"aac": "m4a"}
CONTENT_TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "aac": "audio/mp4",
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
# A streamed job's segments rise from and fall to the silence between them over this long (`fade_edges`).
SEAM_FADE_S = 0.005


@dataclass(frozen=True)
class Encoded:
    data: bytes
    format: str
    sample_rate: int
    duration_s: float
    channels: int = 1

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    if src_rate == dst_rate:
        return audio.astype(np.float32, copy=False)
    return np.asarray(soxr.resample(audio.astype(np.float32), src_rate, dst_rate), dtype=np.float32)


def fade_edges(
    audio: np.ndarray, sample_rate: int, seconds: float = SEAM_FADE_S, *, start: bool = True, end: bool = True
) -> np.ndarray:
    """A copy of `audio` that rises from silence over its first `seconds` and falls back to it over its last
    (raised-cosine ramps; at most half the audio each): a segment meets the silence around it without a step, so
    without a click, whatever the engine left at its edges."""
    out = audio.astype(np.float32, copy=True)
    n = min(int(round(seconds * sample_rate)), len(out) // 2)
    if n <= 0:
        return out
    ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(1, n + 1) / (n + 1))).astype(np.float32)
    if start:
        out[:n] *= ramp
    if end:
        out[-n:] *= ramp[::-1]
    return out


def join_segments(segments: list[np.ndarray], sample_rate: int, pause_s: float) -> tuple[np.ndarray, list[float]]:
    """Concatenate segments with silence between them; returns the audio and each segment's start time. A stream
    (shared/audio/streaming.py) puts the same silence between the same segments, so it is this audio sample for
    sample; the worker fades a streamed job's segments (`fade_edges`) before both."""
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


def rate_problem(fmt: str, rate: int | None) -> str | None:
    """Why `fmt` cannot be written at `rate`, or None when it can."""
    if rate is None:
        return None
    if not MIN_RATE <= rate <= MAX_RATE:
        return f"sample_rate must be between {MIN_RATE} and {MAX_RATE} Hz"
    allowed = CODEC_RATES.get(fmt)
    if allowed is not None and rate not in allowed:
        return f"{fmt} output takes sample_rate {', '.join(map(str, allowed))}"
    return None


def encode(audio: np.ndarray, sample_rate: int, fmt: str, target_rate: int | None = None, channels: int = 1) -> Encoded:
    """Encode mono float32 audio; `channels=2` writes the same signal on both channels. Each format's encoder is a
    library: libsndfile (wav, flac, mp3, ogg vorbis, opus) through soundfile, FFmpeg's aac through PyAV."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if channels not in (1, 2):
        raise ValueError("channels must be 1 or 2")
    rate = target_rate or (48000 if fmt == "opus" else sample_rate)
    problem = rate_problem(fmt, rate)
    if problem:
        raise ValueError(problem)
    out = np.clip(resample(audio, sample_rate, rate), -1.0, 1.0)
    frames = np.repeat(out[:, np.newaxis], channels, axis=1) if channels == 2 else out
    if fmt == "pcm":
        data = (frames * 32767.0).astype("<i2").tobytes()
    elif fmt == "aac":
        data = _encode_aac(out, rate, channels)
    else:
        container, subtype = _SF_FORMATS[fmt]
        buf = io.BytesIO()
        with sf.SoundFile(buf, "w", rate, channels, format=container, subtype=subtype) as f:
            # In blocks: libsndfile 1.2.2's Vorbis encoder crashes the process on one write of ~2M frames or more.
            for start in range(0, len(frames), _WRITE_BLOCK_FRAMES):
                f.write(frames[start : start + _WRITE_BLOCK_FRAMES])
        data = buf.getvalue()
    return Encoded(data=data, format=fmt, sample_rate=rate, duration_s=len(out) / rate, channels=channels)


def _encode_aac(audio: np.ndarray, rate: int, channels: int) -> bytes:
    import av

    layout = "stereo" if channels == 2 else "mono"
    buf = io.BytesIO()
    with av.open(buf, "w", format="ipod") as container:  # the ipod muxer writes .m4a
        stream = container.add_stream("aac", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(np.tile(audio.astype(np.float32), (channels, 1))), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        for packet in (*stream.encode(frame), *stream.encode(None)):
            container.mux(packet)
    return buf.getvalue()
