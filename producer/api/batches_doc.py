"""The batch operations' part of /openapi.json (producer/openapi.py merges it in)."""

from __future__ import annotations

from typing import Any

from shared.batches import lines as batch_lines
from shared.batches.lines import DEFAULT_FIELDS
from shared.pages import MAX_PAGE


def openapi_paths() -> dict[str, Any]:
    """The batch operations' part of /openapi.json."""
    authed: list[dict[str, list[str]]] = [{"bearer": []}]
    error = {"$ref": "#/components/schemas/Error"}

    def errors(*statuses: int) -> dict[str, Any]:
        return {str(s): {"description": "error", "content": {"application/json": {"schema": error}}} for s in statuses}

    def ok(description: str, status: int = 200) -> dict[str, Any]:
        content = {"application/json": {"schema": {"type": "object"}}}
        return {str(status): {"description": description, "content": content}}

    def path_id(name: str, max_length: int = 64) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": max_length}}

    line = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": batch_lines.LINE_ID.pattern},
            "text": {"type": "string"},
            **{f: {} for f in DEFAULT_FIELDS},
        },
        "required": ["text"],
    }
    body = {
        "type": "object",
        "required": ["lines"],
        "properties": {
            "lines": {"type": "array", "items": line},
            "defaults": {"type": "object", "properties": {f: {} for f in DEFAULT_FIELDS}},
            "name": {"type": "string", "maxLength": 200},
            "webhook_url": {"type": "string", "maxLength": 2000},
        },
    }
    upload = {"type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}
    events = (
        "With a `webhook_url`, the batch sends one signed event each time it finishes (every current line final): "
        "`batch.completed`, or `batch.canceled` for a canceled batch once its running lines are done. Body: "
        "`{id, event, created_at, completion, batch}`, where `batch` is the batch view plus `manifest: {url, "
        "csv_url, expires_at, api_path}` (presigned links to the manifest as it stood). The event id is the same "
        "on every attempt; a re-render reopens the batch and its next completion is a new event. Headers, "
        "signature, retries and attempt records are those of job webhooks."
    )
    return {
        "/v1/batches": {
            "post": {
                "summary": "Submit a batch of up to max_batch_lines lines (JSON, or a CSV/JSONL upload)",
                "description": events,
                "security": authed,
                "parameters": [
                    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 200}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": body},
                        "multipart/form-data": {"schema": upload},
                    },
                },
                "responses": ok("accepted", 202)
                | ok("already accepted under this Idempotency-Key")
                | errors(400, 401, 404, 409, 413, 422, 429, 503),
            },
            "get": {
                "summary": "List batches, newest first",
                "security": authed,
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": ok("a page of batches") | errors(400, 401, 404, 429, 503),
            },
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "summary": "A batch: counts by status, progress, audio seconds, ETA",
                "security": authed,
                "parameters": [path_id("batch_id")],
                "responses": ok("the batch") | errors(401, 404, 429, 503),
            }
        },
        "/v1/batches/{batch_id}/manifest": {
            "get": {
                "summary": "Each line's current take: job, status, URL, duration, sha256, attempts, error",
                "security": authed,
                "parameters": [
                    path_id("batch_id"),
                    {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "csv"]}},
                ],
                "responses": ok("the manifest") | errors(400, 401, 404, 429, 503),
            }
        },
        "/v1/batches/{batch_id}/archive": {
            "get": {
                "summary": "A streamed zip: {line_id}.{format} for every succeeded line, plus manifest.csv",
                "security": authed,
                "parameters": [path_id("batch_id")],
                "responses": {"200": {"description": "application/zip"}} | errors(401, 404, 429, 503),
            }
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": {
                "summary": "Cancel a batch: queued lines at once; running lines finish, then batch.canceled is sent",
                "security": authed,
                "parameters": [path_id("batch_id")],
                "responses": ok("the canceled batch") | errors(401, 404, 429, 503),
            }
        },
        "/v1/batches/{batch_id}/lines/{line_id}": {
            "post": {
                "summary": "Re-render one line with changed fields; manifest and archive then name the new take",
                "description": (
                    "The new take starts from the previous take's whole request (the line's own fields, its "
                    "post-production overrides included, over the defaults it was made with) and its engine, voice "
                    "and language; the changed fields win, and a field set to null goes back to the farm's default. "
                    "A finished batch is open again until the new take is final."
                ),
                "security": authed,
                "parameters": [path_id("batch_id"), path_id("line_id", 128)],
                "requestBody": {"required": True, "content": {"application/json": {"schema": line}}},
                "responses": ok("the new take", 202) | errors(400, 401, 404, 409, 413, 422, 429, 503),
            }
        },
        "/v1/batches/{batch_id}/webhook-deliveries": {
            "get": {
                "summary": "Every delivery attempt of the batch's webhook events, oldest first",
                "security": authed,
                "parameters": [path_id("batch_id")],
                "responses": ok("the attempts") | errors(401, 404, 429, 503),
            }
        },
    }
