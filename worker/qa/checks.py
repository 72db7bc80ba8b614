"""The QA gate's checks, as plain functions over one take's audio: what it says, whose voice, and its signal.

- text: Whisper (worker/evaluators/asr.py) transcribes the take; CER (zh, ja) or WER (en) against the normalised input.
  Both sides go through the farm's text normaliser (Whisper writes "15" where the engine said "fifteen"), then
  are NFKC-folded, lowercased and stripped of punctuation (jiwer computes the edit distances);
- voice: GE2E speaker similarity (worker/evaluators/similarity.py) to a cloned voice's reference clip;
- signal: clipped samples, the longest silence inside the speech, a tail still loud where the take ends (speech
  cut off), and a speech duration out of proportion to the text at the job's speed.
Each check reports its value, its threshold and whether it passed; a take passes when every check does.
"""

from __future__ import annotations

import io
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from shared.text.normalization import normalize_for_speech

FRAME_S = 0.02
# A frame is speech when within this many dB of the take's speech level and above the floor.
SPEECH_RANGE_DB = 35.0
FLOOR_DBFS = -55.0
TAIL_S = 0.04
CLIP_LEVEL = 0.999
# Speaking rates at speed 1.0, in the units the error rate counts, from first to last speech frame: kokoro's
# voices measured 4.4 chars/s (zh), 6.2 chars/s (ja) and 4.0 words/s (en) on tests/worker/test_qa.py's lines.
RATES = {"zh": 4.5, "ja": 6.3, "en": 3.9}
DEFAULT_RATE = 4.0
_NOT_WORD = re.compile(r"[^\w\s']|_", re.UNICODE)


class Transcribes(Protocol):
    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str | None = None) -> tuple[str, str]: ...


class Embeds(Protocol):
    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float
    passed: bool
    # "max": the value may not exceed the threshold; "min": it may not fall below it.
    bound: str = "max"

    def to_dict(self) -> dict[str, Any]:
        value = None if self.value is None else round(float(self.value), 4)
        return {"value": value, "threshold": self.threshold, "bound": self.bound, "pass": self.passed}


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    transcript: str | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def score(self) -> tuple[int, float]:
        """Lower is better: failed checks first, then the error rate; picks the best of several failing takes."""
        rate = next((c.value for c in self.checks if c.name in ("cer", "wer") and c.value is not None), 1.0)
        return sum(not c.passed for c in self.checks), float(rate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": {c.name: c.to_dict() for c in self.checks},
            "transcript": self.transcript,
        }


def _at_most(name: str, value: float, threshold: float) -> Check:
    return Check(name, value, float(threshold), bool(value <= threshold), "max")


def _at_least(name: str, value: float, threshold: float) -> Check:
    return Check(name, value, float(threshold), bool(value >= threshold), "min")


# -- signal -----------------------------------------------------------------------------------------------------
def frame_db(audio: np.ndarray, rate: int) -> np.ndarray:
    """RMS level of each 20 ms frame in dBFS."""
    n = max(1, int(rate * FRAME_S))
    frames = len(audio) // n
    if frames == 0:
        return np.array([-120.0])
    blocks = np.asarray(audio[: frames * n], dtype=np.float64).reshape(frames, n)
    rms = np.sqrt(np.mean(blocks**2, axis=1))
    return np.asarray(20 * np.log10(np.maximum(rms, 1e-6)))


def speech_level_db(levels: np.ndarray) -> float:
    """The level speech sits at: the 90th percentile frame (robust to a few loud plosives)."""
    return float(np.percentile(levels, 90))


def speech_mask(levels: np.ndarray) -> np.ndarray:
    level = speech_level_db(levels)
    return np.asarray((levels > level - SPEECH_RANGE_DB) & (levels > FLOOR_DBFS))


def clipped_fraction(audio: np.ndarray) -> float:
    if len(audio) == 0:
        return 0.0
    return float(np.mean(np.abs(audio) >= CLIP_LEVEL))


def speech_span_s(audio: np.ndarray, rate: int) -> float:
    """From the first speech frame to the last, in seconds (0 for a take with no speech)."""
    mask = speech_mask(frame_db(audio, rate))
    idx = np.flatnonzero(mask)
    return 0.0 if len(idx) == 0 else float((idx[-1] - idx[0] + 1) * FRAME_S)


def inner_silence_s(audio: np.ndarray, rate: int) -> float:
    """The longest run of non-speech frames between the first and the last speech frame."""
    mask = speech_mask(frame_db(audio, rate))
    idx = np.flatnonzero(mask)
    if len(idx) < 2:
        return 0.0
    gaps = np.diff(idx) - 1
    return float(gaps.max() * FRAME_S)


def tail_db(audio: np.ndarray, rate: int) -> float:
    """The last 40 ms against the speech level, in dB: about -40 or lower where speech ended, near 0 where the
    take was cut off mid-sound."""
    levels = frame_db(audio, rate)
    tail = np.asarray(audio[-max(1, int(rate * TAIL_S)) :], dtype=np.float64)
    tail_level = 20 * np.log10(max(float(np.sqrt(np.mean(tail**2))), 1e-6))
    return float(tail_level - speech_level_db(levels))


def text_units(text: str, language: str) -> list[str]:
    """Words (en) or characters (zh, ja), NFKC-folded, lowercased, without punctuation."""
    text = _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).replace("'", "")
    if language == "en":
        return text.split()
    return [ch for ch in text if not ch.isspace()]


def duration_ratio(speech_s: float, text: str, language: str, speed: float) -> float:
    """Measured speech duration over what the text should take at `speed`."""
    expected = len(text_units(text, language)) / (RATES.get(language, DEFAULT_RATE) * max(speed, 1e-3))
    return speech_s / max(expected, 0.2)


# -- text -------------------------------------------------------------------------------------------------------
def error_rate(reference: str, hypothesis: str, language: str) -> float:
    """CER for zh/ja, WER for en, over `text_units` of both sides, each written out as it is spoken (numbers,
    units, dates as words); an empty hypothesis scores 1."""
    import jiwer

    ref = text_units(normalize_for_speech(reference, language), language)
    hyp = text_units(normalize_for_speech(hypothesis, language), language)
    if not ref:
        return 0.0 if not hyp else 1.0
    if not hyp:
        return 1.0
    if language == "en":
        return float(jiwer.wer(" ".join(ref), " ".join(hyp)))
    return float(jiwer.cer("".join(ref), "".join(hyp)))


# -- the gate ---------------------------------------------------------------------------------------------------
def evaluate(
    audio: np.ndarray,
    rate: int,
    *,
    text: str,
    language: str,
    speed: float,
    limits: dict[str, Any],
    transcriber: Transcribes | None,
    encoder: Embeds | None = None,
    reference: tuple[np.ndarray, int] | None = None,
) -> Report:
    """Every check of one take; `reference` (a cloned voice's clip) adds the similarity check."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    report = Report()
    checks = report.checks
    checks.append(_at_most("clipped", clipped_fraction(audio), limits["max_clipped"]))
    checks.append(_at_most("inner_silence_s", inner_silence_s(audio, rate), limits["max_inner_silence_s"]))
    checks.append(_at_most("tail_db", tail_db(audio, rate), limits["max_tail_db"]))
    ratio = duration_ratio(speech_span_s(audio, rate), text, language, speed)
    checks.append(_at_least("duration_ratio_min", ratio, limits["min_duration_ratio"]))
    checks.append(_at_most("duration_ratio_max", ratio, limits["max_duration_ratio"]))
    if transcriber is not None:
        heard = transcriber.transcribe(audio, rate, language)[0] if speech_span_s(audio, rate) > 0 else ""
        report.transcript = heard
        name, limit = ("wer", limits["max_wer"]) if language == "en" else ("cer", limits["max_cer"])
        checks.append(_at_most(name, error_rate(text, heard, language), limit))
    if encoder is not None and reference is not None:
        from worker.evaluators.similarity import SpeakerEncoder

        try:
            value: float | None = SpeakerEncoder.similarity(encoder.embed(audio, rate), encoder.embed(*reference))
        except ValueError:  # too short or silent to embed: no voice to compare, which fails the check
            value = None
        limit = float(limits["min_similarity"])
        checks.append(Check("similarity", value, limit, value is not None and value >= limit, "min"))
    return report


# -- audio in and test defects ------------------------------------------------------------------------------------
def decode(data: bytes, fmt: str, sample_rate: int, channels: int = 1) -> tuple[np.ndarray, int]:
    """A stored take as mono float32 and its rate: raw pcm by its recorded rate, anything else through FFmpeg."""
    if fmt == "pcm":
        frames = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
        return frames.reshape(-1, channels).mean(axis=1), sample_rate
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        rate = int(stream.rate or sample_rate)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [
            out.to_ndarray().reshape(-1) for frame in container.decode(stream) for out in resampler.resample(frame)
        ]
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)).astype(np.float32), rate


DEFECTS = ("truncate", "silence", "clip", "gap")


def inject(audio: np.ndarray, rate: int, defect: str) -> np.ndarray:
    """A take with a known defect, for tests and the test-only switch: cut off at 55 %, silenced, driven into
    clipping, or with 3 s of silence put in its middle."""
    audio = np.asarray(audio, dtype=np.float32)
    if defect == "truncate":
        return audio[: int(len(audio) * 0.55)].copy()
    if defect == "silence":
        return np.zeros_like(audio)
    if defect == "clip":
        return np.clip(audio * 20.0, -1.0, 1.0)
    if defect == "gap":
        mid = len(audio) // 2
        return np.concatenate([audio[:mid], np.zeros(int(rate * 3.0), np.float32), audio[mid:]])
    raise ValueError(f"unknown defect {defect!r}; one of {', '.join(DEFECTS)}")
