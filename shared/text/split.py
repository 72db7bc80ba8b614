"""Sentence-aware splitting of long text into segments an engine can speak in one call.

Segments end at sentence boundaries where possible (。！？ for zh/ja, . ! ? for en), then at clause marks
(，、；： and , ; :), then at spaces, and only as a last resort mid-word; none is longer than the cap.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[。！？!?…])|(?<=[.;；])(?=\s)|\n+")
_CLAUSE_END = re.compile(r"(?<=[，、；：,;:])")


def normalize_text(text: str) -> str:
    """Collapse runs of whitespace; keep newlines as sentence breaks."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def split_text(text: str, max_chars: int) -> list[str]:
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
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


def _join(left: str, right: str) -> str:
    # CJK text has no spaces between sentences; Latin text needs one.
    if left and ord(left[-1]) < 0x2E80 and ord(right[0]) < 0x2E80:
        return f"{left} {right}"
    return left + right
