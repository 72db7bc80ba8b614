"""What the farm offers right now: instructions per engine and the live workers."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from producer.auth import authenticate
from producer.resources import farm
from shared.models import Worker, utcnow
from worker.engines import engine_names, instruction_catalogue

bp = Blueprint("catalog", __name__, url_prefix="/v1")
# A worker whose heartbeat is older than this is presumed dead.
WORKER_STALE_S = 45


@bp.get("/instructions")
def instructions() -> Response:
    with farm().sessions() as session:
        authenticate(session)
    engines = {
        name: {
            "honoured": instruction_catalogue(name),
            # cosyvoice reads free-form instructions itself; kokoro reports what it could not honour.
            "free_form": "passed to the model" if name == "cosyvoice" else "reported in result.warnings",
        }
        for name in engine_names()
    }
    return jsonify({"engines": engines})


@bp.get("/workers")
def workers() -> Response:
    resources = farm()
    with resources.sessions() as session:
        authenticate(session)
        rows = session.scalars(
            select(Worker).where(Worker.last_seen > utcnow() - timedelta(seconds=WORKER_STALE_S)).order_by(Worker.name)
        ).all()
    return jsonify(
        {
            "workers": [
                {
                    "name": w.name,
                    "engine": w.engine,
                    "model": w.model,
                    "device": w.device,
                    "started_at": w.started_at.isoformat(),
                    "last_seen": w.last_seen.isoformat(),
                    "jobs_done": w.jobs_done,
                    "audio_seconds": round(w.audio_seconds, 2),
                    # Real-time factor: compute time per second of audio (below 1 is faster than real time).
                    "mean_rtf": round(w.compute_seconds / w.audio_seconds, 3) if w.audio_seconds else None,
                }
                for w in rows
            ]
        }
    )
