"""Voice matching for kokoro: Kokoro-82M cannot clone, so a reference is matched to the nearest stock voice.

Two simple acoustic measures, each compared with the same measures of every stock voice speaking a fixed
calibration sentence:
- pitch: the median fundamental frequency (F0) of the voiced frames, compared in semitones. The F0 tracker is a
  plain normalised-autocorrelation pitch detector on 16 kHz audio (40 ms frames, 10 ms hop, 60-500 Hz);
- timbre: the long-term average spectrum (mean log power in 24 mel bands, 80-7600 Hz, level removed), compared as
  the RMS difference in nepers.
Measured on the stock voices (three languages, five voices): the same voice lies within 0.9 semitones and 0.5 of
its calibration, while the female voices lie 0.3-7 semitones and 0.9-1.6 apart; pitch alone confuses jf_nezumi
with jf_gongitsune, the spectrum separates them. The combined distance scales pitch by 2 semitones and the
spectrum by 0.5.

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
_BANDS = 24
_PITCH_SCALE_ST = 2.0
_SPECTRUM_SCALE = 0.5


def _resample(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sample_rate == _RATE:
        return audio
    import soxr

    return np.asarray(soxr.resample(audio, sample_rate, _RATE), dtype=np.float32)


def _loud_frames(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Hann-windowed 40 ms frames (10 ms hop) whose level is within 20 dB of the loud end of the clip."""
    x = _resample(audio, sample_rate).astype(np.float64)
    if x.size < _FRAME:
        return np.zeros((0, _FRAME))
    frames = np.lib.stride_tricks.sliding_window_view(x, _FRAME)[::_HOP]
    frames = frames - frames.mean(axis=1, keepdims=True)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = rms > max(0.1 * float(np.percentile(rms, 95)), 1e-4)
    return np.asarray(frames[loud] * np.hanning(_FRAME))


def f0_track(frames: np.ndarray) -> np.ndarray:
    """F0 in Hz of every voiced frame among `frames` (from `_loud_frames`)."""
    if frames.shape[0] == 0:
        return np.zeros(0)
    spectrum = np.fft.rfft(frames, n=2 * _FRAME, axis=1)
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :_FRAME]
    autocorr /= np.maximum(autocorr[:, :1], 1e-12)
    low, high = int(_RATE / _F0_MAX), int(_RATE / _F0_MIN)
    window = autocorr[:, low : high + 1]
    rows = np.arange(window.shape[0])
    peak = np.argmax(window, axis=1)
    strength = window[rows, peak]
    # parabolic interpolation around the peak for sub-sample lag precision
    inner = np.clip(peak, 1, window.shape[1] - 2)
    left, mid, right = window[rows, inner - 1], window[rows, inner], window[rows, inner + 1]
    denominator = left - 2 * mid + right
    curved = np.abs(denominator) > 1e-12
    offset = np.where(curved, 0.5 * (left - right) / np.where(curved, denominator, 1.0), 0.0)
    lag = low + inner + np.clip(offset, -1, 1)
    voiced = (strength > _VOICING_THRESHOLD) & (peak > 0) & (peak < window.shape[1] - 1)
    return np.asarray(_RATE / lag[voiced], dtype=np.float64)


def _mel(hz: np.ndarray | float) -> np.ndarray:
    return np.asarray(2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0))


def average_spectrum(frames: np.ndarray) -> np.ndarray:
    """Mean log power per mel band over `frames`, with the overall level removed."""
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = _mel(np.fft.rfftfreq(_FRAME, 1.0 / _RATE))
    edges = np.linspace(float(_mel(80.0)), float(_mel(7600.0)), _BANDS + 1)
    bands = np.stack(
        [power[:, (mel >= lo) & (mel < hi)].mean(axis=1) for lo, hi in zip(edges[:-1], edges[1:], strict=True)],
        axis=1,
    )
    level = np.log(bands + 1e-10).mean(axis=0)
    return np.asarray(level - level.mean())


@dataclass(frozen=True)
class VoiceFeatures:
    f0_hz: float
    spectrum: tuple[float, ...]

    def distance(self, other: VoiceFeatures) -> float:
        pitch = semitones(self.f0_hz, other.f0_hz) / _PITCH_SCALE_ST
        timbre = float(np.sqrt(np.mean((np.array(self.spectrum) - np.array(other.spectrum)) ** 2)))
        return math.hypot(pitch, timbre / _SPECTRUM_SCALE)


def voice_features(audio: np.ndarray, sample_rate: int) -> VoiceFeatures:
    """Pitch and timbre of a clip; ValueError when it holds too little voiced speech to tell."""
    frames = _loud_frames(audio, sample_rate)
    track = f0_track(frames)
    if track.size < _MIN_VOICED_FRAMES:
        raise ValueError(
            f"the reference has too little voiced speech to match a voice ({track.size} voiced frames of 10 ms)"
        )
    f0 = float(np.exp(np.median(np.log(track))))
    return VoiceFeatures(f0_hz=f0, spectrum=tuple(float(v) for v in average_spectrum(frames)))


def semitones(a_hz: float, b_hz: float) -> float:
    return 12.0 * math.log2(a_hz / b_hz)


@dataclass(frozen=True)
class VoiceMatch:
    base_voice: str
    reference: VoiceFeatures
    distances: dict[str, float]
    voice_f0_hz: dict[str, float]

    def to_bytes(self) -> bytes:
        payload = {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "base_voice": self.base_voice,
            "match": {
                "method": "median_f0+average_spectrum",
                "reference_f0_hz": round(self.reference.f0_hz, 2),
                "voice_f0_hz": {name: round(f0, 2) for name, f0 in self.voice_f0_hz.items()},
                "distances": {name: round(d, 3) for name, d in self.distances.items()},
            },
        }
        return json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")


def nearest_voice(reference: VoiceFeatures, voices: dict[str, VoiceFeatures]) -> VoiceMatch:
    if not voices:
        raise ValueError("no stock voices to match against")
    distances = {name: reference.distance(features) for name, features in voices.items()}
    best = min(distances, key=distances.__getitem__)
    return VoiceMatch(
        base_voice=best,
        reference=reference,
        distances=distances,
        voice_f0_hz={name: features.f0_hz for name, features in voices.items()},
    )


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
