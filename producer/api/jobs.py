"""Synthesis jobs: submit, inspect, list, download."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from flask import Blueprint, Response, g, jsonify, redirect, request
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as WerkzeugResponse

from producer.auth import authenticate
from producer.limits import check_queue_depth
from producer.resources import Farm, farm
from shared import admission, tenants, voices
from shared.audio import subtitles
from shared.audio.codecs import CONTENT_TYPES, EXTENSIONS
from shared.errors import BadRequest, Conflict, NotFound
from shared.jobs import dedup
from shared.jobs import state as jobs
from shared.jobs.idempotency import request_hash
from shared.jobs.views import job_view
from shared.models import Job
from shared.pages import id_cursor, page_limit
from shared.queue import enqueue_webhook, try_enqueue
from shared.schemas import JobRequest, check_text_length
from shared.text import lexicon
from shared.text.language import detect_language
from shared.webhooks.targets import check_webhook_url

log = logging.getLogger(__name__)
SUBTITLE_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt"}
bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


@bp.post("")
def submit() -> tuple[Response, int]:
    resources = farm()
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and (len(key) > 200 or not key.isprintable() or not key.isascii()):
        raise BadRequest(
            "Idempotency-Key must be at most 200 printable ASCII characters", code="invalid_idempotency_key"
        )
    max_chars = resources.settings.max_text_chars
    # A body that cannot hold a text within the limit was refused unread (producer/intake.py, 413 body_too_large);
    # this one is read only once its key is known, and outside any transaction.
    with resources.sessions() as session:
        tenant_id = authenticate(session)
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    # Length first: validation, control-character scans and language detection all walk the text.
    check_text_length(payload, max_chars)
    req = JobRequest.model_validate(payload)
    if req.webhook_url:  # DNS, within webhook_resolve_timeout_s, before a transaction holds a connection
        check_webhook_url(req.webhook_url, resources.settings)
    with resources.sessions() as session, session.begin():
        admission.check_priority(session, tenant_id, req.priority)  # above 5 only for an entitled tenant
        fields = _job_fields(resources, session, tenant_id, req)
        # The spoken AI notice, the tenant's default if not asked (a streamed speech answer has none).
        tenants.apply_disclosure(session, tenant_id, [fields])
        fields["cache_key"] = dedup.job_cache_key(session, resources.settings, tenant_id, fields)
        # A reused key is compared by the whole request as validated, defaults filled in.
        digest = request_hash("synthesize", req.model_dump(mode="json")) if key else None
        if key is None or not jobs.idempotent_match(session, tenant_id, key):
            # Under the tenant's admission lock until the commit: counted and inserted atomically (a job the cache
            # answers counts too).
            check_queue_depth(session, tenant_id, resources.settings.max_queued_per_tenant)
        job, created = jobs.create_job(
            session, tenant_id=tenant_id, idempotency_key=key, request_hash=digest, api_key_id=g.api_key_id, **fields
        )
        if created and resources.settings.dedup_cache:
            dedup.answer(session, resources.storage, job)  # answered complete at once when its audio is stored
    # Enqueue only after the row is committed: a worker must always find the job it is handed.
    if created and job.status == "queued":
        try_enqueue(resources.celery, job.id, job.kind, job.engine, job.priority, len(job.text), resources.sessions)
    elif created and job.webhook_url:
        # Answered from the dedup cache: its event is due now (the reconciler sends it if this send fails).
        with contextlib.suppress(Exception):
            enqueue_webhook(resources.celery, job.id)
    return jsonify(job_view(job, resources.storage, resources.settings.presign_expiry_s)), 202 if created else 200


def _job_fields(resources: Farm, session: Session, tenant_id: str, req: JobRequest) -> dict[str, Any]:
    # The engine: named by the request, else its cloned voice's, else the one with its stock voice (fleet.py).
    cloned = voices.get_voice(session, tenant_id, req.voice) if req.voice and voices.is_voice_id(req.voice) else None
    caps = resources.fleet.for_request(req.engine, req.voice, cloned.engine if cloned else None)
    language = req.language or detect_language(req.text)
    for spoken in (language, *req.ssml_languages()):  # an SSML text's <lang> pieces too
        if spoken not in caps.languages:
            raise BadRequest(f"language {spoken!r} is not spoken by engine {caps.name}", code="unsupported_language")
    if req.mode not in caps.modes:
        raise BadRequest(f"mode {req.mode!r} is not supported by engine {caps.name}", code="unsupported_mode")
    voice = req.voice or caps.default_voices.get(language)
    if voice is None:
        raise BadRequest(f"engine {caps.name} has no stock voices: name a cloned voice", code="voice_required")
    for named in (voice, *req.ssml_voices()):  # an SSML text's <voice name> pieces too
        if voices.is_voice_id(named):
            voices.ready_voice(session, tenant_id, named, caps.name)
        elif named not in caps.stock_voices:
            raise BadRequest(f"unknown voice {named!r} for engine {caps.name}", code="unknown_voice")
    fields = req.synthesis_fields(caps.name, voice, language) | {
        "priority": req.priority,
        "webhook_url": req.webhook_url,  # checked by the caller before its transaction (speech requests have none)
    }
    lexicon.attach(session, tenant_id, [fields])  # the tenant's entries its text uses: part of the dedup key
    return fields


@bp.get("/<job_id>")
def show(job_id: str) -> Response:
    resources = farm()
    with resources.sessions() as session:
        job = jobs.get_job(session, authenticate(session), job_id)
    return jsonify(job_view(job, resources.storage, resources.settings.presign_expiry_s))


@bp.post("/<job_id>/cancel")
def cancel(job_id: str) -> Response:
    resources = farm()
    with resources.sessions() as session, session.begin():
        job, changed = jobs.cancel(session, authenticate(session), job_id)
    if changed and job.webhook_url:
        # Best effort: the reconciler sends any terminal job's webhook that was never attempted.
        with contextlib.suppress(Exception):
            enqueue_webhook(resources.celery, job.id)
    return jsonify(job_view(job, resources.storage, resources.settings.presign_expiry_s))


@bp.get("")
def index() -> Response:
    resources = farm()
    status = request.args.get("status") or None
    if status is not None and status not in jobs.STATUSES:
        raise BadRequest(f"status must be one of {', '.join(jobs.STATUSES)}", code="invalid_status")
    limit = page_limit(request.args)
    with resources.sessions() as session:
        tenant_id = authenticate(session)
        page = jobs.list_jobs(session, tenant_id, status=status, limit=limit, before=request.args.get("cursor"))
    return jsonify(
        {
            "jobs": [job_view(job, resources.storage, resources.settings.presign_expiry_s) for job in page],
            "next_cursor": id_cursor(page, limit),
        }
    )


def _finished_audio_job(job_id: str) -> Job:
    resources = farm()
    with resources.sessions() as session:
        job = jobs.get_job(session, authenticate(session), job_id)
    if job.kind != "synthesize":
        raise NotFound(f"job {job_id} is a {job.kind} job and has no audio", code="no_audio")
    if job.status != "succeeded" or not job.result:
        raise Conflict(f"job {job_id} is {job.status}; audio exists only once it has succeeded", code="not_ready")
    return job


@bp.get("/<job_id>/subtitles")
def subtitles_file(job_id: str) -> Response:
    """SRT or WebVTT cues of the script, timed by the job's word timings (`words: true`) or its segments."""
    fmt = request.args.get("format", "srt")
    if fmt not in ("srt", "vtt"):
        raise BadRequest("format must be srt or vtt", code="invalid_subtitle_format")
    job = _finished_audio_job(job_id)
    assert job.result is not None
    cue_list = subtitles.for_result(job.text, job.result)
    response = Response(subtitles.render(cue_list, fmt), mimetype=SUBTITLE_TYPES[fmt])
    response.headers["Content-Disposition"] = f'attachment; filename="{job.id}.{fmt}"'
    return response


@bp.get("/<job_id>/audio")
def audio(job_id: str) -> Response | WerkzeugResponse:
    """The job's audio streamed from storage as it is read (never whole in the API's memory), or with
    `redirect=1` a redirect to a presigned URL. A job answered from the cache streams the object it shares."""
    resources = farm()
    job = _finished_audio_job(job_id)
    assert job.result is not None
    key = job.result["key"]
    if request.args.get("redirect") in ("1", "true"):
        return redirect(resources.storage.presigned_url(key, resources.settings.presign_expiry_s))
    stored = resources.storage.open(key)
    response = Response(
        iter(stored), mimetype=CONTENT_TYPES.get(job.format, "application/octet-stream"), direct_passthrough=True
    )
    response.call_on_close(stored.close)
    if stored.length:
        response.content_length = stored.length
    response.headers["Content-Disposition"] = (
        f'attachment; filename="{job.id}.{EXTENSIONS.get(job.format, job.format)}"'
    )
    response.headers["X-Content-SHA256"] = job.result["sha256"]
    return response
