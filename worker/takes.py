"""Takes of a job under the QA gate, on the synthesis side: what a re-take changes, and handing a take over.

A re-take gets another seed (an engine that samples, like CosyVoice, says it another way) and a slightly other
speed from RETAKE_SPEEDS: Kokoro is deterministic, so a seed alone would give it the same take again. The take is
then uploaded like any other and handed to the gate (`Pending.check`): the finisher moves the job to "checking"
instead of completing it, and the engine goes on to its next job (worker/qa/step.py decides the take's fate).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from shared.audio.codecs import encode
from worker.finisher import Pending
from worker.qa import checks as qa

# Speed factors of take 1, 2, 3, ...: each re-take a little slower or faster than the asked speed.
RETAKE_SPEEDS = (1.0, 0.96, 1.04, 0.93, 1.07, 0.9)
SEED_STEP = 7919


class _Spec(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def speed(self) -> float: ...


S = TypeVar("S", bound=_Spec)


def take_number(qa_takes: list[dict[str, Any]] | None) -> int:
    return len(qa_takes or []) + 1


def retake_spec(spec: S, number: int) -> S:
    """The spec of take `number`: take 1 as asked, later ones with another seed and speed."""
    if number <= 1:
        return spec
    base = spec.seed if spec.seed is not None else int(spec.id[:8], 16)
    seed = (base + SEED_STEP * (number - 1)) % 2**31
    speed = min(2.0, max(0.5, spec.speed * RETAKE_SPEEDS[(number - 1) % len(RETAKE_SPEEDS)]))
    return dataclasses.replace(spec, seed=seed, speed=round(speed, 3))  # type: ignore[type-var]


def for_gate(pending: Pending, spec: _Spec, number: int, test_defect: str = "") -> Pending:
    """Mark a finished take for the gate, recording which take it is; `test_defect` is the test-only switch."""
    defect = defect_for(test_defect, number, spec.text)
    if defect:
        pending = _with_defect(pending, defect)
    # Who spoke the take (the job's own worker becomes the gate's once it checks); the finisher adds when it was
    # stored (`stored_at`), the take's counterpart of a job's finished_at.
    pending.result["qa_take"] = {
        "number": number,
        "seed": spec.seed,
        "speed": spec.speed,
        "worker": pending.attempt.worker,
    }
    pending.check = True
    return pending


def defect_for(switch: str, number: int, text: str) -> str | None:
    """Test-only (`VOICEFARM_TEST_TAKE_DEFECT`): a comma list of `defect@takes` or `defect@takes~text`, where
    takes is a number, a range `1-2` or `*`, and `~text` limits it to lines whose text contains `text`;
    e.g. `truncate@1,silence@*~never` cuts every line's first take short and silences every take of a line
    with "never" in it. The first entry that applies wins."""
    for entry in filter(None, (e.strip() for e in switch.split(","))):
        defect, _, rest = entry.partition("@")
        takes, _, needle = rest.partition("~")
        low, _, high = takes.partition("-")
        hit = takes == "*" or (low.isdigit() and int(low) <= number <= int(high or low))
        if hit and (not needle or needle in text):
            return defect
    return None


def _with_defect(p: Pending, defect: str) -> Pending:
    r = p.result
    audio, rate = qa.decode(p.data, p.fmt, int(r["sample_rate"]), int(r.get("channels") or 1))
    damaged = encode(qa.inject(audio, rate, defect), rate, p.fmt, rate, int(r.get("channels") or 1))
    r.update(duration_s=round(damaged.duration_s, 3), bytes=len(damaged.data), sha256=damaged.sha256)
    r["test_defect"] = defect
    return dataclasses.replace(p, data=damaged.data)


@dataclass
class Take:
    """Every segment of a line, synthesized once at one speed."""

    audios: list[np.ndarray] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    similarities: list[tuple[float, int]] = field(default_factory=list)
    similarity_basis: str | None = None
    words: list[list[dict[str, Any]] | None] = field(default_factory=list)  # each segment's engine word times

    def similarity(self) -> float | None:
        if not self.similarities:
            return None
        return round(sum(s * n for s, n in self.similarities) / sum(n for _, n in self.similarities), 4)
