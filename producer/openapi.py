"""The OpenAPI 3.1 description of API v1, served at /openapi.json.

Request bodies come from the pydantic schemas the endpoints validate with, so the document cannot drift from
what is enforced.
"""

from __future__ import annotations

from typing import Any

from producer.api.batches import openapi_paths as batch_paths
from shared.schemas import JobRequest

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": "error", "content": {"application/json": {"schema": ERROR}}} for s in statuses}


def _json(description: str, status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}}


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}


def openapi_document(version: str = "0.1.0") -> dict[str, Any]:
    job_request = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    authed: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "voicefarm", "version": version},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "JobRequest": job_request,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
            },
        },
        "paths": batch_paths()
        | {
            "/healthz": {"get": {"summary": "Liveness", "responses": _json("alive")}},
            "/readyz": {"get": {"summary": "Readiness", "responses": _json("ready") | _json("not ready", 503)}},
            "/v1/jobs": {
                "post": {
                    "summary": "Submit a synthesis job",
                    "security": authed,
                    "parameters": [
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 200}}
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}},
                    },
                    "responses": _json("accepted", 202)
                    | _json("already accepted under this Idempotency-Key")
                    | _errors(400, 401, 404, 409, 413, 429, 503),
                },
                "get": {
                    "summary": "List jobs, newest first",
                    "security": authed,
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": _json("a page of jobs") | _errors(400, 401, 404, 429, 503),
                },
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "A job's state and result",
                    "security": authed,
                    "parameters": [_id("job_id")],
                    "responses": _json("the job") | _errors(401, 404, 429, 503),
                }
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": {
                    "summary": "Cancel a queued or running job",
                    "security": authed,
                    "parameters": [_id("job_id")],
                    "responses": _json("the canceled job") | _errors(401, 404, 409, 429, 503),
                }
            },
            "/v1/jobs/{job_id}/audio": {
                "get": {
                    "summary": "The job's audio (or a redirect to it with ?redirect=1)",
                    "security": authed,
                    "parameters": [_id("job_id")],
                    "responses": {"200": {"description": "audio bytes"}, "302": {"description": "presigned URL"}}
                    | _errors(401, 404, 409, 429, 503),
                }
            },
            "/v1/voices": {
                "post": {
                    "summary": "Clone a voice from a 3-30 s reference clip",
                    "security": authed,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["audio"],
                                    "properties": {
                                        "audio": {"type": "string", "format": "binary"},
                                        "transcript": {"type": "string", "maxLength": 1000},
                                        "name": {"type": "string", "maxLength": 200},
                                        "language": {"type": "string", "enum": ["zh", "en", "ja"]},
                                    },
                                }
                            }
                        },
                    },
                    "responses": _json("clone job accepted", 202) | _errors(400, 401, 413, 429, 503),
                },
                "get": {
                    "summary": "Stock and cloned voices",
                    "security": authed,
                    "responses": _json("voices") | _errors(401, 429, 503),
                },
            },
            "/v1/voices/{voice_id}": {
                "get": {
                    "summary": "A cloned voice",
                    "security": authed,
                    "parameters": [_id("voice_id")],
                    "responses": _json("the voice") | _errors(401, 404, 429, 503),
                },
                "delete": {
                    "summary": "Delete a cloned voice and its stored audio",
                    "security": authed,
                    "parameters": [_id("voice_id")],
                    "responses": {"204": {"description": "deleted"}} | _errors(401, 404, 429, 503),
                },
            },
            "/v1/instructions": {
                "get": {
                    "summary": "Instructions each engine honours",
                    "security": authed,
                    "responses": _json("catalogue") | _errors(401, 429, 503),
                }
            },
            "/v1/workers": {
                "get": {
                    "summary": "Live workers",
                    "security": authed,
                    "responses": _json("workers") | _errors(401, 429, 503),
                }
            },
            "/v1/webhook-secret": {
                "get": {
                    "summary": "The calling key's webhook signing secret",
                    "security": authed,
                    "responses": _json("signing secret") | _errors(401, 429, 503),
                }
            },
            "/v1/webhook-secret/rotate": {
                "post": {
                    "summary": "Replace the calling key's webhook signing secret",
                    "security": authed,
                    "responses": _json("new signing secret") | _errors(401, 429, 503),
                }
            },
            "/v1/jobs/{job_id}/webhook-deliveries": {
                "get": {
                    "summary": "Every delivery attempt of a job's webhook",
                    "security": authed,
                    "parameters": [_id("job_id")],
                    "responses": _json("delivery attempts") | _errors(401, 404, 429, 503),
                }
            },
        },
    }
