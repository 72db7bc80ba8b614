"""Batches: creation (idempotent, dedup-aware), lookups, progress, manifests, cancel and re-rendering one line.

A batch is a `batches` row; each of its lines is a job row with `batch_id`, the caller's `line_id`, its position
(`line_no`) and its `take`. Re-rendering a line makes take n+1 and marks take n `replaced` (canceling it if it had not
started); manifests and archives show each line's current take. Job rows are created and changed through
shared/jobs/state.py only; the scheduler (shared/batches/scheduler.py) sends queued lines to the broker in turn. Whether
a batch is finished is settled with each line change (shared/jobs/settle.py); its final event is a webhook like a job's.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared import admission, pages, tenants
from shared.audio.codecs import EXTENSIONS
from shared.batches import review
from shared.batches.lines import Line
from shared.config import Settings
from shared.db import db_now
from shared.errors import Conflict, NotFound, TooManyRequests
from shared.jobs import dedup
from shared.jobs import settle as batch_state
from shared.jobs import state as jobs
from shared.jobs.views import iso, webhook_view
from shared.models import Batch, Job, new_id, utcnow
from shared.queue import BATCH_PRIORITY
from shared.storage import Storage
from shared.text import lexicon

LOOKUP_THREADS = 8
CHUNK = 500
MANIFEST_COLUMNS = (
    "line_id", "job_id", "take", "status", "file", "url", "format", "duration_s", "sha256", "attempts", "cached",
    "error_code", "error_message", "qa", "qa_takes", "review",
)  # fmt: skip


def is_batch_id(value: str) -> bool:
    return jobs.is_job_id(value)


def get_batch(session: Session, tenant_id: str, batch_id: str) -> Batch:
    batch = session.get(Batch, batch_id) if is_batch_id(batch_id) else None
    if batch is None or batch.tenant_id != tenant_id:
        raise NotFound(f"batch {batch_id} not found", code="batch_not_found")
    return batch


def list_batches(session: Session, tenant_id: str, *, limit: int = 50, before: str | None = None) -> list[Batch]:
    """Newest first; `before` is the id of the last batch of the previous page."""
    query = select(Batch).where(Batch.tenant_id == tenant_id)
    return pages.newest_first(
        session, query, Batch, tenant_id=tenant_id, before=before, limit=limit, is_id=is_batch_id, what="batch"
    )


def check_backlog(session: Session, tenant_id: str, adding: int, limit: int) -> None:
    if limit <= 0:
        return
    queued = int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == tenant_id, Job.batch_id.is_not(None), Job.status == "queued")
        )
        or 0
    )
    if queued + adding > limit:
        raise TooManyRequests(
            f"{queued} batch lines are queued and this batch adds {adding}; the limit is {limit} queued batch lines",
            retry_after=60,
            code="batch_queue_full",
        )


def _insert_batch(session: Session, values: dict[str, Any]) -> str | None:
    """Insert unless the tenant's idempotency key is taken (then None); concurrent inserts wait on the unique
    index, so the loser finds the winner's committed row."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(Batch).values(**values).on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
    batch_id = session.scalar(statement.returning(Batch.id))
    return None if batch_id is None else str(batch_id)


def create_batch(
    session: Session,
    storage: Storage,
    settings: Settings,
    *,
    tenant_id: str,
    api_key_id: str | None,
    lines: list[Line],
    defaults: dict[str, Any],
    name: str = "",
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> tuple[Batch, bool]:
    """Create a batch and its lines; with a used idempotency key, the batch it made (409 for another request).
    The lines' rows (lexicon snapshots, dedup keys) and their cache answers are worked out first; then, under the
    tenant's admission lock (shared/admission.py), the backlog is counted, every line included (those the cache
    answers too), and the batch inserted: concurrent batches of a tenant never overshoot its backlog."""
    if idempotency_key:
        existing = _by_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return _same_request(existing, request_hash), False
    new_batch_id = new_id()
    rows = line_rows(session, settings, tenant_id, api_key_id, new_batch_id, lines)
    cached = answer_from_cache(session, storage, tenant_id, rows) if settings.dedup_cache else {}
    admission.lock_tenant(session, tenant_id)
    if idempotency_key and (existing := _by_key(session, tenant_id, idempotency_key)) is not None:
        return _same_request(existing, request_hash), False  # a concurrent request with the key committed first
    check_backlog(session, tenant_id, len(lines), settings.max_queued_batch_lines_per_tenant)
    values = {
        "id": new_batch_id,
        "tenant_id": tenant_id,
        "api_key_id": api_key_id,
        "status": "active",
        "name": name,
        "idempotency_key": idempotency_key,
        "request_hash": request_hash,
        "defaults": defaults,
        "webhook_url": webhook_url,
        "line_count": len(lines),
        "created_at": db_now(session),  # the database's clock, as its lines' (the scheduler's order)
    }
    batch_id = _insert_batch(session, values)
    if batch_id is None:
        existing = _by_key(session, tenant_id, idempotency_key or "")
        if existing is None:
            raise Conflict(
                "a request with this Idempotency-Key is in progress; retry it", code="idempotency_key_in_use"
            )
        return _same_request(existing, request_hash), False
    for start in range(0, len(rows), CHUNK * 4):
        jobs.create_lines(session, rows[start : start + CHUNK * 4], cached)
    batch = session.get(Batch, batch_id)
    assert batch is not None
    return batch, True


def _by_key(session: Session, tenant_id: str, key: str) -> Batch | None:
    return session.scalar(select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == key))


def _same_request(batch: Batch, request_hash: str | None) -> Batch:
    if batch.request_hash != request_hash:
        raise Conflict("Idempotency-Key was already used for a different batch", code="idempotency_key_reused")
    return batch


def line_rows(
    session: Session,
    settings: Settings,
    tenant_id: str,
    api_key_id: str | None,
    batch_id: str,
    lines: Iterable[Line],
    take: int = 1,
    priority: int = BATCH_PRIORITY,
) -> list[dict[str, Any]]:
    lines = list(lines)
    lexicon.attach(session, tenant_id, (line.fields for line in lines))  # snapshot: part of each line's dedup key
    tenants.apply_disclosure(session, tenant_id, (line.fields for line in lines))  # asked, else the tenant's
    profiles = dedup.profile_keys(session, tenant_id, {str(line.fields["voice"]) for line in lines})
    tenant_qa = dedup.tenant_thresholds(session, tenant_id)  # a gated line's verdict depends on them
    return [
        {
            **line.fields,
            "id": new_id(),
            "tenant_id": tenant_id,
            "api_key_id": api_key_id,
            "batch_id": batch_id,
            "line_id": line.id,
            "line_no": line.number,
            "take": take,
            "request": line.request,
            "priority": priority,
            "cache_key": dedup.cache_key(settings, line.fields, profiles[str(line.fields["voice"])], tenant_qa),
        }
        for line in lines
    ]


def answer_from_cache(
    session: Session, storage: Storage, tenant_id: str, rows: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Results for the rows whose audio is stored already, by row id: each names its source's object, shared,
    not copied (one HEAD request per distinct object checks that it is there)."""
    keys = {str(row["cache_key"]) for row in rows}
    found: dict[str, Job] = {}
    ordered = sorted(keys)
    for start in range(0, len(ordered), CHUNK):
        found.update(dedup.sources(session, tenant_id, set(ordered[start : start + CHUNK])))
    hits = [(row, found[row["cache_key"]]) for row in rows if row["cache_key"] in found]
    if not hits:
        return {}
    present = dedup.stored(storage, {source.id: source for _, source in hits}.values(), LOOKUP_THREADS)
    return {row["id"]: dedup.shared_result(source) for row, source in hits if source.id in present}


@dataclass
class Progress:
    counts: dict[str, int]
    audio_s: float
    first_started: datetime | None
    last_finished: datetime | None
    # Flagged lines (the QA gate's needs_review) and the decisions on them (shared/batches/review.py).
    reviews: review.Counts = field(default_factory=review.Counts)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in jobs.TERMINAL)


def progress(session: Session, batch_ids: list[str]) -> dict[str, Progress]:
    """Counts by status of each batch's current lines, audio seconds done, and when work started and last ended."""
    found = {b: Progress({s: 0 for s in jobs.STATUSES}, 0.0, None, None) for b in batch_ids}
    if not batch_ids:
        return found
    rows = session.execute(
        select(
            Job.batch_id,
            Job.status,
            func.count(),
            func.sum(Job.result["duration_s"].as_float()),
            func.min(Job.started_at),
            func.max(Job.finished_at),
        )
        .where(Job.batch_id.in_(batch_ids), Job.replaced.is_(False))
        .group_by(Job.batch_id, Job.status)
    ).all()
    for batch_id, status, count, audio, started, finished in rows:
        p = found[str(batch_id)]
        p.counts[str(status)] = int(count)
        if status == "succeeded":
            p.audio_s = float(audio or 0.0)
        if started is not None:
            started = _aware(started)
            p.first_started = started if p.first_started is None else min(p.first_started, started)
        if finished is not None and status != "canceled":
            finished = _aware(finished)
            p.last_finished = finished if p.last_finished is None else max(p.last_finished, finished)
    for batch_id, reviews in review.counts(session, batch_ids).items():
        found[batch_id].reviews = reviews
    return found


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def current_lines(session: Session, batch_id: str) -> list[Job]:
    """Each line's current take, in file order."""
    query = select(Job).where(Job.batch_id == batch_id, Job.replaced.is_(False))
    return list(session.scalars(query.order_by(Job.line_no, Job.id)))


def current_line(session: Session, batch_id: str, line_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.batch_id == batch_id, Job.line_id == line_id, Job.replaced.is_(False)))
    if job is None:
        raise NotFound(f"batch {batch_id} has no line {line_id!r}", code="line_not_found")
    return job


def cancel(session: Session, batch: Batch) -> int:
    """Cancel the batch: every queued line at once; running lines finish. Returns the lines canceled now.
    Lines first, then the batch row: the order every line change takes (shared/jobs/settle.py), so a line
    finishing meanwhile cannot deadlock with the cancel."""
    canceled = jobs.cancel_queued_lines(session, batch.id)
    session.execute(
        update(Batch)
        .where(Batch.id == batch.id, Batch.status == "active")
        .values(status="canceled", canceled_at=utcnow())
    )
    batch_state.settle(session, [batch.id])  # finished now unless lines are still running: `batch.canceled`
    session.refresh(batch)
    return canceled


def rerender(
    session: Session, storage: Storage, settings: Settings, batch: Batch, old: Job, line: Line, api_key_id: str | None
) -> Job:
    """A new take of one line (sent at interactive priority by the caller); the old take is retired."""
    if batch.status == "canceled":
        raise Conflict(f"batch {batch.id} is canceled", code="batch_canceled")
    # A new take is a new queued line: it counts against the backlog like a batch's lines, atomically.
    admission.lock_tenant(session, batch.tenant_id)
    check_backlog(session, batch.tenant_id, 1, settings.max_queued_batch_lines_per_tenant)
    if not jobs.replace_line(session, old.id, old.take):
        raise Conflict(f"line {line.id!r} is being re-rendered by another request; retry", code="line_busy")
    # Open again until the new take is final; one answered from the cache finishes it again at once.
    batch_state.reopen(session, batch.id)
    row = line_rows(session, settings, batch.tenant_id, api_key_id, batch.id, [line], old.take + 1, priority=5)[0]
    cached = answer_from_cache(session, storage, batch.tenant_id, [row]) if settings.dedup_cache else {}
    jobs.create_lines(session, [row], cached)
    job = session.get(Job, row["id"])
    assert job is not None
    return job


def view(batch: Batch, p: Progress) -> dict[str, Any]:
    """The JSON shape of a batch, shared by the API and the batch's webhook event."""
    total, done = p.total, p.done
    remaining = total - done
    rate = None
    if p.first_started and p.last_finished and done:
        span = (p.last_finished - p.first_started).total_seconds()
        finished = p.counts.get("succeeded", 0) + p.counts.get("failed", 0)
        rate = finished / span if span > 0 and finished else None
    if batch.status == "canceled":
        status = "canceled"
    elif remaining:
        status = "running" if p.first_started else "queued"
    else:
        status = "succeeded" if p.counts.get("succeeded", 0) == total else "failed"
    shown: dict[str, Any] = {
        "id": batch.id,
        "name": batch.name,
        "status": status,
        "done": remaining == 0,
        "lines": total,
        "counts": p.counts,
        # Lines the QA gate flagged that wait for a person's decision (GET /v1/batches/{id}/review).
        "pending_reviews": p.reviews.pending,
        "reviews": p.reviews.view(),
        "progress": round(done / total, 4) if total else 1.0,
        "audio_seconds": round(p.audio_s, 3),
        "lines_per_second": round(rate, 4) if rate else None,
        "eta_s": round(remaining / rate, 1) if rate and remaining and batch.status != "canceled" else None,
        "defaults": batch.defaults or {},
        "webhook_url": batch.webhook_url,
        "created_at": iso(batch.created_at),
        "canceled_at": iso(batch.canceled_at),
        "finished_at": iso(batch.finished_at),
    }
    if batch.webhook_url:
        shown["webhook"] = {"event": batch.finished_event, **webhook_view(batch)}
    return shown


def extension(fmt: str) -> str:
    return EXTENSIONS.get(fmt, fmt)


# File name stems a line may not have in a batch's manifest and archive: the archive's own files (`batch.<srt|vtt>`,
# `manifest.csv`) and names Windows will not extract.
RESERVED_STEMS = frozenset(
    {"batch", "manifest", "con", "prn", "aux", "nul"} | {f"{d}{i}" for d in ("com", "lpt") for i in range(1, 10)}
)


def file_stems(lines: list[Job]) -> dict[str, str]:
    """Each line's file name stem (by job id), unique in its archive whatever the line ids: the line id itself,
    unless it is hidden or `.`/`..` (leading dots dropped, `line` if nothing is left), reserved (RESERVED_STEMS),
    or the same as an earlier line's but for case (archives are unpacked on case-insensitive file systems too);
    those get `~N` added, the first N free. A line id cannot hold `~`, so such a name never meets a line's own."""
    taken: set[str] = set()
    stems: dict[str, str] = {}
    for job in lines:
        stem = str(job.line_id or job.id)
        if stem.startswith(".") or stem.casefold() in RESERVED_STEMS or stem.casefold() in taken:
            base = stem.lstrip(".") or "line"
            number = 1
            while f"{base}~{number}".casefold() in taken:
                number += 1
            stem = f"{base}~{number}"
        taken.add(stem.casefold())
        stems[job.id] = stem
    return stems


def manifest_rows(lines: list[Job], storage: Storage, expiry_s: int, urls: bool = True) -> list[dict[str, Any]]:
    rows = []
    stems = file_stems(lines)
    for job in lines:
        result = job.result or {}
        ok = job.status == "succeeded" and bool(result.get("key"))
        rows.append(
            {
                "line_id": job.line_id,
                "job_id": job.id,
                "take": job.take,
                "status": job.status,
                "file": f"{stems[job.id]}.{extension(result.get('format') or job.format)}" if ok else None,
                "url": storage.presigned_url(result["key"], expiry_s) if ok and urls else None,
                "format": result.get("format") or job.format,
                "duration_s": result.get("duration_s"),
                "sha256": result.get("sha256"),
                "attempts": job.attempts,
                "cached": bool(result.get("cached")),
                "error_code": job.error_code,
                "error_message": job.error_message,
                # The QA gate (shared/qa.py): "passed", or "needs_review" for a line none of whose takes passed.
                "qa": _qa_verdict(result.get("qa")),
                "qa_takes": (result.get("qa") or {}).get("takes"),
                # A person's decision on a flagged line: "approved", "rejected", or empty (none, or not flagged).
                "review": job.review,
            }
        )
    return rows


def _qa_verdict(report: dict[str, Any] | None) -> str | None:
    if not report:
        return None
    return "passed" if report.get("passed") else "needs_review"


def manifest_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def manifest_key(batch: Batch, fmt: str) -> str:
    return f"batches/{batch.tenant_id}/{batch.id}/manifest-{batch.completions}.{fmt}"


def store_manifest(session: Session, storage: Storage, batch: Batch, expiry_s: int) -> dict[str, str]:
    """The manifest of a finished batch as it stands, stored for its final event (JSON and CSV, per completion) and
    presigned, so a receiver fetches it without an API key: `{"json": url, "csv": url}`. Stored again on every
    attempt, so the line URLs inside are fresh when a retry comes hours later."""
    rows = manifest_rows(current_lines(session, batch.id), storage, expiry_s)
    document = {"batch_id": batch.id, "completion": batch.completions, "lines": rows}
    urls = {}
    for fmt, data in (("json", json.dumps(document).encode()), ("csv", manifest_csv(rows).encode())):
        key = manifest_key(batch, fmt)
        storage.put(key, data, fmt)
        urls[fmt] = storage.presigned_url(key, expiry_s)
    return urls
