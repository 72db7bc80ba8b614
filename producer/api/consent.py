"""Consent statements: `GET /v1/consent/statement?language=en|zh|ja` issues one for the reference's speaker to read
aloud (shared/provenance/consent.py holds the statements, the records and the policies)."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from producer.auth import authenticate
from producer.resources import farm
from shared.db import transaction
from shared.provenance import consent

bp = Blueprint("consent", __name__, url_prefix="/v1/consent")


@bp.get("/statement")
def statement() -> Response:
    """A new statement with farm-chosen words in it; single use, it expires after `consent_statement_ttl_s`."""
    resources = farm()
    with transaction(resources.sessions) as session:
        tenant_id = authenticate(session)
        language = request.args.get("language") or "en"
        row = consent.issue_statement(
            session, tenant_id, g.api_key_id, language, resources.settings.consent_statement_ttl_s
        )
        view = consent.statement_view(row) | {"policy": consent.policy(session, tenant_id)}
    return jsonify(view)
