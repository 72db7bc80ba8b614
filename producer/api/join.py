"""POST /v1/join: a worker host joins the farm with a join token (shared/engines/join.py).

The token is the only credential it takes (an API key is refused: it is no join token); the answer holds what a
worker needs to run (services, their worker credentials, farm-wide settings) and no API key. A farm that publishes
nothing for workers (no `join.json` in its data dir: it does not listen on a network address) answers 404
`join_disabled`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, Field

from producer.resources import farm
from shared.db import transaction
from shared.engines import join
from shared.errors import NotFound, Unauthorized

bp = Blueprint("join", __name__, url_prefix="/v1")


class JoinAnswer(BaseModel):
    """What a joining worker host is told (shared/engines/join.py)."""

    settings: dict[str, Any] = Field(
        description="Settings the worker uses over its own: the database, broker and storage on the farm's listen "
        "address with a worker's credentials, and the farm-wide settings (leases, attempts, farm id, labels)."
    )
    defaults: dict[str, Any] = Field(description="Settings the worker uses unless its host sets them (the engine).")
    files: dict[str, str] = Field(
        description="The labels' C2PA signing certificate and key (PEM), when the farm signs."
    )
    token: dict[str, str] = Field(description="The join token used: its id, label and name.")


@bp.post("/join")
def join_farm() -> Response:
    resources = farm()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <join token>'", code="missing_join_token")
    with transaction(resources.sessions) as session:
        used = join.use_token(session, token.strip())
    try:
        answer = join.join_answer(resources.settings)
    except join.JoinUnavailable as exc:
        raise NotFound(
            f"this farm publishes nothing for workers to join by: {exc} (run it with VOICEFARM_LISTEN=ADDR)",
            code="join_disabled",
        ) from None
    answer["token"] = {"id": used.id, "label": used.label, "name": used.name}
    response = jsonify(answer)
    response.headers["Cache-Control"] = "no-store"
    return response
