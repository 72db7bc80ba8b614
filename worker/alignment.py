"""Word timings for a line: forced alignment of the script onto Whisper's word timestamps.

Whisper (faster-whisper, the model that ships in a package) transcribes the audio with word times, prompted with
the script; the recognised characters are matched to the script's with difflib, and every script word takes the
times of its matched characters. Words with no match (a number read out as words, a name misheard) get times
interpolated between their neighbours. Words are split at spaces for Latin text and per character for Chinese
and Japanese; each word's `text` is exactly the script's, so subtitles and `result.words` follow the script.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from worker.evaluators.asr import Transcriber

# A word: one CJK character (kana and ideographs), or a run of other letters, digits and apostrophes; a run stops
# at a CJK character, so "25個" is "25" and "個".
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+(?:['’][^\W_{_CJK}]+)*", re.UNICODE)


def _key(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def script_words(script: str) -> list[tuple[str, int, int]]:
    """The script's words as (text, start offset, end offset)."""
    return [(m.group(0), m.start(), m.end()) for m in _WORD.finditer(script)]


def align(script: str, recognised: list[tuple[str, float, float]], duration_s: float) -> list[dict[str, Any]]:
    """Map recognised (word, start, end) onto the script's words."""
    words = script_words(script)
    if not words:
        return []
    script_chars: list[int] = []  # for each script key character, the index of its word
    script_seq = []
    for i, (text, _b, _e) in enumerate(words):
        for ch in _key(text):
            script_chars.append(i)
            script_seq.append(ch)
    rec_seq: list[str] = []
    rec_times: list[tuple[float, float]] = []
    for text, start, end in recognised:
        key = _key(text)
        for k, ch in enumerate(key):
            rec_seq.append(ch)
            span = (end - start) / len(key)
            rec_times.append((start + span * k, start + span * (k + 1)))
    starts: list[float | None] = [None] * len(words)
    ends: list[float | None] = [None] * len(words)
    matcher = difflib.SequenceMatcher(None, script_seq, rec_seq, autojunk=False)
    for block in matcher.get_matching_blocks():
        for n in range(block.size):
            word = script_chars[block.a + n]
            t0, t1 = rec_times[block.b + n]
            starts[word] = t0 if starts[word] is None else min(starts[word], t0)  # type: ignore[type-var]
            ends[word] = t1 if ends[word] is None else max(ends[word], t1)  # type: ignore[type-var]
    _interpolate(starts, ends, duration_s)
    return [
        {"text": text, "start_s": round(float(s), 3), "end_s": round(float(e), 3)}  # type: ignore[arg-type]
        for (text, _b, _e), s, e in zip(words, starts, ends, strict=True)
    ]


def _interpolate(starts: list[float | None], ends: list[float | None], duration_s: float) -> None:
    """Give unmatched words the time between their matched neighbours, shared out evenly; keep times ordered."""
    n = len(starts)
    i = 0
    while i < n:
        if starts[i] is not None:
            i += 1
            continue
        j = i
        while j < n and starts[j] is None:
            j += 1
        left = ends[i - 1] if i > 0 else 0.0
        right = starts[j] if j < n else duration_s
        assert left is not None and right is not None
        right = max(right, left)
        step = (right - left) / (j - i)
        for k in range(i, j):
            starts[k], ends[k] = left + step * (k - i), left + step * (k - i + 1)
        i = j
    for k in range(1, n):  # recognition can overlap neighbours; keep the script's order
        if starts[k] < ends[k - 1]:  # type: ignore[operator]
            starts[k] = ends[k - 1]
        if ends[k] < starts[k]:  # type: ignore[operator]
            ends[k] = starts[k]


def word_timings(
    transcriber: Transcriber, audio: np.ndarray, sample_rate: int, script: str, language: str
) -> list[dict[str, Any]]:
    recognised = transcriber.words(audio, sample_rate, language, prompt=script[:400])
    return align(script, recognised, len(audio) / sample_rate)


def joined_words(
    script: str,
    segments: list[list[dict[str, Any]] | None],
    starts: list[float],
    map_time: Callable[[float], float],
) -> list[dict[str, Any]] | None:
    """Word timings from the engine: each segment's words placed at the segment's start in the joined line and
    mapped through post-production (`map_time`). None unless every segment has them and, together, they are the
    script's words in order (text normalisation that rewrote the script cannot be mapped back)."""
    if not segments or any(words is None for words in segments):
        return None
    out = []
    for words, start in zip(segments, starts, strict=True):
        for word in words or ():
            out.append(
                {
                    "text": word["text"],
                    "start_s": map_time(start + word["start_s"]),
                    "end_s": map_time(start + word["end_s"]),
                }
            )
    if [word["text"] for word in out] != [text for text, _b, _e in script_words(script)]:
        return None
    return out
