"""Voice matching for kokoro: Kokoro-82M cannot clone, so a reference is matched to the nearest stock voice.

The measure is deliberately simple: the median fundamental frequency (F0) of the voiced frames, compared on a
semitone scale with the F0 of each stock voice speaking a fixed calibration sentence. The F0 tracker is a plain
normalised-autocorrelation pitch detector on 16 kHz audio (40 ms frames, 10 ms hop, 60-500 Hz).

A profile is JSON bytes naming the chosen stock voice and recording how it was chosen.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

PROFILE_FORMAT = "voicefarm.kokoro.voice"
PROFILE_VERSION = 1

_RATE = 16_000
_FRAME = 640
_HOP = 160
_F0_MIN = 60.0
_F0_MAX = 500.0
_VOICING_THRESHOLD = 0.5
_MIN_VOICED_FRAMES = 20


def _resample(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sample_rate == _RATE:
        return audio
    import soxr

    return np.asarray(soxr.resample(audio, sample_rate, _RATE), dtype=np.float32)


def f0_track(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """F0 in Hz of every voiced frame (unvoiced and quiet frames are left out)."""
    x = _resample(audio, sample_rate).astype(np.float64)
    if x.size < _FRAME:
        return np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(x, _FRAME)[::_HOP]
    frames = frames - frames.mean(axis=1, keepdims=True)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = rms > max(0.1 * float(np.percentile(rms, 95)), 1e-4)
    frames = frames[loud] * np.hanning(_FRAME)
    if frames.shape[0] == 0:
        return np.zeros(0)
    spectrum = np.fft.rfft(frames, n=2 * _FRAME, axis=1)
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :_FRAME]
    autocorr /= np.maximum(autocorr[:, :1], 1e-12)
    low, high = int(_RATE / _F0_MAX), int(_RATE / _F0_MIN)
    window = autocorr[:, low : high + 1]
    peak = np.argmax(window, axis=1)
    strength = window[np.arange(window.shape[0]), peak]
    # parabolic interpolation around the peak for sub-sample lag precision
    inner = np.clip(peak, 1, window.shape[1] - 2)
    rows = np.arange(window.shape[0])
    left, mid, right = window[rows, inner - 1], window[rows, inner], window[rows, inner + 1]
    denominator = left - 2 * mid + right
    curved = np.abs(denominator) > 1e-12
    offset = np.where(curved, 0.5 * (left - right) / np.where(curved, denominator, 1.0), 0.0)
    lag = low + inner + np.clip(offset, -1, 1)
    voiced = (strength > _VOICING_THRESHOLD) & (peak > 0) & (peak < window.shape[1] - 1)
    return np.asarray(_RATE / lag[voiced], dtype=np.float64)


def median_f0(audio: np.ndarray, sample_rate: int) -> float:
    """Median F0 in Hz; ValueError when the clip holds too little voiced speech to tell."""
    track = f0_track(audio, sample_rate)
    if track.size < _MIN_VOICED_FRAMES:
        raise ValueError(
            f"the reference has too little voiced speech to match a voice ({track.size} voiced frames of 10 ms)"
        )
    return float(np.exp(np.median(np.log(track))))


def semitones(a_hz: float, b_hz: float) -> float:
    return 12.0 * math.log2(a_hz / b_hz)


@dataclass(frozen=True)
class VoiceMatch:
    base_voice: str
    reference_f0_hz: float
    voice_f0_hz: dict[str, float]

    @property
    def distance_semitones(self) -> float:
        return abs(semitones(self.reference_f0_hz, self.voice_f0_hz[self.base_voice]))

    def to_bytes(self) -> bytes:
        payload = {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "base_voice": self.base_voice,
            "match": {
                "method": "median_f0",
                "reference_f0_hz": round(self.reference_f0_hz, 2),
                "distance_semitones": round(self.distance_semitones, 3),
                "voice_f0_hz": {name: round(f0, 2) for name, f0 in self.voice_f0_hz.items()},
            },
        }
        return json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")


def nearest_voice(reference_f0_hz: float, voice_f0_hz: dict[str, float]) -> VoiceMatch:
    if not voice_f0_hz:
        raise ValueError("no stock voices to match against")
    best = min(voice_f0_hz, key=lambda name: abs(semitones(reference_f0_hz, voice_f0_hz[name])))
    return VoiceMatch(base_voice=best, reference_f0_hz=reference_f0_hz, voice_f0_hz=dict(voice_f0_hz))


def profile_base_voice(data: bytes) -> str:
    """The stock voice a kokoro profile speaks with; ValueError for anything that is not such a profile."""
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("voice profile is not a kokoro profile (not JSON)") from None
    if not isinstance(payload, dict) or payload.get("format") != PROFILE_FORMAT:
        raise ValueError("voice profile is not a kokoro profile (unknown format)")
    if payload.get("version") != PROFILE_VERSION:
        raise ValueError(f"unsupported kokoro profile version {payload.get('version')!r}")
    base = payload.get("base_voice")
    if not isinstance(base, str):
        raise ValueError("kokoro profile has no base_voice")
    return base
