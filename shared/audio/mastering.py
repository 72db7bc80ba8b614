"""Post-production of a whole line, applied once its segments are joined (never per sentence, which is what makes
loudness jump between sentences): fit to a slot, trim silence, then loudness.

Loudness is measured with pyloudnorm (ITU-R BS.1770-4 integrated loudness); peaks are held under a true-peak
ceiling, measured on a 4x oversampled signal (BS.1770 Annex 2), by pedalboard's compressor; time-stretching keeps
pitch (pedalboard's Rubber Band). Pure functions on float32 mono arrays, so the worker and tests call them alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr

LOUDNESS_PRESETS = (-14.0, -16.0, -18.0)
LOUDNESS_RANGE = (-30.0, -10.0)
DEFAULT_TRUE_PEAK_DB = -1.0
# Fit to slot: a line within this share of its slot is left alone; time-stretching goes no further than this.
FIT_TOLERANCE = 0.02
MAX_STRETCH = 0.25
# Silence: 10 ms frames quieter than this (dBFS, RMS) at either end count as silence.
SILENCE_DB = -45.0
_FRAME_S = 0.01


@dataclass(frozen=True)
class Options:
    """What a job or batch line asks of post-production; stored on the job (`options`) and part of its dedup key."""

    loudness_lufs: float | None = None
    true_peak_db: float = DEFAULT_TRUE_PEAK_DB
    trim_pad_s: float | None = None
    target_duration_s: float | None = None
    channels: int = 1
    # Word timings by forced alignment (worker/alignment.py): a Whisper pass over the line, so only on request.
    align_words: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Options:
        # A job's options also hold what is not post-production (its lexicon snapshot, shared/text/lexicon.py).
        return cls(**{k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        defaults = Options()
        return {k: v for k, v in vars(self).items() if v != getattr(defaults, k)}


@dataclass
class Mastered:
    audio: np.ndarray
    # Where the joined audio's time t now is: new_t = (t - shift_s) * scale (trimmed, then stretched).
    shift_s: float = 0.0
    scale: float = 1.0
    loudness: dict[str, float] | None = None
    warnings: list[str] = field(default_factory=list)

    def map_time(self, t: float, duration_s: float) -> float:
        return round(min(max((t - self.shift_s) * self.scale, 0.0), duration_s), 3)


def integrated_lufs(audio: np.ndarray, rate: int) -> float:
    import pyloudnorm

    # BS.1770 needs at least one 400 ms block.
    if len(audio) < int(0.4 * rate):
        audio = np.pad(audio, (0, int(0.4 * rate) - len(audio)))
    return float(pyloudnorm.Meter(rate).integrated_loudness(audio.astype(np.float64)))


def true_peak_db(audio: np.ndarray, rate: int) -> float:
    if not len(audio):
        return -math.inf
    peak = float(np.max(np.abs(soxr.resample(audio.astype(np.float32), rate, rate * 4))))
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def measure(audio: np.ndarray, rate: int) -> dict[str, float]:
    return {
        "integrated_lufs": round(integrated_lufs(audio, rate), 2),
        "true_peak_dbtp": round(true_peak_db(audio, rate), 2),
    }


def normalise_loudness(audio: np.ndarray, rate: int, target_lufs: float, ceiling_db: float) -> np.ndarray:
    """Gain to the target with peaks held under the true-peak ceiling by a fast, high-ratio compressor
    (pedalboard's; its Limiter adds make-up gain, so it cannot serve as a plain ceiling), repeated so the loudness
    the compressor took is made up; a last plain gain keeps the ceiling a ceiling."""
    from pedalboard import Compressor

    squash = Compressor(threshold_db=ceiling_db - 4.0, ratio=20.0, attack_ms=0.3, release_ms=40.0)
    out = audio.astype(np.float32)
    for _ in range(4):
        measured = integrated_lufs(out, rate)
        if not math.isfinite(measured):
            return out  # digital silence: nothing to level
        if abs(measured - target_lufs) < 0.1 and true_peak_db(out, rate) <= ceiling_db:
            break
        out = (out * 10 ** ((target_lufs - measured) / 20)).astype(np.float32)
        if true_peak_db(out, rate) > ceiling_db:
            out = squash(out[np.newaxis, :], rate)[0].astype(np.float32)
    tp = true_peak_db(out, rate)
    if tp > ceiling_db:
        out = (out * 10 ** ((ceiling_db - tp) / 20)).astype(np.float32)
    return out


def trim_silence(audio: np.ndarray, rate: int, pad_s: float) -> tuple[np.ndarray, float]:
    """Cut leading and trailing silence down to `pad_s`; returns the audio and the seconds cut at the start."""
    frame = max(1, int(_FRAME_S * rate))
    n = len(audio) // frame
    if n == 0:
        return audio, 0.0
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1) + 1e-20)
    loud = np.flatnonzero(20 * np.log10(rms) > SILENCE_DB)
    if not len(loud):
        return audio, 0.0
    pad = int(pad_s * rate)
    start = max(0, loud[0] * frame - pad)
    end = min(len(audio), (loud[-1] + 1) * frame + pad)
    return audio[start:end], start / rate


def stretch(audio: np.ndarray, rate: int, factor: float) -> np.ndarray:
    """Time-stretch keeping pitch; factor > 1 makes it shorter (faster)."""
    from pedalboard import time_stretch

    return np.asarray(time_stretch(audio.astype(np.float32), rate, stretch_factor=factor)[0], dtype=np.float32)


def speed_for_slot(duration_s: float, target_s: float, speed: float, lo: float = 0.5, hi: float = 2.0) -> float:
    """The engine speed that should make a line of `duration_s` (spoken at `speed`) last `target_s`."""
    return min(hi, max(lo, speed * duration_s / target_s))


def needs_fit(duration_s: float, target_s: float) -> bool:
    return abs(duration_s / target_s - 1.0) > FIT_TOLERANCE


def master(audio: np.ndarray, rate: int, options: Options) -> Mastered:
    """Trim, fit (by stretching; the worker tries the engine's speed first), level; in that order, so the slot
    is filled by what is delivered and the loudness is that of the final audio."""
    out = Mastered(audio.astype(np.float32))
    if options.trim_pad_s is not None:
        out.audio, out.shift_s = trim_silence(out.audio, rate, options.trim_pad_s)
    if options.target_duration_s:
        _fit(out, rate, options.target_duration_s)
    if options.loudness_lufs is not None:
        out.audio = normalise_loudness(out.audio, rate, options.loudness_lufs, options.true_peak_db)
    out.loudness = measure(out.audio, rate)
    if options.loudness_lufs is not None and abs(out.loudness["integrated_lufs"] - options.loudness_lufs) > 0.5:
        out.warnings.append(
            f"loudness: reached {out.loudness['integrated_lufs']} LUFS for a {options.loudness_lufs} LUFS target; "
            f"the {options.true_peak_db} dBTP true-peak ceiling kept it quieter"
        )
    return out


def _fit(out: Mastered, rate: int, target_s: float) -> None:
    duration = len(out.audio) / rate
    if not needs_fit(duration, target_s):
        return
    factor = min(1 + MAX_STRETCH, max(1 - MAX_STRETCH, duration / target_s))
    out.audio = stretch(out.audio, rate, factor)
    out.scale = 1 / factor
    fitted = len(out.audio) / rate
    if needs_fit(fitted, target_s):
        out.warnings.append(
            f"target_duration_s: the line lasts {fitted:.2f} s for a {target_s:.2f} s slot "
            f"({(fitted / target_s - 1) * 100:+.0f} %): fitting it would take a stretch beyond {MAX_STRETCH:.0%}"
        )
