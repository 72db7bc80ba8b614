"""Voices: clone one from a reference clip, list stock and cloned voices, inspect, delete."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy.orm import Session

from producer.auth import authenticate
from producer.limits import check_queue_depth
from producer.resources import Farm, farm
from shared import admission, voices
from shared.audio.reference import inspect_upload
from shared.db import transaction
from shared.errors import BadRequest, VoicefarmError
from shared.jobs import state as jobs
from shared.jobs.views import iso
from shared.models import Job, Voice, new_id
from shared.provenance import consent
from shared.queue import try_enqueue
from shared.schemas import clean_text

bp = Blueprint("voices", __name__, url_prefix="/v1/voices")
MAX_TRANSCRIPT_CHARS = 1000
MAX_NAME_CHARS = 200


@bp.post("")
def create() -> tuple[Response, int]:
    resources = farm()
    settings = resources.settings
    with resources.sessions() as session:
        tenant_id = authenticate(session)
        # Early, before anything is read or stored; counted again under the tenant's lock below.
        admission.check_voice_count(session, tenant_id, settings.max_voices_per_tenant)
        policy = consent.policy(session, tenant_id)
    upload = request.files.get("audio")
    if upload is None:
        raise BadRequest("send the reference clip as multipart field 'audio'", code="missing_audio")
    # The tenant's consent policy, before any clip is read (shared/provenance/consent.py).
    consent_upload = request.files.get("consent_audio")
    statement_id = (request.form.get("consent_id") or "").strip() or None
    method = consent.required(
        policy,
        recording=consent_upload is not None,
        statement_id=statement_id,
        attested=_flag(request.form.get("consent_attested")),
    )
    raw_name = request.form.get("name") or ""
    raw_transcript = request.form.get("transcript") or ""
    # Lengths as sent, before anything walks the text character by character.
    if len(raw_name) > MAX_NAME_CHARS:
        raise BadRequest(f"name is longer than {MAX_NAME_CHARS} characters", code="invalid_name")
    if len(raw_transcript) > MAX_TRANSCRIPT_CHARS:
        raise BadRequest(f"transcript is longer than {MAX_TRANSCRIPT_CHARS} characters", code="transcript_too_long")
    try:
        name = clean_text(raw_name.strip())
        transcript = clean_text(" ".join(raw_transcript.split())) or None
    except ValueError as exc:
        raise BadRequest(f"name or transcript {exc}", code="invalid_text") from None
    # A voice is cloned for one engine: the one named, else the farm's default (shared/engines/fleet.py).
    caps = resources.fleet.for_request(request.form.get("engine") or None, None)
    language = request.form.get("language") or None
    if language is not None and language not in caps.languages:
        raise BadRequest(f"language must be one of {', '.join(caps.languages)}", code="unsupported_language")
    data = upload.read()
    # Decoding here refuses a bad clip at once, before anything is stored or queued.
    clip = inspect_upload(data)
    # Optional: a second clip of the same speaker, never fitted to, that outputs' similarity is measured against.
    second = request.files.get("second_clip")
    second_data = second.read() if second is not None else None
    second_s = _second_clip_seconds(second_data) if second_data is not None else None
    consent_data = consent_upload.read() if consent_upload is not None else None
    if consent_data is not None:
        _clip_seconds(consent_data, "consent_audio")

    voice_id = "v_" + new_id()[:24]
    resources.storage.put(voices.upload_key(tenant_id, voice_id), data)
    if second_data is not None:
        resources.storage.put(voices.second_clip_key(tenant_id, voice_id), second_data)
    if consent_data is not None:
        resources.storage.put(voices.consent_key(tenant_id, voice_id), consent_data)
    try:
        with transaction(resources.sessions) as session:
            # The clone job counts against the queue depth like any single job, and the voice against the cap,
            # both under the tenant's admission lock (taken by check_queue_depth) until the commit.
            check_queue_depth(session, tenant_id, settings.max_queued_per_tenant)
            admission.lock_tenant(session, tenant_id)
            admission.check_voice_count(session, tenant_id, settings.max_voices_per_tenant)
            voice, job = _insert(session, tenant_id, voice_id, caps.name, name, language, transcript, clip, second_s)
            session.flush()
            if method == consent.VERIFIED:
                assert statement_id is not None
                key = voices.consent_key(tenant_id, voice_id)
                consent.use_statement(session, tenant_id, statement_id, voice_id, g.api_key_id, key)
            elif method == consent.ATTESTED:
                consent.attest(session, tenant_id, voice_id, g.api_key_id)
            record = consent.record_view(session, consent.for_voice(session, voice_id))
    except VoicefarmError:
        for key in resources.storage.list_keys(voices.voice_prefix(tenant_id, voice_id)):
            resources.storage.delete(key)  # refused: the clip stored above belongs to no voice
        raise
    try_enqueue(resources.celery, job.id, "clone", job.engine, job.priority, sessions=resources.sessions)
    return jsonify(voice_view(voice, record) | {"job_id": job.id, "warnings": clip.warnings}), 202


def _insert(
    session: Session,
    tenant_id: str,
    voice_id: str,
    engine: str,
    name: str,
    language: str | None,
    transcript: str | None,
    clip: Any,
    second_s: float | None,
) -> tuple[Voice, Job]:
    """The voice's row and its clone job's."""
    voice = Voice(
        id=voice_id,
        tenant_id=tenant_id,
        name=name,
        engine=engine,
        language=language,
        transcript=transcript,
        upload_key=voices.upload_key(tenant_id, voice_id),
        duration_s=round(clip.duration_s, 3),
        details={"second_clip_s": second_s} if second_s is not None else None,
    )
    session.add(voice)
    job, _ = jobs.create_job(
        session,
        tenant_id=tenant_id,
        idempotency_key=None,
        kind="clone",
        engine=engine,
        text=transcript or "",
        voice=voice_id,
        mode="clone",
        language=language or "",
        priority=7,
    )
    return voice, job


def _second_clip_seconds(data: bytes) -> float:
    return _clip_seconds(data, "second_clip")


def _clip_seconds(data: bytes, field: str) -> float:
    try:
        return round(inspect_upload(data).duration_s, 3)
    except BadRequest as exc:
        raise BadRequest(f"{field}: {exc.message}", code=exc.code) from None


def _flag(value: str | None) -> bool:
    if value is None or value.strip().lower() in ("", "0", "false", "no"):
        return False
    if value.strip().lower() in ("1", "true", "yes"):
        return True
    raise BadRequest("consent_attested is true or false", code="invalid_consent_attested")


@bp.get("")
def index() -> Response:
    resources = farm()
    with resources.sessions() as session:
        cloned = voices.list_voices(session, authenticate(session))
        records = consent.record_views(session, [v.id for v in cloned])
        shown = [voice_view(v, records.get(v.id)) for v in cloned]
    return jsonify({"stock": stock_voices(resources), "voices": shown})


@bp.get("/<voice_id>")
def show(voice_id: str) -> Response:
    resources = farm()
    with resources.sessions() as session:
        voice = voices.get_voice(session, authenticate(session), voice_id)
        record = consent.record_view(session, consent.for_voice(session, voice.id))
    return jsonify(voice_view(voice, record))


@bp.delete("/<voice_id>")
def delete(voice_id: str) -> tuple[str, int]:
    resources = farm()
    with transaction(resources.sessions) as session:
        voices.delete_voice(session, resources.storage, voices.get_voice(session, authenticate(session), voice_id))
    return "", 204


def stock_voices(resources: Farm) -> list[dict[str, Any]]:
    """The stock voices of every engine on offer."""
    return [
        {
            "id": voice,
            "engine": caps.name,
            "kind": "stock",
            "default_for": [lang for lang, v in caps.default_voices.items() if v == voice],
        }
        for caps in resources.fleet.offered().values()
        for voice in caps.stock_voices
    ]


def voice_view(voice: Voice, consent_record: dict[str, Any] | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": voice.id,
        "kind": "cloned",
        "name": voice.name,
        "status": voice.status,
        "engine": voice.engine,
        "language": voice.language,
        "transcript": voice.transcript,
        "duration_s": voice.duration_s,
        "created_at": iso(voice.created_at),
        "ready_at": iso(voice.ready_at),
    }
    if voice.details:
        view["warnings"] = voice.details.get("warnings", [])
        view["profile_build_s"] = voice.details.get("build_s")
        if voice.details.get("second_clip_s") is not None:
            view["second_clip_s"] = voice.details["second_clip_s"]
    if voice.status == "failed":
        view["error"] = {"code": voice.error_code, "message": voice.error_message}
    view["consent"] = consent_record
    return view
