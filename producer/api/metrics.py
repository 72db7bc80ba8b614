"""`GET /metrics`: the farm's Prometheus metrics (shared/metrics.py), the same from every API process. For
operators only (an operator key, or `VOICEFARM_METRICS_TOKEN`); each process keeps a page for
`VOICEFARM_METRICS_CACHE_S`."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from producer.auth import authorize_operator
from producer.resources import farm
from shared.metrics import FarmCollector, ScrapeCache

bp = Blueprint("metrics", __name__)


def _registry() -> CollectorRegistry:
    registry: CollectorRegistry | None = current_app.extensions.get("voicefarm.metrics")
    if registry is None:
        resources = farm()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FarmCollector(resources.sessions, resources.streams, resources.settings.worker_live_s))
        current_app.extensions["voicefarm.metrics"] = registry
    return registry


def _cache() -> ScrapeCache:
    cache: ScrapeCache | None = current_app.extensions.get("voicefarm.metrics_cache")
    if cache is None:
        cache = ScrapeCache(farm().settings.metrics_cache_s)
        current_app.extensions["voicefarm.metrics_cache"] = cache
    return cache


@bp.get("/metrics")
def metrics() -> Response:
    resources = farm()
    authorize_operator(resources.sessions, resources.settings.metrics_token)
    page = _cache().get(lambda: generate_latest(_registry()))
    return Response(page, mimetype=CONTENT_TYPE_LATEST)
