"""`GET /metrics`: the farm's Prometheus metrics (shared/metrics.py), the same from every API process."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from producer.resources import farm
from shared.metrics import FarmCollector

bp = Blueprint("metrics", __name__)


def _registry() -> CollectorRegistry:
    registry: CollectorRegistry | None = current_app.extensions.get("voicefarm.metrics")
    if registry is None:
        resources = farm()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FarmCollector(resources.sessions, resources.streams, resources.settings.worker_live_s))
        current_app.extensions["voicefarm.metrics"] = registry
    return registry


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(_registry()), mimetype=CONTENT_TYPE_LATEST)
