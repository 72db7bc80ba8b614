"""The spoken AI notice in a job's audio (shared/provenance/disclosure.py says when a job has one).

The notice is spoken once per take by the job's engine with the job's voice, seed and speed (never the speed a fit
to slot picks: it stays at the pace it is understood at), in the job's language. Post-production treats it apart
from the content: the content alone is trimmed and fitted to its slot (`target_duration_s` less the notice and the
pause), the notice is trimmed alike, and the two are joined NOTICE_PAUSE_S apart before the loudness of the whole
line is set. `master` returns a `Mastered` whose `map_time` maps the content's joined time onto the final line, so
segments, word timings and SSML marks of the content are placed exactly as without a notice; `words` adds the
notice's own words, and `result` says where it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.audio import mastering
from shared.audio.codecs import join_segments
from shared.provenance import disclosure
from shared.text.normalization import normalize_for_speech
from worker.alignment import word_timings
from worker.engines.base import Synthesis
from worker.evaluators.asr import Transcriber

# A slot shorter than this is not worth fitting the content into: below it, the content goes as short as the
# stretch limit allows and the fit's warning says so.
MIN_CONTENT_SLOT_S = 0.3


@dataclass(frozen=True)
class Notice:
    """The notice as spoken for one take."""

    position: str  # "start" or "end"
    text: str  # as in the subtitles
    language: str
    said: str  # as given to the engine (numbers and the like written out)
    spoken: Synthesis


def notice_for(options: dict[str, Any] | None, language: str) -> tuple[str, str, str, str] | None:
    """(position, text, language, text to speak) of the job's notice; None when it has none."""
    position = disclosure.position_of(options)
    if position == disclosure.DEFAULT:
        return None
    text, spoken_in = disclosure.notice(language)
    return position, text, spoken_in, normalize_for_speech(text, spoken_in)


def speak(asked: tuple[str, str, str, str], say: Callable[[str, str], Synthesis]) -> Notice:
    """The notice spoken by `say(text, language)` (the job's engine, voice, seed and speed)."""
    position, text, language, said = asked
    return Notice(position, text, language, said, say(said, language))


def length_s(notice: Notice, trim_pad_s: float | None) -> float:
    """How much of the line the notice takes, its pause included, once trimmed as the line is."""
    audio = _trimmed(notice, trim_pad_s)[0]
    return len(audio) / notice.spoken.sample_rate + disclosure.NOTICE_PAUSE_S


def content_slot(target_s: float, notice: Notice, trim_pad_s: float | None) -> float:
    """What a `target_duration_s` slot leaves for the content beside the notice."""
    return max(MIN_CONTENT_SLOT_S, target_s - length_s(notice, trim_pad_s))


def _trimmed(notice: Notice, trim_pad_s: float | None) -> tuple[np.ndarray, float]:
    audio = notice.spoken.audio.astype(np.float32)
    if trim_pad_s is None:
        return audio, 0.0
    return mastering.trim_silence(audio, notice.spoken.sample_rate, trim_pad_s)


@dataclass
class WithNotice(mastering.Mastered):
    """A line mastered with its notice: `map_time` maps the content's joined time onto the final line."""

    content: mastering.Mastered = field(default_factory=lambda: mastering.Mastered(np.zeros(0, np.float32)))
    content_start_s: float = 0.0
    content_length_s: float = 0.0
    notice: Notice | None = None
    notice_start_s: float = 0.0
    notice_shift_s: float = 0.0
    notice_length_s: float = 0.0
    slot_s: float | None = None  # what a `target_duration_s` slot left the content

    def map_time(self, t: float, duration_s: float) -> float:
        inner = min(max((t - self.content.shift_s) * self.content.scale, 0.0), self.content_length_s)
        return round(min(self.content_start_s + inner, duration_s), 3)

    def content_audio(self, rate: int) -> np.ndarray:
        start = int(round(self.content_start_s * rate))
        return self.audio[start : start + int(round(self.content_length_s * rate))]

    def notice_audio(self, rate: int) -> np.ndarray:
        start = int(round(self.notice_start_s * rate))
        return self.audio[start : start + int(round(self.notice_length_s * rate))]


def master(
    notice: Notice, content: np.ndarray, rate: int, options: mastering.Options, slot_s: float | None
) -> WithNotice:
    """Trim and fit the content to `slot_s` (what the slot leaves it), trim the notice alike, join them with the
    notice's pause, then set the loudness of the whole (the true-peak ceiling with it)."""
    fitted = mastering.master(content, rate, mastering.Options(trim_pad_s=options.trim_pad_s, target_duration_s=slot_s))
    audio, shift = _trimmed(notice, options.trim_pad_s)
    pieces = [audio, fitted.audio] if notice.position == "start" else [fitted.audio, audio]
    joined, starts = join_segments(pieces, rate, disclosure.NOTICE_PAUSE_S)
    level = mastering.master(
        joined, rate, mastering.Options(loudness_lufs=options.loudness_lufs, true_peak_db=options.true_peak_db)
    )
    notice_at, content_at = (starts[0], starts[1]) if notice.position == "start" else (starts[1], starts[0])
    warnings = [*fitted.warnings, *level.warnings]
    if fitted.warnings and slot_s is not None and options.target_duration_s is not None:  # the fit fell short
        warnings.append(
            f"disclosure: the spoken notice and its pause take {options.target_duration_s - slot_s:.2f} s of the "
            f"{options.target_duration_s:.2f} s slot; the text was fitted to the {slot_s:.2f} s left"
        )
    return WithNotice(
        audio=level.audio,
        loudness=level.loudness,
        warnings=warnings,
        content=fitted,
        content_start_s=content_at,
        content_length_s=len(fitted.audio) / rate,
        notice=notice,
        notice_start_s=notice_at,
        notice_shift_s=shift,
        notice_length_s=len(audio) / rate,
        slot_s=slot_s,
    )


def content_words(
    transcriber: Callable[[], Transcriber], mastered: mastering.Mastered, rate: int, script: str, language: str
) -> list[dict[str, Any]]:
    """Word timings of the script by forced alignment: over the content alone when the line has a notice."""
    if not isinstance(mastered, WithNotice):
        return word_timings(transcriber(), mastered.audio, rate, script, language)
    words = word_timings(transcriber(), mastered.content_audio(rate), rate, script, language)
    return [_moved(word, mastered.content_start_s) for word in words]


def with_notice_words(
    words: list[dict[str, Any]], transcriber: Callable[[], Transcriber], mastered: mastering.Mastered, rate: int
) -> list[dict[str, Any]]:
    """The line's words with the notice's (each marked `"disclosure": true`) before or after them: the engine's
    own timings of the notice when it gave them and they are the notice's words, else a forced alignment."""
    if not isinstance(mastered, WithNotice) or mastered.notice is None:
        return words
    notice = mastered.notice
    own = _engine_words(notice)
    if own is not None:
        spoken = [
            {
                "text": w["text"],
                "start_s": w["start_s"] - mastered.notice_shift_s,
                "end_s": w["end_s"] - mastered.notice_shift_s,
            }
            for w in own
        ]
    else:
        spoken = word_timings(transcriber(), mastered.notice_audio(rate), rate, notice.text, notice.language)
    end = round(mastered.notice_start_s + mastered.notice_length_s, 3)
    marked = [
        {**_clipped(_moved(w, mastered.notice_start_s), mastered.notice_start_s, end), "disclosure": True}
        for w in spoken
    ]
    return marked + words if notice.position == "start" else words + marked


def _engine_words(notice: Notice) -> list[dict[str, Any]] | None:
    from worker.alignment import script_words

    own = notice.spoken.words
    if own is None or [w["text"] for w in own] != [text for text, _b, _e in script_words(notice.text)]:
        return None  # the engine spoke a normalised text whose words are not the notice's as written
    return own


def _moved(word: dict[str, Any], offset_s: float) -> dict[str, Any]:
    return word | {"start_s": round(word["start_s"] + offset_s, 3), "end_s": round(word["end_s"] + offset_s, 3)}


def _clipped(word: dict[str, Any], low: float, high: float) -> dict[str, Any]:
    start = min(max(word["start_s"], low), high)
    return word | {"start_s": start, "end_s": min(max(word["end_s"], start), high)}


def result(mastered: mastering.Mastered) -> dict[str, Any] | None:
    """`result.disclosure`: where the notice is in the line and what it says; None without one."""
    if not isinstance(mastered, WithNotice) or mastered.notice is None:
        return None
    notice = mastered.notice
    return {
        "position": notice.position,
        "text": notice.text,
        "language": notice.language,
        "start_s": round(mastered.notice_start_s, 3),
        "end_s": round(mastered.notice_start_s + mastered.notice_length_s, 3),
    } | ({"slot_s": round(mastered.slot_s, 3)} if mastered.slot_s is not None else {})


def normalized_text(said: str, mastered: mastering.Mastered, language: str) -> str:
    """What was spoken, the notice included (the QA gate checks the take against it)."""
    if not isinstance(mastered, WithNotice) or mastered.notice is None:
        return said
    sep = " " if language == "en" or mastered.notice.language == "en" else ""
    parts = [mastered.notice.said, said] if mastered.notice.position == "start" else [said, mastered.notice.said]
    return sep.join(parts)
