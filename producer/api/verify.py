"""`POST /v1/verify`: does a file carry the farm's watermark, and, for the tenant whose job made it, what its label
says (shared/provenance/verify.py; docs/reference/api.md).

Any tenant may ask about any file: the answer is the detector's verdict and score. The label (the `AIGC` tag's
fields) and the job it names are told only to the tenant that owns that job, so a file cannot be used to learn
whether another tenant's job exists. The body is capped like a voice upload (`max_upload_bytes`,
producer/intake.py).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from producer.auth import authenticate
from producer.resources import farm
from shared.errors import BadRequest
from shared.jobs.views import iso
from shared.models import Job
from shared.provenance import verify as verifier

bp = Blueprint("verify", __name__, url_prefix="/v1/verify")


@bp.post("")
def verify() -> Response:
    resources = farm()
    with resources.sessions() as session:
        tenant_id = authenticate(session)
    upload = request.files.get("audio")
    if upload is None:
        raise BadRequest("send the file as multipart field 'audio'", code="missing_audio")
    pcm_rate = _pcm_rate(request.form.get("format"), request.form.get("sample_rate"))
    verdict = verifier.verify(upload.read(), pcm_rate=pcm_rate)
    body: dict[str, Any] = verdict.view()
    produce_id = (verdict.label or {}).get("ProduceID")
    if produce_id and (verdict.label or {}).get("ContentProducer") == resources.settings.label_producer:
        with resources.sessions() as session:
            job = session.get(Job, produce_id)
            if job is not None and job.tenant_id == tenant_id:
                body["label"] = verdict.label
                body["job"] = {"id": job.id, "status": job.status, "created_at": iso(job.created_at)}
    return jsonify(body)


def _pcm_rate(fmt: str | None, rate: str | None) -> int | None:
    """Raw PCM (the farm's `pcm`: 16-bit little-endian mono, no container) needs its rate said; 24000 if not."""
    if not fmt:
        return None
    if fmt != "pcm":
        raise BadRequest("format is only needed for raw PCM: send format=pcm or leave it out", code="invalid_format")
    try:
        return int(rate or 24000)
    except ValueError:
        raise BadRequest("sample_rate must be a whole number of Hz", code="invalid_sample_rate") from None
