"""The JSON shape of a job, shared by the API and webhook deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.models import Batch, Job, WebhookDelivery
from shared.provenance import disclosure
from shared.storage import Storage


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def job_view(job: Job, storage: Storage, expiry_s: int) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "engine": job.engine,
        "progress": round(job.progress, 3),
        "attempts": job.attempts,
        "text": job.text,
        "voice": job.voice,
        "mode": job.mode,
        "instruct": job.instruct,
        "language": job.language,
        "speed": job.speed,
        "format": job.format,
        "priority": job.priority,
        # The spoken AI notice it gets: its own, or its tenant's default when it did not say.
        "disclosure": disclosure.position_of(job.options),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }
    if job.batch_id is not None:
        view["batch"] = {"id": job.batch_id, "line_id": job.line_id, "take": job.take}
    if job.webhook_url:
        view["webhook"] = {"url": job.webhook_url, **webhook_view(job)}
    if job.status == "failed":
        view["error"] = {"code": job.error_code, "message": job.error_message}
    if job.status == "succeeded" and job.result:
        result = {k: v for k, v in job.result.items() if not k.endswith("key")}
        if "key" in job.result:  # clone jobs store a profile, not audio to hand out
            result["url"] = storage.presigned_url(job.result["key"], expiry_s)
        view["result"] = result
    return view


def webhook_view(subject: Job | Batch) -> dict[str, Any]:
    """Where a job's or a batch's webhook event stands: its attempts so far and how they ended."""
    return {
        "attempts": subject.webhook_attempts,
        "delivered_at": iso(subject.webhook_delivered_at),
        "error": subject.webhook_error,
        "gave_up_at": iso(subject.webhook_gave_up_at),
    }


def delivery_view(row: WebhookDelivery) -> dict[str, Any]:
    """One webhook delivery attempt, as the API shows it (a job's or a batch's)."""
    return {
        "event_id": row.event_id,
        "attempt": row.attempt,
        "host": row.url_host,
        "address": row.address,
        "status_code": row.status_code,
        "error": row.error,
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "duration_ms": None if row.duration_ms is None else round(row.duration_ms, 1),
    }
