"""What each engine offers, as data that both sides read: capabilities and instruction catalogues.

The worker's adapters (worker/engines/) report a `Capabilities` built from these catalogues; each worker publishes
the capabilities it actually serves when it registers (the `workers` table), and the API validates requests
against the engines that have live workers (`shared.engines.fleet`). Nothing here imports engine code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shared.engines import cosyvoice, kokoro


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do; the API validates requests against this before enqueueing."""

    name: str
    languages: tuple[str, ...]
    modes: tuple[str, ...]
    sample_rate: int
    max_segment_chars: int
    stock_voices: tuple[str, ...]
    # language -> stock voice used when a job names no voice
    default_voices: dict[str, str]
    # instruction catalogue the engine honours (free-form text outside it is reported in warnings)
    instructions: tuple[str, ...] = ()
    # the model a worker loaded (its directory name or package), "" in a static catalogue
    model: str = ""
    speed_range: tuple[float, float] = (0.5, 2.0)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Capabilities:
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        for name in ("languages", "modes", "stock_voices", "instructions", "speed_range"):
            if name in known:
                known[name] = tuple(known[name])
        return cls(**known)


@dataclass(frozen=True)
class Catalogue:
    """An engine as the farm knows it before any worker runs it: its default capabilities and instructions."""

    capabilities: Capabilities
    # Structured instructions ({id, label, text, kind}); `text` is what a client sends as `instruct`.
    instructions: list[dict[str, str]] = field(default_factory=list)
    # What happens to an instruction outside the catalogue.
    free_form: str = "reported in result.warnings"


CATALOGUES: dict[str, Catalogue] = {
    kokoro.NAME: Catalogue(
        Capabilities(
            name=kokoro.NAME,
            languages=kokoro.LANGUAGES,
            modes=kokoro.MODES,
            sample_rate=kokoro.SAMPLE_RATE,
            max_segment_chars=kokoro.MAX_SEGMENT_CHARS,
            stock_voices=kokoro.STOCK_VOICES,
            default_voices=dict(kokoro.DEFAULT_VOICES),
            instructions=kokoro.HONOURED,
            speed_range=(kokoro.MIN_SPEED, kokoro.MAX_SPEED),
        ),
        instructions=[dict(item) for item in kokoro.INSTRUCTIONS],
        free_form="reported in result.warnings",
    ),
    cosyvoice.NAME: Catalogue(
        Capabilities(
            name=cosyvoice.NAME,
            languages=cosyvoice.LANGUAGES[3],
            modes=cosyvoice.MODES,
            sample_rate=cosyvoice.SAMPLE_RATE,
            max_segment_chars=cosyvoice.MAX_SEGMENT_CHARS,
            stock_voices=(),
            default_voices={},
            instructions=tuple(item["text"] for item in cosyvoice.INSTRUCTIONS),
            speed_range=(cosyvoice.MIN_SPEED, cosyvoice.MAX_SPEED),
        ),
        instructions=[dict(item) for item in cosyvoice.INSTRUCTIONS],
        free_form="passed to the model",
    ),
}


def engine_names() -> list[str]:
    return sorted(CATALOGUES)


def catalogue(name: str) -> Catalogue:
    try:
        return CATALOGUES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(engine_names())}") from None
