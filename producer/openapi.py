"""The OpenAPI 3.1 description of API v1, served at /openapi.json and rendered at /docs.

Every request and response body is a pydantic model: the ones endpoints validate with (`JobRequest`,
`SpeechRequest`) and the answer models in producer/bodies.py, all turned into JSON Schema by pydantic in one
pass. What is written by hand is only the table of operations: method, path, summary, bodies, statuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from producer import bodies as b
from producer.api.join import JoinAnswer
from producer.api.lexicon import LexiconEntryView, LexiconList, LexiconPut
from producer.api.speech import SpeechRequest
from shared.pages import MAX_PAGE
from shared.schemas import JobRequest

REF = "#/components/schemas/{model}"
AUTHED = (401, 429, 503)
# Path parameters are ids of at most 64 characters, but for these.
PATH_MAX_LENGTH = {"line_id": 128}


@dataclass(frozen=True)
class Query:
    name: str
    schema: dict[str, Any]
    where: str = "query"


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    answer: type[BaseModel] | None = None
    status: int = 200
    body: type[BaseModel] | None = None
    form: type[BaseModel] | None = None
    errors: tuple[int, ...] = AUTHED
    params: tuple[Query, ...] = ()
    # Non-JSON answers: media type -> description.
    media: dict[str, str] = field(default_factory=dict)
    auth: bool = True
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str | None = None


_LIMIT = Query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE})
_IDEMPOTENCY_KEY = Query("Idempotency-Key", {"type": "string", "maxLength": 200}, "header")
BATCH_EVENTS = (
    "With a `webhook_url`, the batch sends one signed event each time it finishes (every current line final): "
    "`batch.completed`, or `batch.canceled` for a canceled batch once its running lines are done; then "
    "`batch.reviewed` when a review decision leaves it no line the QA gate flagged without one. Body: "
    "`{id, event, created_at, completion, batch}`, where `batch` is the batch view plus `manifest: {url, "
    "csv_url, expires_at, api_path}` (presigned links to the manifest as it stood). The event id is the same "
    "on every attempt; a re-render reopens the batch and its next completion is a new event. Headers, "
    "signature, retries and attempt records are those of job webhooks."
)
RERENDER = (
    "The new take starts from the previous take's whole request (the line's own fields, its post-production "
    "overrides included, over the defaults it was made with) and its engine, voice and language; the changed "
    "fields win, and a field set to null goes back to the farm's default. A finished batch is open again until "
    "the new take is final."
)
REVIEW = (
    "A line needs a decision when its current take succeeded with the QA gate's verdict needs_review and none is "
    "recorded. A decision names the calling key and the time, shows in the manifest's `review` column and in the "
    "batch's `pending_reviews`; a re-render makes a new take that goes through the gate again, with no decision. "
    "The decision that leaves a finished batch none pending sends `batch.reviewed`. 409 `review_not_needed`: the "
    "line's current take was not flagged."
)
OPERATIONS: tuple[Op, ...] = (
    Op("get", "/healthz", "Liveness", b.Health, auth=False, errors=()),
    Op("get", "/readyz", "Readiness: database, broker, storage, a live worker", b.Readiness, auth=False,
       errors=(), extra={"503": {"description": "not ready", "model": b.Readiness}}),
    Op("post", "/v1/jobs", "Submit a synthesis job", b.JobView, 202, body=JobRequest,
       errors=(400, 401, 403, 404, 409, 413, 429, 503), params=(_IDEMPOTENCY_KEY,),
       extra={"200": {"description": "already accepted under this Idempotency-Key", "model": b.JobView}}),
    Op("get", "/v1/jobs", "List jobs, newest first", b.JobList, errors=(400, 401, 404, 429, 503),
       params=(Query("status", {"type": "string"}), _LIMIT, Query("cursor", {"type": "string"}))),
    Op("get", "/v1/jobs/{job_id}", "A job's state and result", b.JobView, errors=(401, 404, 429, 503)),
    Op("post", "/v1/jobs/{job_id}/cancel", "Cancel a queued or running job", b.JobView,
       errors=(401, 404, 409, 429, 503)),
    Op("get", "/v1/jobs/{job_id}/audio", "The job's audio (or a redirect to it with ?redirect=1)",
       errors=(401, 404, 409, 429, 503), media={"application/octet-stream": "audio bytes"},
       params=(Query("redirect", {"type": "string", "enum": ["0", "1", "true"]}),),
       extra={"302": {"description": "presigned URL"}}),
    Op("get", "/v1/jobs/{job_id}/subtitles", "The job's subtitles, timed by its segments",
       errors=(400, 401, 404, 409, 429, 503), media={"application/x-subrip": "SRT", "text/vtt": "WebVTT"},
       params=(Query("format", {"type": "string", "enum": ["srt", "vtt"]}),)),
    Op("get", "/v1/jobs/{job_id}/webhook-deliveries", "Every delivery attempt of a job's webhook", b.Deliveries,
       errors=(401, 404, 429, 503)),
    Op("post", "/v1/batches", "Submit a batch of up to max_batch_lines lines (JSON, or a CSV/JSONL upload)",
       b.BatchView, 202, body=b.BatchRequest, form=b.BatchUpload, errors=(400, 401, 404, 409, 413, 422, 429, 503),
       params=(_IDEMPOTENCY_KEY,), description=BATCH_EVENTS,
       extra={"200": {"description": "already accepted under this Idempotency-Key", "model": b.BatchView}}),
    Op("get", "/v1/batches", "List batches, newest first", b.BatchList, errors=(400, 401, 404, 429, 503),
       params=(_LIMIT, Query("cursor", {"type": "string"}))),
    Op("get", "/v1/batches/{batch_id}", "A batch: counts by status, progress, audio seconds, ETA", b.BatchView,
       errors=(401, 404, 429, 503)),
    Op("get", "/v1/batches/{batch_id}/manifest",
       "Each line's current take: job, status, URL, duration, sha256, attempts, error", b.Manifest,
       errors=(400, 401, 404, 429, 503), params=(Query("format", {"type": "string", "enum": ["json", "csv"]}),)),
    Op("get", "/v1/batches/{batch_id}/archive",
       "A streamed zip: {line_id}.{format} for every succeeded line, plus manifest.csv",
       errors=(401, 404, 429, 503), media={"application/zip": "the archive, streamed"}),
    Op("post", "/v1/batches/{batch_id}/cancel",
       "Cancel a batch: queued lines at once; running lines finish, then batch.canceled is sent", b.BatchCanceled,
       errors=(401, 404, 429, 503)),
    Op("post", "/v1/batches/{batch_id}/lines/{line_id}",
       "Re-render one line with changed fields; manifest and archive then name the new take", b.BatchTake, 202,
       body=b.BatchLine, errors=(400, 401, 404, 409, 413, 422, 429, 503), description=RERENDER),
    Op("get", "/v1/batches/{batch_id}/review",
       "The lines the QA gate flagged that wait for a decision (?all=true: every current line)", b.ReviewQueue,
       errors=(400, 401, 404, 429, 503), params=(Query("all", {"type": "string", "enum": ["true", "false"]}),),
       description=REVIEW),
    Op("post", "/v1/batches/{batch_id}/lines/{line_id}/review",
       "Approve or reject a flagged line's current take", b.ReviewLine, body=b.ReviewDecision,
       errors=(400, 401, 404, 409, 413, 429, 503), description=REVIEW),
    Op("get", "/v1/batches/{batch_id}/webhook-deliveries",
       "Every delivery attempt of the batch's webhook events, oldest first", b.BatchDeliveries,
       errors=(401, 404, 429, 503)),
    Op("post", "/v1/voices", "Clone a voice from a 3-30 s reference clip", b.VoiceView, 202, form=b.CloneForm,
       errors=(400, 401, 403, 409, 413, 429, 503)),
    Op("get", "/v1/consent/statement", "A consent statement for the reference's speaker to read aloud",
       b.ConsentStatement, errors=(400, 401, 429, 503),
       params=(Query("language", {"type": "string", "enum": ["en", "zh", "ja"]}),)),
    Op("post", "/v1/verify", "Does a file carry the farm's watermark; its label for the tenant that made it",
       b.VerifyResult, form=b.VerifyForm, errors=(400, 401, 413, 429, 503)),
    Op("get", "/v1/voices", "Stock voices of the live engines and the tenant's cloned voices", b.VoiceList),
    Op("get", "/v1/voices/{voice_id}", "A cloned voice", b.VoiceView, errors=(401, 404, 429, 503)),
    Op("delete", "/v1/voices/{voice_id}", "Delete a cloned voice and its stored audio", status=204,
       errors=(401, 404, 429, 503)),
    Op("get", "/v1/instructions", "Instructions each live engine honours", b.Instructions),
    Op("get", "/v1/workers", "Live workers and what each serves", b.WorkerList),
    Op("post", "/v1/join", "A worker host joins the farm: bearer a join token (`voicefarm join-token`), not an API key",
       JoinAnswer, errors=(401, 404, 429, 503)),
    Op("get", "/v1/models", "Engines on offer (OpenAI-compatible model list)", b.ModelList),
    Op("post", "/v1/audio/speech", "OpenAI-compatible speech, streamed as it is synthesized", body=SpeechRequest,
       errors=(400, 401, 404, 409, 413, 429, 502, 503, 504),
       media={t: "audio, streamed" for t in ("audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/wav",
                                              "audio/pcm")}),
    Op("get", "/v1/lexicon", "The tenant's pronunciation lexicon, by language then term", LexiconList,
       errors=(400, 401, 404, 429, 503),
       params=(Query("language", {"type": "string", "enum": ["zh", "en", "ja"]}), _LIMIT,
               Query("cursor", {"type": "string"}))),
    Op("get", "/v1/lexicon/{language}/{term}", "One lexicon entry (the term percent-encoded)", LexiconEntryView,
       errors=(400, 401, 404, 429, 503)),
    Op("put", "/v1/lexicon/{language}/{term}", "Create or replace a lexicon entry", LexiconEntryView, 201,
       body=LexiconPut, errors=(400, 401, 409, 413, 429, 503),
       extra={"200": {"description": "replaced", "model": LexiconEntryView}}),
    Op("delete", "/v1/lexicon/{language}/{term}", "Delete a lexicon entry", status=204,
       errors=(400, 401, 404, 429, 503)),
    Op("get", "/v1/webhook-secret", "The calling key's webhook signing secret", b.WebhookSecret),
    Op("post", "/v1/webhook-secret/rotate", "Replace the calling key's webhook signing secret", b.WebhookSecret),
)  # fmt: skip


def _schemas() -> dict[str, Any]:
    models = {op.answer for op in OPERATIONS if op.answer} | {op.body for op in OPERATIONS if op.body}
    models |= {op.form for op in OPERATIONS if op.form} | {b.Error}
    models |= {x["model"] for op in OPERATIONS for x in op.extra.values() if "model" in x}
    requests = (JobRequest, SpeechRequest, LexiconPut, b.BatchRequest, b.BatchLine, b.ReviewDecision)
    mode = dict.fromkeys(requests, "validation")
    pairs = [(m, mode.get(m, "serialization")) for m in sorted(models, key=lambda m: m.__name__)]
    _, doc = models_json_schema(pairs, ref_template=REF)  # type: ignore[arg-type]
    return dict(doc.get("$defs", {}))


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": REF.format(model=model.__name__)}


def _operation(op: Op) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "operationId": f"{op.method}_{re.sub(r'[^a-z]+', '_', op.path)}"}
    if op.description is not None:
        out["description"] = op.description
    if op.auth:
        out["security"] = [{"bearer": []}]
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": max_length}}
        for name in re.findall(r"{(\w+)}", op.path)
        for max_length in [PATH_MAX_LENGTH.get(name, 64)]
    ] + [{"name": q.name, "in": q.where, "schema": q.schema} for q in op.params]
    if params:
        out["parameters"] = params
    content = {}
    if op.body is not None:
        content["application/json"] = {"schema": _ref(op.body)}
    if op.form is not None:
        content["multipart/form-data"] = {"schema": _ref(op.form)}
    if content:
        out["requestBody"] = {"required": True, "content": content}
    ok: dict[str, Any] = {"description": op.summary}
    if op.answer is not None:
        ok["content"] = {"application/json": {"schema": _ref(op.answer)}}
    elif op.media:
        ok["content"] = {t: {"schema": {"type": "string", "format": "binary"}} for t in op.media}
    responses: dict[str, Any] = {str(op.status): ok}
    for status, extra in op.extra.items():
        responses[status] = {"description": extra["description"]}
        if "model" in extra:
            responses[status]["content"] = {"application/json": {"schema": _ref(extra["model"])}}
    error = {"content": {"application/json": {"schema": _ref(b.Error)}}}
    responses |= {str(s): {"description": "error"} | error for s in op.errors}
    out["responses"] = responses
    return out


def openapi_document(version: str = "0.1.0") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "voicefarm", "version": version},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": _schemas()},
        "paths": paths,
    }
