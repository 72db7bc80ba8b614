"""The contract every synthesis engine implements.

The worker talks to engines only through `Engine`; adapters stay thin and wrap a real library.
Nothing here imports numpy-heavy or torch-heavy code at import time beyond numpy itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from shared.engines import Capabilities  # capabilities are data in shared/; re-exported for adapters
from shared.text.lexicon import Entry as LexiconEntry

Mode = Literal["clone", "cross_lingual", "instruct"]
Language = Literal["zh", "en", "ja"]


@dataclass(frozen=True)
class VoiceProfile:
    """An engine-specific, serialised voice: built once by `clone`, stored in S3, reused by every job."""

    engine: str
    data: bytes


@dataclass
class Synthesis:
    """One synthesized segment: float32 mono audio at `sample_rate`, plus anything the engine could not honour."""

    audio: np.ndarray
    sample_rate: int
    warnings: list[str] = field(default_factory=list)
    similarity: float | None = None  # speaker similarity (GE2E cosine) to a cloned voice's reference, if measured
    # Each script word's (zh/ja: character's) {"text", "start_s", "end_s"} in `audio`, from the engine's own
    # durations; None where the engine cannot tell (the worker then aligns with ASR).
    words: list[dict[str, Any]] | None = None
    # What `similarity` was measured against: "held_out" (reference speech the voice was not fitted to) or
    # "fitting_clip" (the very clip it was fitted to, too short to split).
    similarity_basis: str | None = None


def check_segment(caps: Capabilities, text: str, mode: str, language: str, speed: float) -> None:
    """The argument checks every engine's `synthesize` makes before touching its model."""
    if language not in caps.languages:
        raise ValueError(f"unsupported language {language!r}; {caps.name} speaks {', '.join(caps.languages)}")
    if mode not in caps.modes:
        raise ValueError(f"unsupported mode {mode!r}; {caps.name} modes: {', '.join(caps.modes)}")
    if not text or not text.strip():
        raise ValueError("text is empty")
    if len(text) > caps.max_segment_chars:
        raise ValueError(f"segment has {len(text)} characters; {caps.name} takes at most {caps.max_segment_chars}")
    if not (isinstance(speed, int | float) and np.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a positive number, got {speed!r}")


@runtime_checkable
class Engine(Protocol):
    capabilities: Capabilities

    def load(self) -> None:
        """Load weights once per worker process; later calls are no-ops."""

    def clone(
        self,
        reference_audio: np.ndarray,
        sample_rate: int,
        transcript: str | None,
        held_out: np.ndarray | None = None,
    ) -> VoiceProfile:
        """Build a reusable voice profile from a normalised reference clip. `held_out`, when given, is a second
        clip of the same speaker at the same rate: never fitted to, only what outputs' similarity is measured
        against (an engine that measures none ignores it)."""
        ...

    def synthesize(
        self,
        text: str,
        *,
        voice: str | VoiceProfile,
        mode: Mode = "clone",
        instruct: str | None = None,
        language: str = "en",
        speed: float = 1.0,
        seed: int | None = None,
        lexicon: Sequence[LexiconEntry] = (),
    ) -> Synthesis:
        """Speak one segment (at most `capabilities.max_segment_chars`) in a stock voice or a cloned profile,
        saying each `lexicon` term that occurs in it as the entry says (shared/text/lexicon.py)."""
        ...
