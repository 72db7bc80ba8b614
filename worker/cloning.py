"""Clone jobs: turn an uploaded reference clip into a stored, reusable engine voice profile."""

from __future__ import annotations

import logging
import time
from typing import Any

from shared import voices
from shared.audio.reference import inspect_upload, normalise, to_wav
from shared.db import transaction
from shared.errors import BadRequest, EngineError, NotFound, VoicefarmError
from shared.jobs import state as jobs
from shared.jobs.state import Attempt
from shared.models import Job, Voice
from shared.text.language import detect_language
from worker.attempts import run_job
from worker.context import WorkerContext

log = logging.getLogger(__name__)


def run_clone(ctx: WorkerContext, job_id: str) -> str:
    return run_job(ctx, job_id, _attempt)


def _attempt(ctx: WorkerContext, job: Job, attempt: Attempt) -> str:
    with ctx.sessions() as session:
        voice = session.get(Voice, job.voice)
    if voice is None:
        raise NotFound(f"voice {job.voice} was deleted", code="voice_not_found")
    try:
        second = (voice.details or {}).get("second_clip_s") is not None
        result = _clone(ctx, attempt, voice.tenant_id, voice.id, voice.transcript, voice.language, second)
    except ValueError as exc:  # the engine's or the reference checks' refusal of this clip
        raise BadRequest(str(exc), code="clone_rejected") from exc
    with transaction(ctx.sessions) as session:
        # Fenced: a stale attempt's profile never becomes the voice's.
        if not jobs.complete(session, attempt, result):
            reason = jobs.refusal(session, attempt)
            session.rollback()
            return reason
        voices.mark_ready(
            session,
            voice.id,
            reference_key=result["reference_key"],
            profile_key=result["profile_key"],
            transcript=result["transcript"],
            language=result["language"],
            duration_s=result["duration_s"],
            details={k: result[k] for k in ("warnings", "build_s", "transcribed", "second_clip_s") if k in result},
        )
    ctx.notify(job.id)
    return "succeeded"


def _clone(
    ctx: WorkerContext,
    attempt: Attempt,
    tenant_id: str,
    voice_id: str,
    transcript: str | None,
    language: str | None,
    second: bool = False,
) -> dict[str, Any]:
    clip = normalise(inspect_upload(ctx.storage.get(voices.upload_key(tenant_id, voice_id))))
    # The same normalisation (rate, loudness) as the reference, so the two are measured alike.
    held_out = (
        normalise(inspect_upload(ctx.storage.get(voices.second_clip_key(tenant_id, voice_id)))) if second else None
    )
    ref_key = voices.reference_key(tenant_id, voice_id, attempt.number)
    ctx.storage.put(ref_key, to_wav(clip), "wav")
    ctx.progress(attempt, 0.3)

    transcribed = not transcript
    if not transcript:
        transcript, detected = ctx.transcriber().transcribe(clip.audio, clip.sample_rate, language)
        language = language or detected
        if not transcript:
            raise BadRequest("no speech was recognised in the reference clip", code="no_speech")
    language = language or detect_language(transcript)
    ctx.progress(attempt, 0.6)

    started = time.perf_counter()
    try:
        profile = ctx.engine.clone(
            clip.audio, clip.sample_rate, transcript, held_out=held_out.audio if held_out is not None else None
        )
    except (VoicefarmError, ValueError):
        raise
    except Exception as exc:
        log.exception("voice %s: the engine failed to build a profile", voice_id)
        raise EngineError("the engine failed to build this voice's profile; the error has been logged") from exc
    build_s = time.perf_counter() - started
    key = voices.profile_key(tenant_id, voice_id, ctx.engine.capabilities.name, attempt.number)
    ctx.storage.put(key, profile.data)
    log.info("voice %s: profile built in %.2f s", voice_id, build_s)
    return {
        "voice_id": voice_id,
        "reference_key": ref_key,
        "profile_key": key,
        "transcript": transcript,
        "transcribed": transcribed,
        "language": language,
        "duration_s": round(clip.duration_s, 3),
        "build_s": round(build_s, 3),
        "warnings": clip.warnings,
        **({"second_clip_s": round(held_out.duration_s, 3)} if held_out is not None else {}),
    }
