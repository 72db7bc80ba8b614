"""What the farm offers right now: instructions per engine and the live workers."""

from __future__ import annotations

from datetime import timedelta
from importlib import import_module
from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from producer.auth import authenticate
from producer.resources import farm
from shared.models import Worker, utcnow
from worker.engines import create_engine, engine_names

bp = Blueprint("catalog", __name__, url_prefix="/v1")
# A worker whose heartbeat is older than this is presumed dead.
WORKER_STALE_S = 45


@bp.get("/instructions")
def instructions() -> Response:
    with farm().sessions() as session:
        authenticate(session)
    engines: dict[str, Any] = {}
    for name in engine_names():
        caps = create_engine(name).capabilities
        module = import_module(type(create_engine(name)).__module__)
        catalogue = getattr(module, "INSTRUCTIONS", None)
        engines[name] = {
            "honoured": catalogue if catalogue is not None else [{"text": text} for text in caps.instructions],
            "free_form": "passed to the model"
            if catalogue is not None
            else "reported in result.warnings when not honoured",
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
