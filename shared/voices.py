"""Cloned voices: rows, object keys, the lookups both the API and the worker make, and deletion (the voice's
clips, reference, profiles and consent recording go with it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.errors import Conflict, NotFound
from shared.models import Voice, utcnow
from shared.provenance import consent
from shared.storage import Storage


def voice_prefix(tenant_id: str, voice_id: str) -> str:
    return f"voices/{tenant_id}/{voice_id}/"


def upload_key(tenant_id: str, voice_id: str) -> str:
    return voice_prefix(tenant_id, voice_id) + "upload"


def second_clip_key(tenant_id: str, voice_id: str) -> str:
    """An optional second clip of the speaker, as uploaded: outputs' similarity is measured against it."""
    return voice_prefix(tenant_id, voice_id) + "second-clip"


def consent_key(tenant_id: str, voice_id: str) -> str:
    """The consent recording as uploaded: the statement read aloud by the reference's speaker."""
    return voice_prefix(tenant_id, voice_id) + "consent"


# Per clone attempt, so a stale attempt never overwrites the objects the voice row names.
def reference_key(tenant_id: str, voice_id: str, attempt: int) -> str:
    return voice_prefix(tenant_id, voice_id) + f"reference.a{attempt}.wav"


def profile_key(tenant_id: str, voice_id: str, engine: str, attempt: int) -> str:
    return voice_prefix(tenant_id, voice_id) + f"profile.a{attempt}.{engine}"


def is_voice_id(name: str) -> bool:
    return name.startswith("v_")


def _well_formed(voice_id: str) -> bool:
    return len(voice_id) <= 32 and voice_id[2:].isalnum() and voice_id[2:].isascii()


def get_voice(session: Session, tenant_id: str, voice_id: str) -> Voice:
    # Anything that is not an id is refused before it reaches the database.
    voice = session.get(Voice, voice_id) if is_voice_id(voice_id) and _well_formed(voice_id) else None
    if voice is None or voice.tenant_id != tenant_id:
        raise NotFound(f"voice {voice_id} not found", code="voice_not_found")
    return voice


def ready_voice(session: Session, tenant_id: str, voice_id: str, engine: str) -> Voice:
    voice = get_voice(session, tenant_id, voice_id)
    if voice.status != "ready":
        raise Conflict(f"voice {voice_id} is {voice.status}; it can speak once it is ready", code="voice_not_ready")
    if voice.engine != engine:
        raise Conflict(f"voice {voice_id} was cloned for engine {voice.engine}", code="voice_engine_mismatch")
    return voice


def list_voices(session: Session, tenant_id: str) -> list[Voice]:
    return list(session.scalars(select(Voice).where(Voice.tenant_id == tenant_id).order_by(Voice.created_at)))


def mark_ready(session: Session, voice_id: str, **values: Any) -> None:
    session.execute(update(Voice).where(Voice.id == voice_id).values(status="ready", ready_at=utcnow(), **values))


def mark_failed(session: Session, voice_id: str, code: str, message: str) -> None:
    session.execute(
        update(Voice)
        .where(Voice.id == voice_id, Voice.status != "ready")
        .values(status="failed", error_code=code, error_message=message)
    )


def delete_voice(session: Session, storage: Storage, voice: Voice) -> None:
    """Delete a voice: every object under its prefix (upload, second clip, references, profiles, consent
    recording), any consent recording stored elsewhere, its consent record, then its row."""
    keys = set(storage.list_keys(voice_prefix(voice.tenant_id, voice.id)))
    keys |= set(consent.delete_for_voice(session, voice.id))
    for key in sorted(keys):
        storage.delete(key)
    session.delete(voice)
