"""Database tables: the source of truth for tenants, keys, jobs and workers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from shared.keys import new_webhook_secret


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend: SQLite hands back naive values, which are UTC here."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The tenant's QA gate thresholds (shared/qa.py), over the farm's defaults and under a job's or batch's own.
    qa: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # The highest job priority the tenant may ask for: the default (5) unless an operator entitled it to more.
    max_priority: Mapped[int] = mapped_column(Integer, default=5, server_default="5")
    # Consent before cloning (shared/provenance/consent.py): "verified" (a statement read aloud, checked),
    # "attested" (the key holder asserts it) or "off".
    consent_policy: Mapped[str] = mapped_column(String(16), default="verified", server_default="verified")
    # The spoken AI notice a job gets when it does not say (shared/provenance/disclosure.py): none, start or end.
    disclosure: Mapped[str] = mapped_column(String(8), default="none", server_default="none")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # Signs this key's webhook deliveries (HMAC-SHA256); shown at creation and by GET /v1/webhook-secret.
    # Text: room for the secret encrypted at rest.
    webhook_secret: Mapped[str] = mapped_column(Text, default=new_webhook_secret)
    # "plain" keys use the API; "operator" keys also reach the operator endpoints (/metrics).
    role: Mapped[str] = mapped_column(String(16), default="plain", server_default="plain")


class Batch(Base):
    """A set of lines submitted together; each line is a job row with this `batch_id` (shared/batches/service.py)."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key", name="uq_batches_tenant_idempotency"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), default=None)
    # "active" until canceled; whether it is done is counted from its lines.
    status: Mapped[str] = mapped_column(String(16), default="active")
    name: Mapped[str] = mapped_column(String(200), default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    defaults: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    line_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    canceled_at: Mapped[datetime | None] = mapped_column(default=None)
    # Set in the transaction that gives the last open line a final state (shared/jobs/settle.py); a re-render
    # clears it. Each time it is set `completions` counts up: the sequence number of the batch's final event,
    # `finished_event` (batch.completed or batch.canceled), which the webhook columns below track as for jobs.
    # A review decision that leaves a finished batch no flagged line undecided counts it up too: batch.reviewed.
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    completions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    finished_event: Mapped[str | None] = mapped_column(String(32), default=None)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    webhook_delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    webhook_error: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_gave_up_at: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency"),
        UniqueConstraint("batch_id", "line_id", "take", name="uq_jobs_batch_line_take"),
        Index("ix_jobs_tenant_cache_key", "tenant_id", "cache_key"),
        # "Has this batch an open line?", asked each time one of its lines reaches a final state.
        Index("ix_jobs_batch_id_status", "batch_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # "synthesize" speaks `text`; "clone" builds the profile of the voice named in `voice`.
    kind: Mapped[str] = mapped_column(String(16), default="synthesize", server_default="synthesize")
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    engine: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    voice: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))
    instruct: Mapped[str | None] = mapped_column(Text, default=None)
    language: Mapped[str] = mapped_column(String(8))
    speed: Mapped[float] = mapped_column(Float, default=1.0)
    format: Mapped[str] = mapped_column(String(8), default="wav")
    sample_rate: Mapped[int | None] = mapped_column(Integer, default=None)
    # Post-production of the whole line (shared/audio/mastering.Options as a dict): loudness, trim, fit, channels.
    options: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    seed: Mapped[int | None] = mapped_column(Integer, default=None)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    # Claims so far; the current one is the fencing token every write of that attempt must present.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Attempts whose worker vanished (lease expired): the one count that decides quarantine.
    lost_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Transient failures handed back while a dependency was down; never counted as failed attempts.
    transient_retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    # When the job's current message reached the broker; NULL until a send is known to have worked.
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    webhook_delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    webhook_error: Mapped[str | None] = mapped_column(Text, default=None)
    # Set once the event's attempts are used up or its target is refused: no more deliveries are tried.
    webhook_gave_up_at: Mapped[datetime | None] = mapped_column(default=None)
    # The key that submitted the job: its webhook secret signs the job's deliveries.
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), default=None)
    # A batch line: its batch, the caller's line id, its position, and which take of the line it is (a re-render
    # makes take n+1 and marks the earlier one `replaced`). The scheduler sends batch lines
    # (shared/batches/scheduler.py).
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), default=None, index=True)
    line_id: Mapped[str | None] = mapped_column(String(128), default=None)
    line_no: Mapped[int | None] = mapped_column(Integer, default=None)
    # A batch line's request as validated (its own fields over the batch's defaults): a re-render starts from it.
    request: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    take: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    replaced: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # SHA-256 of everything that shapes the audio (shared/jobs/dedup.py): a succeeded job with the same key in the
    # tenant answers a new one from its stored audio.
    cache_key: Mapped[str | None] = mapped_column(String(64), default=None)
    # The QA gate (shared/qa.py): NULL for none, else the request's own thresholds; and each take it checked.
    qa: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    qa_takes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    # Times a QA check of the current take lost its lease (its QA worker died or ran past its limit).
    check_lapses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The stored object this job's result names, which a cache hit shares with the job that made it.
    object_key: Mapped[str | None] = mapped_column(String(512), default=None, index=True)
    # A person's decision on a batch line the QA gate flagged (needs_review): "approved", "rejected" or NULL
    # (none yet), with its note, the API key that made it and when. Written by shared/batches/review.py only; a
    # re-render is a new row (take n+1), so a new take starts with no decision.
    review: Mapped[str | None] = mapped_column(String(16), default=None)
    review_note: Mapped[str | None] = mapped_column(Text, default=None)
    reviewed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    reviewed_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookDelivery(Base):
    """One attempt at delivering one webhook event, of a job or of a batch, whatever its outcome."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("(job_id IS NULL) <> (batch_id IS NULL)", name="ck_webhook_deliveries_one_subject"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), default=None, index=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), default=None, index=True)
    event_id: Mapped[str] = mapped_column(String(64), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    url_host: Mapped[str] = mapped_column(String(255))
    address: Mapped[str | None] = mapped_column(String(64), default=None)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    duration_ms: Mapped[float | None] = mapped_column(Float, default=None)


class Voice(Base):
    """A cloned voice: its normalised reference clip and the engine profile built from it, both in S3."""

    __tablename__ = "voices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: "v_" + new_id()[:24])
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | ready | failed
    engine: Mapped[str] = mapped_column(String(32))
    language: Mapped[str | None] = mapped_column(String(8), default=None)
    transcript: Mapped[str | None] = mapped_column(Text, default=None)
    upload_key: Mapped[str] = mapped_column(String(300))
    reference_key: Mapped[str | None] = mapped_column(String(300), default=None)
    profile_key: Mapped[str | None] = mapped_column(String(300), default=None)
    duration_s: Mapped[float | None] = mapped_column(Float, default=None)
    details: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(default=None)


class Consent(Base):
    """A consent statement the farm issued, and then the record of the voice that used it: the recording, what
    Whisper heard, the scores, when, and which key. An attested consent is a row with no statement. Written by
    shared/provenance/consent.py only."""

    __tablename__ = "consents"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: "cs_" + new_id()[:24])
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # "verified" (a statement read aloud) or "attested" (asserted by the key holder)
    method: Mapped[str] = mapped_column(String(16))
    # issued -> pending (used by a voice, not yet checked) -> verified | refused; or attested
    status: Mapped[str] = mapped_column(String(16))
    language: Mapped[str | None] = mapped_column(String(8), default=None)
    statement: Mapped[str | None] = mapped_column(Text, default=None)
    # The farm-chosen words in the statement: each must be heard in the recording.
    words: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    issued_by: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    voice_id: Mapped[str | None] = mapped_column(ForeignKey("voices.id", ondelete="CASCADE"), default=None, index=True)
    used_by: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), default=None)
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    recording_key: Mapped[str | None] = mapped_column(String(300), default=None)
    transcript: Mapped[str | None] = mapped_column(Text, default=None)
    # The checks' values and thresholds: text error, words missed, speaker similarity.
    scores: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    checked_at: Mapped[datetime | None] = mapped_column(default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)


class Worker(Base):
    """One row per live worker process, refreshed by its heartbeat."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    engine: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200), default="")
    device: Mapped[str] = mapped_column(String(32), default="cpu")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)
    audio_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    compute_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    # What the worker serves, published when it registers: shared.engines.Capabilities as JSON.
    capabilities: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class JoinToken(Base):
    """A token that lets a worker host join the farm (POST /v1/join; shared/engines/join.py owns this table):
    stored as a SHA-256 digest, listed by its label, revocable, with an optional expiry."""

    __tablename__ = "join_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    uses: Mapped[int] = mapped_column(Integer, default=0)


class LexiconEntry(Base):
    """How a tenant wants a word or phrase said (shared/text/lexicon.py); jobs snapshot the entries their text uses."""

    __tablename__ = "lexicon_entries"
    __table_args__ = (UniqueConstraint("tenant_id", "language", "term", name="uq_lexicon_tenant_language_term"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    language: Mapped[str] = mapped_column(String(8))
    term: Mapped[str] = mapped_column(String(64))
    pronunciation: Mapped[str] = mapped_column(String(256))
    # pinyin (zh), ipa or arpabet (en), kana (ja)
    alphabet: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class FarmIdentity(Base):
    """The farm's identity (shared/farm.py) where neither VOICEFARM_FARM_ID nor a data dir names it: one row,
    written by `voicefarm migrate`, so that every process of a farm on the same database claims the same id."""

    __tablename__ = "farm_identity"

    farm_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
