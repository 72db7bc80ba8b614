"""Liveness and readiness probes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import func, select, text

from producer.resources import farm
from shared.db import db_now
from shared.engines import fleet
from shared.jobs import state as jobs
from shared.metrics import ScrapeCache
from shared.models import Job

bp = Blueprint("health", __name__)
# A take waiting this long for the QA gate with no QA worker on it means the pool is missing or too small.
QA_WAIT_WARN_S = 300


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Cheap to call often: each process answers from its last check for `VOICEFARM_METRICS_CACHE_S`."""
    cache: ScrapeCache | None = current_app.extensions.get("voicefarm.readyz_cache")
    if cache is None:
        cache = current_app.extensions["voicefarm.readyz_cache"] = ScrapeCache(farm().settings.metrics_cache_s)
    body, status = cache.get(_readiness)
    return jsonify(body), status


def _readiness() -> tuple[dict[str, Any], int]:
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
            live = fleet.live_count(session, resources.settings.worker_live_s)
        if not live:
            raise LookupError("no live worker")
        return "ok"

    def broker() -> None:
        with resources.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    def waiting_checks() -> int:
        # Not a readiness failure: the API serves without a QA pool, but batch lines then wait in "checking".
        with resources.sessions() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(
                        Job.status == jobs.CHECKING,
                        Job.worker.is_(None),
                        Job.started_at < db_now(session) - timedelta(seconds=QA_WAIT_WARN_S),
                    )
                )
                or 0
            )

    check("database", database)
    check("broker", broker)
    check("storage", resources.storage.ping)
    check("workers", workers)
    ready = all(v == "ok" for v in checks.values())
    warnings = []
    if checks["database"] == "ok" and (waiting := waiting_checks()):
        warnings.append(
            f"{waiting} take(s) have waited over {QA_WAIT_WARN_S} s for the QA gate with no QA worker on them: "
            "is `voicefarm qa-worker` running, and are there enough of them?"
        )
    body = {"status": "ready" if ready else "unavailable", "checks": checks, "warnings": warnings}
    return body, 200 if ready else 503
