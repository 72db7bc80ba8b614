"""One synthesis job, start to finish, as a plain function the task calls and tests call directly."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared import jobs, voices
from shared.audio import encode, join_segments
from shared.db import transaction
from shared.errors import BadRequest, Conflict, NotFound, VoicefarmError
from shared.text import split_text
from worker.context import WorkerContext
from worker.engines.base import VoiceProfile

log = logging.getLogger(__name__)
# Pause between segments: close to a sentence break in read speech.
SEGMENT_PAUSE_S = 0.25


class Canceled(Exception):
    """The job was canceled while it ran."""


@dataclass(frozen=True)
class JobSpec:
    """The fields of a job row the worker needs, detached from the session."""

    id: str
    tenant_id: str
    text: str
    voice: str
    mode: str
    instruct: str | None
    language: str
    speed: float
    format: str
    sample_rate: int | None
    seed: int | None


def object_key(spec: JobSpec) -> str:
    # Deterministic: a redelivered task overwrites the same object instead of leaving a second one.
    return f"jobs/{spec.tenant_id}/{spec.id}.{spec.format}"


def run_synthesis(ctx: WorkerContext, job_id: str) -> str:
    """Run a job; returns the outcome ("succeeded", "failed" or "skipped" when it was already finished)."""
    with ctx.attempt(job_id) as job:
        if job is None:
            return "skipped"
        spec = JobSpec(**{name: getattr(job, name) for name in JobSpec.__dataclass_fields__})
        try:
            result = _synthesize(ctx, spec)
        except Canceled:
            log.info("job %s was canceled; stopping", job_id)
            return "canceled"
        except (BadRequest, ValueError, NotFound, Conflict) as exc:
            code = exc.code if isinstance(exc, VoicefarmError) else "synthesis_rejected"
            with transaction(ctx.sessions) as session:
                jobs.fail(session, job_id, code, str(exc))
            return "failed"
        with transaction(ctx.sessions) as session:
            jobs.complete(session, job_id, result)
        return "succeeded"


def _resolve_voice(ctx: WorkerContext, spec: JobSpec) -> str | VoiceProfile:
    if not voices.is_voice_id(spec.voice):
        return spec.voice
    with ctx.sessions() as session:
        voice = voices.ready_voice(session, spec.tenant_id, spec.voice, ctx.engine.capabilities.name)
        key = voice.profile_key
    if key is None:
        raise BadRequest(f"voice {spec.voice} has no profile", code="voice_not_ready")
    return ctx.profile(key)


def _synthesize(ctx: WorkerContext, spec: JobSpec) -> dict[str, Any]:
    caps = ctx.engine.capabilities
    voice = _resolve_voice(ctx, spec)
    texts = split_text(spec.text, caps.max_segment_chars)
    if not texts:
        raise BadRequest("text has nothing to speak", code="empty_text")
    started = time.perf_counter()
    audios: list[np.ndarray] = []
    warnings: list[str] = []
    similarities: list[tuple[float, int]] = []
    for i, text in enumerate(texts):
        out = ctx.engine.synthesize(
            text,
            voice=voice,
            mode=spec.mode,  # type: ignore[arg-type]
            instruct=spec.instruct,
            language=spec.language,
            speed=spec.speed,
            seed=spec.seed,
        )
        audios.append(out.audio)
        if out.similarity is not None:
            similarities.append((out.similarity, len(out.audio)))
        warnings.extend(w for w in out.warnings if w not in warnings)
        with transaction(ctx.sessions) as session:
            running = jobs.set_progress(session, spec.id, (i + 1) / (len(texts) + 1), ctx.settings.job_lease_s)
        if not running:
            raise Canceled(spec.id)
    audio, starts = join_segments(audios, caps.sample_rate, SEGMENT_PAUSE_S)
    compute_s = time.perf_counter() - started
    encoded = encode(audio, caps.sample_rate, spec.format, spec.sample_rate)
    key = object_key(spec)
    ctx.storage.put(key, encoded.data, spec.format)
    ctx.record_job(len(audio) / caps.sample_rate, compute_s)
    segments = [
        {"text": text, "start_s": round(start, 3), "end_s": round(start + len(seg) / caps.sample_rate, 3)}
        for text, seg, start in zip(texts, audios, starts, strict=True)
    ]
    return {
        "key": key,
        "format": encoded.format,
        "sample_rate": encoded.sample_rate,
        "duration_s": round(encoded.duration_s, 3),
        "bytes": len(encoded.data),
        "sha256": encoded.sha256,
        "segments": segments,
        "warnings": warnings,
        "engine": caps.name,
        # Speaker similarity to a cloned voice's reference, weighted by each segment's length.
        "similarity": (
            round(sum(sim * n for sim, n in similarities) / sum(n for _, n in similarities), 4)
            if similarities
            else None
        ),
        "rtf": round(compute_s / max(len(audio) / caps.sample_rate, 1e-6), 3),
    }
