"""Review of the batch lines the QA gate flags: the queue, a decision on one line, and the web page that works
through them (shared/batches/review.py owns the decisions; a re-render is the batches blueprint's)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, render_template, request

from producer.api.batches import announce
from producer.auth import authenticate
from producer.resources import farm
from shared.batches import review
from shared.batches import service as batches
from shared.errors import BadRequest

bp = Blueprint("review", __name__)


@bp.get("/v1/batches/<batch_id>/review")
def queue(batch_id: str) -> Response:
    """The lines waiting for a decision, in file order; `?all=true` every current line."""
    resources = farm()
    every_line = _flag(request.args.get("all"))
    with resources.sessions() as session:
        batch = batches.get_batch(session, authenticate(session), batch_id)
        lines = review.queue(session, batch, every_line=every_line)
        labels = review.reviewers(session, lines)
        counts = review.counts(session, [batch.id])[batch.id]
    expiry_s = resources.settings.presign_expiry_s
    return jsonify(
        {
            "batch_id": batch.id,
            "name": batch.name,
            "reviews": counts.view(),
            "lines": [review.line_view(line, resources.storage, expiry_s, labels) for line in lines],
        }
    )


@bp.post("/v1/batches/<batch_id>/lines/<line_id>/review")
def decide(batch_id: str, line_id: str) -> Response:
    """Approve or reject a flagged line's current take, with an optional note."""
    resources = farm()
    with resources.sessions() as session, session.begin():
        tenant_id = authenticate(session)  # before the body is read: an anonymous body never is
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest('the body must be a JSON object: {"decision": "approved" | "rejected", "note"?}')
        unknown = sorted(set(body) - {"decision", "note"})
        if unknown:
            raise BadRequest(f"unknown fields: {', '.join(unknown)}", code="invalid_request")
        batch = batches.get_batch(session, tenant_id, batch_id)
        line, owed = review.decide(session, batch, line_id, body.get("decision"), body.get("note"), g.api_key_id)
        labels = review.reviewers(session, [line])
        shown = review.line_view(line, resources.storage, resources.settings.presign_expiry_s, labels)
    if owed:
        announce(resources, batch.id)  # the last pending decision: batch.reviewed
    return jsonify(shown)


@bp.get("/batches/<batch_id>/review")
def page(batch_id: str) -> str:
    """The review page; it asks the API with the key the web UI keeps, so it needs none to load."""
    return render_template("review.html", batch_id=batch_id)


def _flag(value: Any) -> bool:
    if value is None or value in ("", "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise BadRequest("all is true or false", code="invalid_all")
