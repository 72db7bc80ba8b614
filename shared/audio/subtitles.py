"""Subtitles that follow the script: cue text is always the text that was asked for (never recognised text),
split at sentence and then clause boundaries to a readable length, timed by word timings when the job has them
(`result.words`) and by the segments' times otherwise. SRT and WebVTT are written by pysubs2.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

# Readable lengths: characters per line, and lines per cue.
LATIN_LINE, CJK_LINE, LINES = 42, 16, 2
_SENTENCE_END = "。！？!?…"
_CLAUSE_END = "，、；：,;:"
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    lines: tuple[str, ...]


def is_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def _width_limit(text: str) -> int:
    return CJK_LINE if is_cjk(text) else LATIN_LINE


def _piece_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the script cut after sentence ends, then clause ends; spaces stay with the piece
    before them, so the spans tile the text."""
    spans: list[tuple[int, int]] = []
    start = 0
    for i, ch in enumerate(text):
        ends_sentence = ch in _SENTENCE_END or (ch == "." and (i + 1 == len(text) or text[i + 1].isspace()))
        if ends_sentence or ch in _CLAUSE_END:
            j = i + 1
            while j < len(text) and text[j].isspace():
                j += 1
            spans.append((start, j))
            start = j
    if start < len(text):
        spans.append((start, len(text)))
    return [(b, e) for b, e in spans if text[b:e].strip()]


def _wrap(piece: str, width: int) -> list[str]:
    """Break text into lines of at most `width` characters, at spaces for Latin text."""
    piece = " ".join(piece.split()) if not is_cjk(piece) else piece.strip()
    if len(piece) <= width:
        return [piece] if piece else []
    if is_cjk(piece):
        return [piece[i : i + width] for i in range(0, len(piece), width)]
    lines, line = [], ""
    for word in piece.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines


def _ends_sentence(piece: str) -> bool:
    stripped = piece.rstrip()
    return bool(stripped) and (stripped[-1] in _SENTENCE_END or stripped[-1] == ".")


def _after_lines(text: str, begin: int, lines: list[str]) -> int:
    """The offset in `text` just after `lines`, which wrap text[begin:]."""
    if is_cjk("".join(lines)):
        pos, need = begin, sum(len(line) for line in lines)
        while pos < len(text) and text[pos].isspace():
            pos += 1
        return pos + need
    pos, words = begin, sum(len(line.split()) for line in lines)
    for _ in range(words):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        while pos < len(text) and not text[pos].isspace():
            pos += 1
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def chunk(text: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """The script as cues: (start offset, end offset, lines), at most LINES lines of readable length each. Cues
    break at sentence ends first, then at clause ends, and only then inside a clause."""
    width = _width_limit(text)
    spans: list[tuple[int, int]] = []
    begin: int | None = None
    end = 0
    for piece_begin, piece_end in _piece_spans(text):
        if begin is not None:
            if len(_wrap(text[begin:piece_end], width)) <= LINES and not _ends_sentence(text[begin:end]):
                end = piece_end
                continue
            spans.append((begin, end))
        begin, end = piece_begin, piece_end
        lines = _wrap(text[begin:end], width)
        while len(lines) > LINES:  # a clause too long for one cue: cut it at line breaks
            cut = _after_lines(text, begin, lines[:LINES])
            spans.append((begin, cut))
            begin = cut
            lines = _wrap(text[begin:end], width)
    if begin is not None:
        spans.append((begin, end))
    return [(b, e, tuple(_wrap(text[b:e], width))) for b, e in spans]


def char_times(text: str, segments: list[dict[str, Any]], words: list[dict[str, Any]] | None) -> list[float]:
    """A time for every character offset of `text` (len(text) + 1 entries): from word timings when given, else
    spread over each segment's span by character count."""
    times: list[float | None] = [None] * (len(text) + 1)
    spans = words if words else segments
    cursor = 0
    for span in spans:
        piece = str(span["text"]).strip()
        if not piece:
            continue
        begin = text.find(piece, cursor)
        if begin < 0:
            continue
        end = begin + len(piece)
        start_s, end_s = float(span["start_s"]), float(span["end_s"])
        for k in range(begin, end + 1):
            times[k] = start_s + (end_s - start_s) * (k - begin) / max(1, end - begin)
        cursor = end
    return _fill(times)


def _fill(times: list[float | None]) -> list[float]:
    """Interpolate the offsets no span covered (the spaces and punctuation between spans) from their neighbours."""
    known = [(i, t) for i, t in enumerate(times) if t is not None]
    if not known:
        return [0.0] * len(times)
    out: list[float] = []
    k = 0  # known[k] is the first known offset at or after i
    for i, t in enumerate(times):
        while k < len(known) and known[k][0] < i:
            k += 1
        if t is not None:
            out.append(t)
        elif k == 0:
            out.append(known[0][1])
        elif k == len(known):
            out.append(known[-1][1])
        else:
            (i0, t0), (i1, t1) = known[k - 1], known[k]
            out.append(t0 + (t1 - t0) * (i - i0) / (i1 - i0))
    return out


def cues(text: str, segments: list[dict[str, Any]], words: list[dict[str, Any]] | None = None) -> list[Cue]:
    times = char_times(text, segments, words)
    out = []
    for begin, end, lines in chunk(text):
        # Skip the spaces the cue ends on, so its end is the last spoken character's.
        last = end
        while last > begin and text[last - 1].isspace():
            last -= 1
        out.append(Cue(round(times[begin], 3), round(max(times[last], times[begin] + 0.05), 3), lines))
    return out


def for_result(text: str, result: dict[str, Any]) -> list[Cue]:
    """The cues of a finished job's script, from its word timings, else its segments, else its whole duration;
    a spoken AI notice (`result.disclosure`, shared/provenance/disclosure.py) is a cue of its own before or after
    them."""
    segments = result.get("segments") or [{"text": text, "start_s": 0.0, "end_s": result.get("duration_s", 0.0)}]
    words = [w for w in result.get("words") or () if not w.get("disclosure")] or None
    script = cues(text, segments, words)
    notice = result.get("disclosure")
    if not notice:
        return script
    wrapped = _wrap(str(notice["text"]), _width_limit(str(notice["text"])))
    if len(wrapped) > 1 and not any(ch.isalnum() for ch in wrapped[-1]):  # no line of punctuation alone
        wrapped[-2:] = [wrapped[-2] + wrapped[-1]]
    lines = tuple(wrapped)
    cue = Cue(round(float(notice["start_s"]), 3), round(float(notice["end_s"]), 3), lines)
    return [cue, *script] if notice.get("position") == "start" else [*script, cue]


def shifted(cue_list: list[Cue], offset_s: float) -> list[Cue]:
    """The cues moved later by `offset_s` (a line placed after others in a whole-batch file)."""
    return [Cue(round(c.start_s + offset_s, 3), round(c.end_s + offset_s, 3), c.lines) for c in cue_list]


def render(cue_list: list[Cue], fmt: str) -> str:
    """SRT or WebVTT text of the cues."""
    import pysubs2

    subs = pysubs2.SSAFile()
    for cue in cue_list:
        subs.append(
            pysubs2.SSAEvent(start=int(cue.start_s * 1000), end=int(cue.end_s * 1000), text=r"\N".join(cue.lines))
        )
    return str(subs.to_string("srt" if fmt == "srt" else "vtt"))


def script_of(cue_list: list[Cue]) -> str:
    """The cues' text joined back (for checks: it must equal the script, whitespace aside)."""
    parts = [" ".join(c.lines) if not is_cjk("".join(c.lines)) else "".join(c.lines) for c in cue_list]
    return unicodedata.normalize("NFC", " ".join(parts))
