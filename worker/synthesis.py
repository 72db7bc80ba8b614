"""One synthesis job, start to finish, as a plain function the task calls and tests call directly."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from shared import voices
from shared.audio import encode, join_segments
from shared.errors import BadRequest, EngineError, VoicefarmError
from shared.jobs import Attempt
from shared.models import Job
from shared.text import split_text
from worker.attempts import run_job
from worker.context import WorkerContext
from worker.engines.base import Synthesis, VoiceProfile
from worker.finisher import Pending, attempt_key

log = logging.getLogger(__name__)
# Pause between segments: close to a sentence break in read speech.
SEGMENT_PAUSE_S = 0.25


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


def run_synthesis(ctx: WorkerContext, job_id: str) -> str:
    """Run an attempt at a job; returns its outcome ("succeeded", "deferred", "failed", "skipped", ...)."""
    return run_job(ctx, job_id, _attempt)


def _attempt(ctx: WorkerContext, job: Job, attempt: Attempt) -> str:
    spec = JobSpec(**{name: getattr(job, name) for name in JobSpec.__dataclass_fields__})
    return ctx.finisher.finish(_synthesize(ctx, spec, attempt))


def _resolve_voice(ctx: WorkerContext, spec: JobSpec) -> str | VoiceProfile:
    if not voices.is_voice_id(spec.voice):
        return spec.voice
    with ctx.sessions() as session:
        voice = voices.ready_voice(session, spec.tenant_id, spec.voice, ctx.engine.capabilities.name)
        key = voice.profile_key
    if key is None:
        raise BadRequest(f"voice {spec.voice} has no profile", code="voice_not_ready")
    return ctx.profile(key)


def _speak(ctx: WorkerContext, text: str, voice: str | VoiceProfile, spec: JobSpec) -> Synthesis:
    """One segment; anything the engine raises besides a refusal of the input is an engine failure."""
    try:
        return ctx.engine.synthesize(
            text,
            voice=voice,
            mode=spec.mode,  # type: ignore[arg-type]
            instruct=spec.instruct,
            language=spec.language,
            speed=spec.speed,
            seed=spec.seed,
        )
    except VoicefarmError:
        raise
    except ValueError as exc:  # the engine's own argument checks (check_segment)
        raise BadRequest(str(exc), code="synthesis_rejected") from exc
    except MemoryError as exc:
        raise EngineError("the engine ran out of memory on this job", code="engine_out_of_memory") from exc
    except Exception as exc:
        log.exception("job %s: the engine failed", spec.id)
        if "out of memory" in str(exc).lower():  # CUDA OOM is a RuntimeError whose text says so
            raise EngineError("the engine ran out of memory on this job", code="engine_out_of_memory") from exc
        raise EngineError("the engine failed on this job; the error has been logged") from exc


def _synthesize(ctx: WorkerContext, spec: JobSpec, attempt: Attempt) -> Pending:
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
        out = _speak(ctx, text, voice, spec)
        audios.append(out.audio)
        if out.similarity is not None:
            similarities.append((out.similarity, len(out.audio)))
        warnings.extend(w for w in out.warnings if w not in warnings)
        ctx.progress(attempt, (i + 1) / (len(texts) + 1))
    audio, starts = join_segments(audios, caps.sample_rate, SEGMENT_PAUSE_S)
    compute_s = time.perf_counter() - started
    encoded = encode(audio, caps.sample_rate, spec.format, spec.sample_rate)
    key = attempt_key(spec.tenant_id, attempt, spec.format)
    segments = [
        {"text": text, "start_s": round(start, 3), "end_s": round(start + len(seg) / caps.sample_rate, 3)}
        for text, seg, start in zip(texts, audios, starts, strict=True)
    ]
    result = {
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
    audio_s = len(audio) / caps.sample_rate
    return Pending(attempt, spec.tenant_id, key, encoded.data, encoded.format, result, audio_s, compute_s)
