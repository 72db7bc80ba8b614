"""What the farm offers right now: instructions per live engine and the live workers."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from producer.auth import authenticate
from producer.resources import farm
from shared.engines import catalogue, fleet

bp = Blueprint("catalog", __name__, url_prefix="/v1")


@bp.get("/instructions")
def instructions() -> Response:
    resources = farm()
    with resources.sessions() as session:
        authenticate(session)
    engines = {
        name: {
            "honoured": catalogue(name).instructions,
            # cosyvoice reads free-form instructions itself; kokoro reports what it could not honour.
            "free_form": catalogue(name).free_form,
            "live": name in resources.fleet.live(),
        }
        for name in resources.fleet.offered()
    }
    return jsonify({"engines": engines})


@bp.get("/workers")
def workers() -> Response:
    resources = farm()
    with resources.sessions() as session:
        authenticate(session)
        rows = fleet.live_rows(session, resources.settings.worker_live_s)
    return jsonify(
        {
            "workers": [
                {
                    "name": w.name,
                    "engine": w.engine,
                    "model": w.model,
                    "device": w.device,
                    "languages": (w.capabilities or {}).get("languages", []),
                    "modes": (w.capabilities or {}).get("modes", []),
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
