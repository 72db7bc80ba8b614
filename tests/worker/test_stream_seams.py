"""Seams of a streamed job (worker/synthesis.py with the growing split): its segments, published one by one and
relayed through the API's encoder, are the stored audio sample for sample, and where they meet the pause between
them there is no step and no burst of high-frequency energy, even from an engine whose audio starts and ends at
full swing. A job that does not stream keeps its audio as the engine spoke it. No model: a stand-in engine
speaks a tone as long as the text."""

from __future__ import annotations

import numpy as np
import pytest

from shared.audio.codecs import SEAM_FADE_S, fade_edges
from shared.audio.streaming import SEGMENT_PAUSE_S, StreamEncoder
from shared.config import Settings
from shared.jobs.state import Attempt
from shared.text.split import GROWING, SPLIT_OPTION
from worker import synthesis
from worker.engines.base import Synthesis
from worker.synthesis import JobSpec

RATE = 24000
TEXT = (
    "The first train leaves the station at seven in the morning. "
    "It crosses the river and climbs slowly into the hills. "
    "By nine o'clock the valley is far behind. "
    "Passengers open their windows to smell the pine trees. "
    "At noon the train reaches the little town by the lake."
)
WINDOW = int(0.005 * RATE)  # 5 ms windows for the high-frequency energy


class _ToneEngine:
    """A 220 Hz tone at half scale, 50 ms per character, starting at its crest and stopping mid-swing: the worst
    edges an engine could leave."""

    def __init__(self) -> None:
        from shared.engines import catalogue

        self.capabilities = catalogue("kokoro").capabilities

    def synthesize(self, text: str, **_: object) -> Synthesis:
        t = np.arange(int(0.05 * len(text) * RATE)) / RATE
        return Synthesis(audio=(0.5 * np.cos(2 * np.pi * 220 * t + 0.3)).astype(np.float32), sample_rate=RATE)


class _Ctx:
    def __init__(self) -> None:
        # The labels a stored file carries (pcm: none). The watermark is off: the stored take is marked as a whole
        # and each streamed segment as it is published (tests/api/test_verify.py), so with it on the two differ by
        # their marks; the seams are what this file checks.
        self.settings = Settings(watermark=False)
        self.engine = _ToneEngine()
        self.published: list[tuple[int, int, np.ndarray]] = []

    def segment_done(self, attempt: object, index: int, count: int, audio: np.ndarray) -> None:
        self.published.append((index, count, audio))

    def progress(self, attempt: object, fraction: float) -> None:
        pass


def run(options: dict[str, str] | None) -> tuple[_Ctx, np.ndarray, bytes]:
    """The job as the worker runs it, stored as pcm: the context (what it published), the stored audio and bytes."""
    spec = JobSpec("j1", "t1", TEXT, "jm_kumo", "clone", None, "en", 1.0, "pcm", None, None, options)
    ctx = _Ctx()
    pending = synthesis._synthesize(ctx, spec, Attempt("j1", 1, "w"))  # type: ignore[arg-type]
    return ctx, np.frombuffer(pending.data, dtype="<i2").astype(np.float32) / 32767.0, pending.data


def relayed(ctx: _Ctx) -> bytes:
    """The published segments as the API relays them: 16-bit PCM over Redis (SegmentPublisher, SegmentReader),
    then the pcm encoder, which puts the pause between segments."""
    encoder = StreamEncoder("pcm", RATE)
    out = [encoder.header()]
    for _index, _count, audio in ctx.published:
        wire = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
        out.append(encoder.encode(wire.astype(np.float32) / 32767.0, RATE))
    return b"".join(out) + encoder.finish()


def seams(ctx: _Ctx) -> list[int]:
    """Sample offsets in the stored audio where a segment meets the pause or the pause meets a segment."""
    pause = int(round(SEGMENT_PAUSE_S * RATE))
    edges, cursor = [], 0
    for i, (_index, _count, audio) in enumerate(ctx.published):
        if i:
            edges.append(cursor)  # the pause meets this segment
        cursor += len(audio)
        if i + 1 < len(ctx.published):
            edges.append(cursor)  # this segment meets the pause
            cursor += pause
    return edges


def within(ctx: _Ctx, stored: np.ndarray) -> tuple[float, float]:
    """The largest sample-to-sample step and 5 ms high-frequency energy inside the segments (away from edges)."""
    pause = int(round(SEGMENT_PAUSE_S * RATE))
    steps, energies, cursor = [], [], 0
    for _index, _count, audio in ctx.published:
        inner = stored[cursor + 4 * WINDOW : cursor + len(audio) - 4 * WINDOW]
        steps.append(float(np.max(np.abs(np.diff(inner)))))
        energies.append(max(hf_energy(inner[k : k + WINDOW]) for k in range(0, len(inner) - WINDOW, WINDOW)))
        cursor += len(audio) + pause
    return max(steps), max(energies)


def hf_energy(frame: np.ndarray) -> float:
    return float(np.sum(np.diff(frame) ** 2))


def test_a_streamed_job_is_its_stored_audio_without_steps_at_the_seams() -> None:
    ctx, stored, data = run({SPLIT_OPTION: GROWING})
    assert [(index, count) for index, count, _a in ctx.published] == [(0, 3), (1, 3), (2, 3)]
    assert relayed(ctx) == data  # sample for sample, through the wire's 16 bits and the encoder's pauses
    step, energy = within(ctx, stored)
    edges = seams(ctx)
    assert len(edges) == 4
    for edge in edges:
        assert abs(stored[edge] - stored[edge - 1]) <= step, edge  # no step where segment and pause meet
        around = stored[edge - WINDOW : edge + WINDOW]
        assert max(hf_energy(around[: WINDOW + 1]), hf_energy(around[WINDOW - 1 :])) <= energy, edge  # no click
    # The segments themselves: faded only over their first and last few milliseconds.
    first = ctx.published[0][2]
    fade = int(round(SEAM_FADE_S * RATE))
    raw = ctx.engine.synthesize(TEXT.split(". ")[0] + ".").audio
    assert np.array_equal(first[fade:-fade], raw[fade:-fade]) and abs(first[0]) < 0.001 and abs(first[-1]) < 0.001


def test_the_seam_check_catches_the_steps_of_unfaded_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthesis, "fade_edges", lambda audio, rate: audio)
    ctx, stored, data = run({SPLIT_OPTION: GROWING})
    assert relayed(ctx) == data
    step, _energy = within(ctx, stored)
    assert max(abs(stored[edge] - stored[edge - 1]) for edge in seams(ctx)) > 5 * step


def test_a_stored_only_job_keeps_its_packing_and_the_engines_audio() -> None:
    ctx, stored, data = run(None)
    assert [(index, count) for index, count, _a in ctx.published] == [(0, 2), (1, 2)]
    engine = _ToneEngine()
    first = engine.synthesize(
        "The first train leaves the station at seven in the morning. It crosses the river and climbs slowly into "
        "the hills. By nine o'clock the valley is far behind."
    ).audio
    assert np.array_equal(ctx.published[0][2], first)  # as the engine spoke it: no fade
    assert relayed(ctx) == data


def test_fade_edges_ramps_from_and_to_silence() -> None:
    audio = np.ones(1000, dtype=np.float32)
    faded = fade_edges(audio, 24000, 0.005)
    assert faded[0] < 0.001 and faded[-1] < 0.001 and np.all(np.diff(faded[:120]) > 0)
    assert np.array_equal(faded[120:-120], audio[120:-120]) and np.array_equal(audio, np.ones(1000))
    only_end = fade_edges(audio, 24000, 0.005, start=False)
    assert only_end[0] == 1.0 and only_end[-1] < 0.001
    assert np.array_equal(fade_edges(np.ones(3, dtype=np.float32), 24000), np.array([0.5, 1.0, 0.5]))
