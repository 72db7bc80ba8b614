"""Sentence-aware splitting of long text into segments an engine can speak in one call.

Segments end at sentence boundaries where possible (。！？ for zh/ja, . ! ? for en), then at clause marks
(，、；： and , ; :), then at spaces, and only as a last resort mid-word; none is longer than the cap.

A job that streams (`POST /v1/audio/speech` sets `options["split"] = "growing"`, `GROWING`) is split so that its
first audio comes soon: the first segment is the first sentence alone, or, when that sentence is longer than
`STREAM_FIRST_CHARS`, as many of its leading clauses as fit (split at spaces when one clause is longer still);
each next segment packs sentences up to twice the previous segment's length (at least `STREAM_FIRST_CHARS`, at
most the engine's cap), and a sentence longer than that is split at its clauses. Each segment is spoken while
the one before it plays, so doubling keeps ahead of the listener for an engine faster than half real time. Every
other job keeps `split_text`'s packing (the dedup cache holds its audio).
"""

from __future__ import annotations

import re
from typing import Any

# The job option that asks for the streaming split, and its value.
SPLIT_OPTION, GROWING = "split", "growing"
STREAM_FIRST_CHARS = 80  # the first segment of a streamed job: a sentence up to this long is spoken alone
STREAM_GROWTH = 2  # each next segment of a streamed job at most this many times the previous one's length
_SENTENCE_END = re.compile(r"(?<=[。！？!?…])|(?<=[.;；])(?=\s)|\n+")
_CLAUSE_END = re.compile(r"(?<=[，、；：,;:])")


def normalize_text(text: str) -> str:
    """Collapse runs of whitespace; keep newlines as sentence breaks."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def is_growing(options: dict[str, Any] | None) -> bool:
    """Whether a job's options ask for the streaming split."""
    return (options or {}).get(SPLIT_OPTION) == GROWING


def split_text(text: str, max_chars: int, *, growing: bool = False, previous: int = 0) -> list[str]:
    """The segments of `text`; `growing` for a streamed job (see the module's docstring), whose text continues
    after a segment of `previous` characters (0: the job's first segment is among these)."""
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    if growing:
        return _grow(_split(normalize_text(text), _SENTENCE_END), max_chars, previous)
    pieces: list[str] = []
    for sentence in _split(normalize_text(text), _SENTENCE_END):
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        for clause in _split(sentence, _CLAUSE_END):
            pieces.extend(_split_long(clause, max_chars))
    return _pack(pieces, max_chars)


def _split(text: str, pattern: re.Pattern[str]) -> list[str]:
    return [part.strip() for part in pattern.split(text) if part and part.strip()]


def _split_long(text: str, max_chars: int) -> list[str]:
    out: list[str] = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars
        out.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        out.append(text)
    return out


def _pack(pieces: list[str], max_chars: int) -> list[str]:
    """Merge consecutive pieces into segments up to the cap, so short sentences don't each cost a model call."""
    segments: list[str] = []
    for piece in pieces:
        if segments:
            joined = _join(segments[-1], piece)
            if len(joined) <= max_chars:
                segments[-1] = joined
                continue
        segments.append(piece)
    return segments


def _grow(sentences: list[str], max_chars: int, previous: int) -> list[str]:
    """Segments that start short and grow: see the module's docstring."""
    floor = min(STREAM_FIRST_CHARS, max_chars)
    cap = _next_cap(previous, floor, max_chars) if previous > 0 else floor
    segments: list[str] = []
    current = ""
    for sentence in sentences:
        parts = [sentence]  # what is left of this sentence, in order: whole, or its clauses, or their words
        while parts:
            part = parts.pop(0)
            if current:
                joined = _join(current, part)
                if len(joined) <= cap:
                    current = joined
                    continue
                segments.append(current)
                cap, current = _next_cap(len(current), floor, max_chars), ""
            if len(part) <= cap:
                current = part
                continue
            first = not segments and previous <= 0
            finer = _finer(part, cap, max_chars, first)
            if len(finer) == 1:  # a clause longer than the cap, within the engine's: spoken whole
                current = finer[0]
                continue
            parts[:0] = finer
        if current and not segments and previous <= 0:
            segments.append(current)  # the first segment ends with the first sentence
            cap, current = _next_cap(len(current), floor, max_chars), ""
    if current:
        segments.append(current)
    return segments


def _next_cap(previous: int, floor: int, max_chars: int) -> int:
    return min(max_chars, max(floor, STREAM_GROWTH * previous))


def _finer(part: str, cap: int, max_chars: int, first: bool) -> list[str]:
    """A part too long for the cap, in smaller parts: its clauses; else, when it opens the job (`first`) or is
    longer than the engine takes, its head up to the cap (at a space when there is one) and the rest, which the
    next cap places; else the part whole."""
    clauses = _split(part, _CLAUSE_END)
    if len(clauses) > 1:
        return clauses
    if not first and len(part) <= max_chars:
        return [part]
    head = _split_long(part, cap)[0]
    return [head, part[len(head) :].strip()]


def _join(left: str, right: str) -> str:
    # CJK text has no spaces between sentences; Latin text needs one.
    if left and ord(left[-1]) < 0x2E80 and ord(right[0]) < 0x2E80:
        return f"{left} {right}"
    return left + right
