"""Clone jobs: turn an uploaded reference clip into a stored, reusable engine voice profile."""

from __future__ import annotations

import logging
import time
from typing import Any

from shared import jobs, voices
from shared.db import transaction
from shared.errors import BadRequest
from shared.language import detect_language
from shared.models import Voice
from shared.reference import inspect_upload, normalise, to_wav
from worker.context import WorkerContext

log = logging.getLogger(__name__)


def run_clone(ctx: WorkerContext, job_id: str) -> str:
    with ctx.attempt(job_id) as job:
        if job is None:
            return "skipped"
        with ctx.sessions() as session:
            voice = session.get(Voice, job.voice)
        if voice is None:
            with transaction(ctx.sessions) as session:
                jobs.fail(session, job_id, "voice_not_found", f"voice {job.voice} was deleted")
            return "failed"
        try:
            result = _clone(ctx, job_id, voice.tenant_id, voice.id, voice.transcript, voice.language)
        except (BadRequest, ValueError) as exc:
            code = exc.code if isinstance(exc, BadRequest) else "clone_rejected"
            with transaction(ctx.sessions) as session:
                voices.mark_failed(session, voice.id, code, str(exc))
                jobs.fail(session, job_id, code, str(exc))
            return "failed"
        with transaction(ctx.sessions) as session:
            voices.mark_ready(
                session,
                voice.id,
                reference_key=result["reference_key"],
                profile_key=result["profile_key"],
                transcript=result["transcript"],
                language=result["language"],
                duration_s=result["duration_s"],
                details={k: result[k] for k in ("warnings", "build_s", "transcribed")},
            )
            jobs.complete(session, job_id, result)
        return "succeeded"


def _clone(
    ctx: WorkerContext, job_id: str, tenant_id: str, voice_id: str, transcript: str | None, language: str | None
) -> dict[str, Any]:
    clip = normalise(inspect_upload(ctx.storage.get(voices.upload_key(tenant_id, voice_id))))
    ref_key = voices.reference_key(tenant_id, voice_id)
    ctx.storage.put(ref_key, to_wav(clip), "wav")
    with transaction(ctx.sessions) as session:
        jobs.set_progress(session, job_id, 0.3, ctx.settings.job_lease_s)

    transcribed = not transcript
    if not transcript:
        transcript, detected = ctx.transcriber().transcribe(clip.audio, clip.sample_rate, language)
        language = language or detected
        if not transcript:
            raise BadRequest("no speech was recognised in the reference clip", code="no_speech")
    language = language or detect_language(transcript)
    with transaction(ctx.sessions) as session:
        jobs.set_progress(session, job_id, 0.6, ctx.settings.job_lease_s)

    started = time.perf_counter()
    profile = ctx.engine.clone(clip.audio, clip.sample_rate, transcript)
    build_s = time.perf_counter() - started
    key = voices.profile_key(tenant_id, voice_id, ctx.engine.capabilities.name)
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
    }
