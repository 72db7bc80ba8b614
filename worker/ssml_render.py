"""Speaking an SSML job (`text_format: "ssml"`, shared/text/ssml/).

The API checked the document at submit and stored it in the job's options (`options["ssml"]`) beside the plain
text it speaks (the job's `text`); the worker reads it again into pieces. Each piece's text is split into segments
as a plain job's text is (shared/text/split.py), normalised in the piece's language and spoken with the piece's
voice, language, speed (the job's speed times the piece's rate, held within the engine's range) and lexicon (the
job's snapshot plus the piece's `<phoneme>` entries, which win). A piece's gain is applied to its audio. Segments
are joined with the farm's pause (SEGMENT_PAUSE_S) except where breaks stand between them: then the silence is
exactly the breaks' length. Marks are timed on the joined audio: at the start of the piece or break they point
at, or inside a segment by the engine's word times (by characters where there are none), then mapped through
post-production like every other time in the result. A streamed job (`POST /v1/audio/speech`) splits with the
growing split (shared/text/split.py), its first unit short and each next one up to twice the one before it, across
pieces; its units fade in and out where silence meets them (shared/audio/codecs.py `fade_edges`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.audio.codecs import fade_edges
from shared.audio.streaming import SEGMENT_PAUSE_S
from shared.text import lexicon
from shared.text.normalization import normalize_for_speech
from shared.text.split import is_growing, split_text
from shared.text.ssml import Break, Speech, SsmlDocument, parse_ssml
from worker.alignment import script_words
from worker.takes import Take

if TYPE_CHECKING:
    from shared.jobs.state import Attempt
    from worker.context import WorkerContext
    from worker.engines.base import Synthesis, VoiceProfile

# A gain that would push a piece past this peak is held down to it.
PEAK = 0.99


def is_ssml(options: dict[str, Any] | None) -> bool:
    return (options or {}).get("text_format") == "ssml"


@dataclass(frozen=True)
class Unit:
    """One segment: `text` is a span of its piece's text (so of the job's plain text), `said` what is spoken."""

    text: str
    said: str
    piece: int
    start: int  # offset of `text` in the piece's text
    speech: Speech


@dataclass
class Plan:
    document: SsmlDocument
    units: list[Unit]
    gaps: list[float]  # seconds of silence before each unit (the first: leading breaks)
    tail: float  # seconds of silence after the last unit (trailing breaks)
    # Each piece's place (and the end's, at index len(pieces)): (unit u, seconds s) is s seconds after unit u-1
    # ends (after the start for u = 0), within the silence before unit u.
    anchors: list[tuple[int, float]] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [unit.text for unit in self.units]

    @property
    def said(self) -> list[str]:
        return [unit.said for unit in self.units]

    def join(self, audios: list[np.ndarray], rate: int) -> tuple[np.ndarray, list[float]]:
        """The units' audio with their silences; and each unit's start in seconds."""
        parts: list[np.ndarray] = []
        starts: list[float] = []
        cursor = 0
        for gap, audio in zip(self.gaps, audios, strict=True):
            silence = _zeros(gap, rate)
            parts += [silence, audio.astype(np.float32, copy=False)]
            cursor += len(silence)
            starts.append(cursor / rate)
            cursor += len(audio)
        parts.append(_zeros(self.tail, rate))
        return np.concatenate(parts), starts

    def stream_groups(self, rate: int) -> list[int]:
        """For each unit, the streamed segment it goes out in. A stream puts SEGMENT_PAUSE_S between segments
        (shared/audio/streaming.py), so a unit after a shorter silence goes out with the unit before it."""
        pause = len(_zeros(SEGMENT_PAUSE_S, rate))
        groups, group = [], -1
        for i, gap in enumerate(self.gaps):
            if i == 0 or len(_zeros(gap, rate)) >= pause:
                group += 1
            groups.append(group)
        return groups

    def mark_times(
        self, audios: list[np.ndarray], words: list[list[dict[str, Any]] | None], starts: list[float], rate: int
    ) -> list[tuple[str, float]]:
        """Each mark's time in the joined audio (before post-production)."""
        ends = [start + len(audio) / rate for start, audio in zip(starts, audios, strict=True)]
        out = []
        for mark in self.document.marks:
            piece = self.document.pieces[mark.piece] if mark.piece < len(self.document.pieces) else None
            if isinstance(piece, Speech) and mark.offset > 0:
                out.append((mark.name, self._inside(mark.piece, mark.offset, audios, words, starts, rate)))
                continue
            unit, seconds = self.anchors[mark.piece]
            out.append((mark.name, (ends[unit - 1] if unit else 0.0) + seconds))
        return out

    def _inside(
        self,
        piece: int,
        offset: int,
        audios: list[np.ndarray],
        words: list[list[dict[str, Any]] | None],
        starts: list[float],
        rate: int,
    ) -> float:
        """The time of character `offset` of a piece: the start of the word there, by the engine's word times
        when the segment was spoken as written, else by its share of the segment's characters."""
        units = [i for i, unit in enumerate(self.units) if unit.piece == piece]
        for i in units:
            unit = self.units[i]
            within = offset - unit.start
            if within >= len(unit.text):
                continue
            if within <= 0:
                return starts[i]
            duration = len(audios[i]) / rate
            spoken = words[i]
            script = script_words(unit.text)
            if spoken is not None and unit.said == unit.text and len(spoken) == len(script):
                following = [w for w, (_t, begin, _e) in zip(spoken, script, strict=True) if begin >= within]
                return starts[i] + (float(following[0]["start_s"]) if following else duration)
            return starts[i] + duration * within / len(unit.text)
        last = units[-1]
        return starts[last] + len(audios[last]) / rate


def _zeros(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(int(round(seconds * rate)), dtype=np.float32)


def _spans(text: str, segments: list[str]) -> list[tuple[int, int]]:
    """Where each segment split_text made of `text` lies in it (it changes only whitespace)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for segment in segments:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        begin = pos
        for ch in segment:
            if ch.isspace():
                continue
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos < len(text) and text[pos] == ch:
                pos += 1
        spans.append((begin, pos))
    return spans


def plan_for(document: SsmlDocument, options: dict[str, Any] | None, max_chars: int) -> Plan:
    """Split a read document into units and the silences around them."""
    keep = [str(item["term"]) for item in (options or {}).get("lexicon") or () if item.get("term")]
    growing = is_growing(options)  # a streamed job: segments start short and grow across pieces (split.py)
    units: list[Unit] = []
    gaps: list[float] = []
    anchors: list[tuple[int, float]] = []
    pending: float | None = None  # breaks since the last unit
    for index, piece in enumerate(document.pieces):
        if isinstance(piece, Break):
            anchors.append((len(units), pending or 0.0))
            pending = (pending or 0.0) + piece.seconds
            continue
        own = keep + [entry.term for entry in piece.lexicon]
        segments = split_text(piece.text, max_chars, growing=growing, previous=len(units[-1].text) if units else 0)
        for k, (begin, end) in enumerate(_spans(piece.text, segments)):
            text = piece.text[begin:end]
            gap = SEGMENT_PAUSE_S if units else 0.0
            if k == 0 and pending is not None:
                gap, pending = pending, None
            if k == 0:
                anchors.append((len(units), gap))
            gaps.append(gap)
            units.append(Unit(text, normalize_for_speech(text, piece.language, own), index, begin, piece))
    anchors.append((len(units), pending or 0.0))
    return Plan(document, units, gaps, pending or 0.0, anchors)


def job_plan(options: dict[str, Any] | None, language: str, voice: str, max_chars: int) -> Plan | None:
    """The plan of an SSML job; None for a plain-text one."""
    if not is_ssml(options):
        return None
    assert options is not None
    return plan_for(parse_ssml(str(options["ssml"]), language, voice), options, max_chars)


def _gain(audio: np.ndarray, speech: Speech, warnings: list[str]) -> np.ndarray:
    if speech.silent:
        return np.zeros_like(audio)
    if not speech.gain_db:
        return audio
    out = audio * np.float32(10 ** (speech.gain_db / 20))
    peak = float(np.max(np.abs(out))) if len(out) else 0.0
    if peak > PEAK:
        out *= np.float32(PEAK / peak)
        message = f"SSML volume {speech.gain_db:+g} dB would clip: held at full scale"
        if message not in warnings:
            warnings.append(message)
    return out.astype(np.float32, copy=False)


def render(
    ctx: WorkerContext,
    spec: Any,
    attempt: Attempt,
    plan: Plan,
    speed: float,
    voice_of: Callable[[str], str | VoiceProfile],
    speak: Callable[[WorkerContext, str, str | VoiceProfile, Any], Synthesis],
    *,
    steps: int = 1,
    first_step: int = 0,
) -> Take:
    """Speak every unit at `speed` times its piece's rate with `speak` (worker/synthesis.py's, given here so this
    module does not import it); progress as worker.synthesis._render reports it."""
    take = Take(warnings=list(plan.document.warnings))
    low, high = ctx.engine.capabilities.speed_range
    rate = ctx.engine.capabilities.sample_rate
    job_entries = [entry.to_dict() for entry in lexicon.job_entries(spec.options)]
    groups = plan.stream_groups(rate)
    growing = is_growing(spec.options)
    streamed: list[np.ndarray] = []
    count = len(plan.units)
    for i, unit in enumerate(plan.units):
        piece = unit.speech
        name = piece.voice or spec.voice
        wanted = speed * piece.rate
        spoken = min(max(wanted, low), high)
        if abs(spoken - wanted) > 1e-6:
            _warn(take.warnings, f"SSML rate: speed {wanted:.2f} is outside {low:g}-{high:g}; spoke at {spoken:g}")
        options = dict(spec.options or {})
        options["lexicon"] = [entry.to_dict() for entry in piece.lexicon] + job_entries
        unit_spec = replace(spec, voice=name, language=piece.language, speed=round(spoken, 3), options=options)
        out = speak(ctx, unit.said, voice_of(name), unit_spec)
        audio = _gain(out.audio, piece, take.warnings)
        if growing:  # a streamed job's units fade in and out where silence meets them (fade_edges): no clicks
            after = plan.gaps[i + 1] if i + 1 < count else 1.0
            audio = fade_edges(audio, rate, start=i == 0 or plan.gaps[i] > 0, end=after > 0)
        streamed += _stream_part(plan, i, groups, audio, rate)
        if i + 1 == count or groups[i + 1] != groups[i]:
            ctx.segment_done(attempt, groups[i], groups[-1] + 1, np.concatenate(streamed))
            streamed = []
        take.audios.append(audio)
        if out.similarity is not None:
            take.similarities.append((out.similarity, len(audio)))
            take.similarity_basis = out.similarity_basis
        take.words.append(out.words)
        for warning in out.warnings:
            _warn(take.warnings, warning)
        if i + 1 < count or first_step + 1 < steps:
            ctx.progress(attempt, (first_step + (i + 1) / count) / (steps + 1 / count))
    return take


def _stream_part(plan: Plan, i: int, groups: list[int], audio: np.ndarray, rate: int) -> list[np.ndarray]:
    """Unit i as it goes out in its stream segment: the silence before it, less the pause the stream adds
    between segments; the trailing silence after the last unit."""
    gap = _zeros(plan.gaps[i], rate)
    if i and groups[i] != groups[i - 1]:
        gap = gap[: max(0, len(gap) - len(_zeros(SEGMENT_PAUSE_S, rate)))]
    parts = [gap, audio]
    if i + 1 == len(plan.units):
        parts.append(_zeros(plan.tail, rate))
    return parts


def _warn(warnings: list[str], message: str) -> None:
    if message not in warnings:
        warnings.append(message)


def marks_result(
    plan: Plan, take: Take, starts: list[float], rate: int, map_time: Callable[[float], float]
) -> list[dict[str, Any]]:
    """`result.marks`: each mark's name and time on the output's timeline."""
    return [{"name": name, "time_s": map_time(t)} for name, t in plan.mark_times(take.audios, take.words, starts, rate)]
