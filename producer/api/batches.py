"""Batches: submit thousands of lines at once (JSON, CSV or JSONL), follow them, fetch a manifest or a streamed
zip of the audio, cancel, re-render one line, and list the attempts at the batch's webhook event."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import IO, Any

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy.orm import Session
from zipstream import ZIP_STORED, ZipStream

from producer.auth import authenticate
from producer.intake import job_body_bytes
from producer.resources import Farm, farm
from shared import jsonbody, voices
from shared.audio import subtitles
from shared.batches import lines as batch_lines
from shared.batches import reader as batch_reader
from shared.batches import service as batches
from shared.batches.lines import DEFAULT_FIELDS, EngineInfo, Line
from shared.batches.scheduler import safe_top_up
from shared.batches.service import manifest_csv, manifest_rows
from shared.config import Settings
from shared.engines import Capabilities
from shared.errors import BadRequest, PayloadTooLarge, VoicefarmError
from shared.jobs.idempotency import request_hash
from shared.jobs.views import delivery_view, job_view
from shared.models import Batch, Job
from shared.pages import id_cursor, page_limit
from shared.queue import enqueue_batch_webhook, try_enqueue
from shared.schemas import JobRequest
from shared.storage import Storage
from shared.webhooks import deliveries
from shared.webhooks.targets import check_webhook_url

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")
log = logging.getLogger(__name__)


@bp.post("")
def submit() -> tuple[Response, int]:
    resources = farm()
    settings = resources.settings
    key = _idempotency_key()
    # A body over max_batch_bytes was refused unread (producer/intake.py, 413 batch_body_too_large). The key is
    # known before a byte of the body is read, and the body is read outside any transaction.
    with resources.sessions() as session:
        tenant_id = authenticate(session)
    rows, defaults, meta = _read_body(settings)
    # DNS, within webhook_resolve_timeout_s, before the transaction holds a connection.
    webhook_url = check_webhook_url(meta["webhook_url"], settings) if meta.get("webhook_url") else None
    with resources.sessions() as session, session.begin():
        lines = batch_lines.validate(
            rows,
            defaults,
            _engine_picker(resources, session, tenant_id),
            _voice_checker(resources, session, tenant_id),
            settings.max_text_chars,
        )
        digest = request_hash(
            "batch",
            {
                "lines": [{"id": line.id, **line.fields} for line in lines],
                "defaults": defaults,
                "name": meta.get("name") or "",
                "webhook_url": webhook_url,
            },
        )
        batch, created = batches.create_batch(
            session,
            resources.storage,
            settings,
            tenant_id=tenant_id,
            api_key_id=g.api_key_id,
            lines=lines,
            defaults=defaults,
            name=meta.get("name") or "",
            webhook_url=webhook_url,
            idempotency_key=key,
            request_hash=digest,
        )
        view = batches.view(batch, batches.progress(session, [batch.id])[batch.id])
    if created:
        safe_top_up(resources.sessions, resources.celery, settings.batch_window_per_worker, settings.worker_live_s)
        announce(resources, batch.id)  # every line answered from the cache: finished at once
    return jsonify(view), 202 if created else 200


def announce(resources: Farm, batch_id: str) -> None:
    """Send the batch's final event when this request finished the batch; best effort: the reconciler sends any
    event owed and never attempted."""
    try:
        with resources.sessions() as session:
            owed = deliveries.batch_owed(session, batch_id)
        if owed:
            enqueue_batch_webhook(resources.celery, batch_id)
    except Exception:
        log.warning("batch %s: could not queue its webhook; the reconciler will", batch_id, exc_info=True)


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and (len(key) > 200 or not key.isprintable() or not key.isascii()):
        raise BadRequest(
            "Idempotency-Key must be at most 200 printable ASCII characters", code="invalid_idempotency_key"
        )
    return key


def _read_body(settings: Settings) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """(rows, defaults, {name, webhook_url}) from JSON, a multipart upload, or a raw CSV/JSONL body, each read as
    a stream and refused (413 batch_too_large) at line max_batch_lines + 1 (shared/batches/reader.py)."""
    mimetype = request.mimetype
    max_lines, line_chars = settings.max_batch_lines, job_body_bytes(settings)
    if mimetype == "application/json":
        rows, payload = batch_reader.read_json(request.stream, max_lines, line_chars)
        unknown = sorted(set(payload) - {"defaults", "name", "webhook_url"})
        if unknown:
            raise BadRequest(f"unknown fields: {', '.join(unknown)}", code="invalid_request")
        meta = {"name": payload.get("name"), "webhook_url": payload.get("webhook_url")}
        defaults = batch_lines.check_defaults(payload.get("defaults"))
    elif mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise BadRequest("send the lines as multipart field 'file' (CSV or JSONL)", code="missing_file")
        name = (upload.filename or "").lower()
        rows = _parse(upload.stream, "jsonl" if name.endswith((".jsonl", ".ndjson")) else "csv", settings)
        form = request.form
        defaults = _form_defaults(form.get("defaults"))
        defaults |= batch_lines.check_defaults({k: form[k] for k in DEFAULT_FIELDS if form.get(k)})
        meta = {"name": form.get("name"), "webhook_url": form.get("webhook_url")}
    elif mimetype in ("text/csv", "application/jsonl", "application/x-ndjson", "application/x-jsonlines"):
        rows = _parse(request.stream, "csv" if mimetype == "text/csv" else "jsonl", settings)
        defaults = batch_lines.check_defaults({k: v for k in DEFAULT_FIELDS if (v := request.args.get(k))})
        meta = {"name": request.args.get("name"), "webhook_url": request.args.get("webhook_url")}
    else:
        raise BadRequest("send JSON, a multipart 'file' upload, text/csv or application/jsonl", code="invalid_body")
    if not isinstance(meta.get("name") or "", str) or len(meta.get("name") or "") > 200:
        raise BadRequest("name is a string of at most 200 characters", code="invalid_name")
    if meta.get("webhook_url") is not None and not isinstance(meta["webhook_url"], str):
        raise BadRequest("webhook_url must be a string", code="invalid_webhook_url")
    if not rows:
        raise BadRequest("the batch has no lines", code="empty_batch")
    if len(rows) > max_lines:
        raise PayloadTooLarge(
            f"the batch has {len(rows)} lines; the limit is max_batch_lines={max_lines}", code="batch_too_large"
        )
    return rows, defaults, meta


def _parse(stream: IO[bytes], kind: str, settings: Settings) -> list[dict[str, Any]]:
    read = batch_reader.read_jsonl if kind == "jsonl" else batch_reader.read_csv
    rows, problems = read(stream, settings.max_batch_lines, job_body_bytes(settings))
    if problems:
        raise batch_lines.InvalidLines(f"the {kind.upper()} file cannot be read", details={"lines": problems})
    return rows


def _form_defaults(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = jsonbody.loads(raw)
    except ValueError:
        raise BadRequest("defaults must be a JSON object", code="invalid_defaults") from None
    return batch_lines.check_defaults(value)


def _engine_picker(resources: Farm, session: Session, tenant_id: str) -> Callable[[JobRequest], EngineInfo]:
    """A line's engine, as for single jobs (shared/engines/fleet.py): the one it names, else its cloned voice's,
    else the one with its stock voice, else the default; looked up once per (engine, voice)."""
    picked: dict[tuple[str | None, str | None], Capabilities] = {}

    def pick(req: JobRequest) -> EngineInfo:
        key = (req.engine, req.voice)
        if key not in picked:
            voice_engine = None
            if req.voice and voices.is_voice_id(req.voice) and req.engine is None:
                with contextlib.suppress(VoicefarmError):  # an unknown voice is reported by the voice check
                    voice_engine = voices.get_voice(session, tenant_id, req.voice).engine
            picked[key] = resources.fleet.for_request(req.engine, req.voice, voice_engine)
        return picked[key]

    return pick


def _voice_checker(resources: Farm, session: Session, tenant_id: str) -> Callable[[str, str], VoicefarmError | None]:
    def problem(voice: str, engine: str) -> VoicefarmError | None:
        if voices.is_voice_id(voice):
            try:
                voices.ready_voice(session, tenant_id, voice, engine)
            except VoicefarmError as exc:
                return exc
            return None
        if voice not in resources.fleet.engine(engine).stock_voices:
            return BadRequest(f"unknown voice {voice!r}", code="unknown_voice")
        return None

    return problem


@bp.get("")
def index() -> Response:
    resources = farm()
    limit = page_limit(request.args)
    with resources.sessions() as session:
        tenant_id = authenticate(session)
        page = batches.list_batches(session, tenant_id, limit=limit, before=request.args.get("cursor"))
        figures = batches.progress(session, [b.id for b in page])
    return jsonify(
        {
            "batches": [batches.view(b, figures[b.id]) for b in page],
            "next_cursor": id_cursor(page, limit),
        }
    )


@bp.get("/<batch_id>")
def show(batch_id: str) -> Response:
    resources = farm()
    with resources.sessions() as session:
        batch = batches.get_batch(session, authenticate(session), batch_id)
        return jsonify(batches.view(batch, batches.progress(session, [batch.id])[batch.id]))


@bp.post("/<batch_id>/cancel")
def cancel(batch_id: str) -> Response:
    resources = farm()
    with resources.sessions() as session, session.begin():
        batch = batches.get_batch(session, authenticate(session), batch_id)
        canceled = batches.cancel(session, batch)
    announce(resources, batch.id)  # finished by the cancel when no line was running
    with resources.sessions() as session:
        view = batches.view(batch, batches.progress(session, [batch.id])[batch.id])
    return jsonify(view | {"canceled_now": canceled})


@bp.get("/<batch_id>/webhook-deliveries")
def webhook_deliveries(batch_id: str) -> Response:
    """Every delivery attempt of the batch's final events, oldest first."""
    with farm().sessions() as session:
        batch = batches.get_batch(session, authenticate(session), batch_id)
        rows = deliveries.deliveries(session, Batch, batch.id)
    return jsonify({"batch_id": batch.id, "deliveries": [delivery_view(row) for row in rows]})


@bp.get("/<batch_id>/manifest")
def manifest(batch_id: str) -> Response:
    resources = farm()
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise BadRequest("format must be json or csv", code="invalid_format")
    with resources.sessions() as session:
        batch = batches.get_batch(session, authenticate(session), batch_id)
        lines = batches.current_lines(session, batch.id)
    rows = manifest_rows(lines, resources.storage, resources.settings.presign_expiry_s)
    if fmt == "json":
        return jsonify({"batch_id": batch.id, "lines": rows})
    response = Response(manifest_csv(rows), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="batch-{batch.id}-manifest.csv"'
    return response


@bp.get("/<batch_id>/archive")
def archive(batch_id: str) -> Response:
    """A zip streamed as it is built: one object is fetched at a time, nothing is assembled in memory or on disk.
    Audio is stored uncompressed (it does not compress); the manifest names each file, each name unique in the
    zip whatever the line ids (shared/batches/service.py `file_stems`)."""
    resources = farm()
    with resources.sessions() as session:
        batch = batches.get_batch(session, authenticate(session), batch_id)
        lines = batches.current_lines(session, batch.id)
    sub_format = request.args.get("subtitles", "srt")
    if sub_format not in ("srt", "vtt", "none"):
        raise BadRequest("subtitles must be srt, vtt or none", code="invalid_subtitle_format")
    rows = manifest_rows(lines, resources.storage, resources.settings.presign_expiry_s, urls=False)
    storage = resources.storage
    stream = ZipStream(compress_type=ZIP_STORED)
    # With each line's subtitles, one file for the whole batch played line after line in manifest order.
    whole: list[subtitles.Cue] = []
    offset = 0.0
    for job, row in zip(lines, rows, strict=True):
        if row["file"]:
            assert job.result is not None
            stream.add(_object(storage, job.result["key"]), row["file"])
            if sub_format != "none":
                cues = subtitles.for_result(job.text, job.result)
                stem = row["file"].rsplit(".", 1)[0]
                stream.add(subtitles.render(cues, sub_format).encode("utf-8"), f"{stem}.{sub_format}")
                whole.extend(subtitles.shifted(cues, offset))
                offset += float(job.result.get("duration_s", 0.0))
    if whole:
        stream.add(subtitles.render(whole, sub_format).encode("utf-8"), f"batch.{sub_format}")
    stream.add(manifest_csv(rows).encode("utf-8"), "manifest.csv")
    response = Response(iter(stream), mimetype="application/zip")
    response.headers["Content-Disposition"] = f'attachment; filename="batch-{batch.id}.zip"'
    return response


def _object(storage: Storage, key: str) -> Iterator[bytes]:
    # Opened only when the zip reaches this file, and streamed through chunk by chunk.
    yield from storage.open(key)


@bp.post("/<batch_id>/lines/<line_id>")
def rerender(batch_id: str, line_id: str) -> tuple[Response, int]:
    """A new take of one line with changed fields; the rest of the batch is kept."""
    resources = farm()
    settings = resources.settings
    with resources.sessions() as session, session.begin():
        tenant_id = authenticate(session)
        batch = batches.get_batch(session, tenant_id, batch_id)
        old = batches.current_line(session, batch.id, line_id)
        changes = request.get_json(silent=True)
        if not isinstance(changes, dict):
            raise BadRequest("the body must be a JSON object of the fields to change", code="invalid_json")
        asked, merged = batch_lines.rerender_request(old, batch.defaults or {}, changes)
        valid = batch_lines.validate(
            [merged | {"id": old.line_id}],
            {},
            _engine_picker(resources, session, tenant_id),
            _voice_checker(resources, session, tenant_id),
            settings.max_text_chars,
        )[0]
        line = Line(valid.id, old.line_no or 1, valid.fields, asked)
        job = batches.rerender(session, resources.storage, settings, batch, old, line, g.api_key_id)
    if job.status == "queued":
        # A re-render is interactive: it goes straight to the broker, ahead of the batch's other lines.
        try_enqueue(resources.celery, job.id, job.kind, job.engine, job.priority, len(job.text), resources.sessions)
    else:
        announce(resources, batch.id)  # answered from the cache: the batch is finished again
    return jsonify(job_view(job, resources.storage, settings.presign_expiry_s) | _line_fields(job)), 202


def _line_fields(job: Job) -> dict[str, Any]:
    return {"batch_id": job.batch_id, "line_id": job.line_id, "take": job.take}
