"""Liveness and readiness probes."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, jsonify
from sqlalchemy import func, select, text

from producer.resources import farm
from shared.models import Worker, utcnow

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    resources = farm()
    checks: dict[str, str] = {}

    def check(name: str, fn: object) -> None:
        try:
            result = fn()  # type: ignore[operator]
            checks[name] = "ok" if result is None else str(result)
        except Exception as exc:  # each probe reports its own failure; readiness is their conjunction
            checks[name] = f"error: {type(exc).__name__}"

    def database() -> None:
        with resources.sessions() as session:
            session.execute(text("SELECT 1"))

    def workers() -> str:
        with resources.sessions() as session:
            live = session.scalar(
                select(func.count())
                .select_from(Worker)
                .where(Worker.last_seen > utcnow() - timedelta(seconds=resources.settings.worker_live_s))
            )
        if not live:
            raise LookupError("no live worker")
        return "ok"

    def broker() -> None:
        with resources.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    check("database", database)
    check("broker", broker)
    check("storage", resources.storage.ping)
    check("workers", workers)
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ready" if ready else "unavailable", "checks": checks}), 200 if ready else 503
