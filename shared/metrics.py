"""Prometheus metrics of the whole farm, the same from every API process.

Nothing is counted in a process's memory, so any gunicorn worker answers a scrape with the same figures:
* gauges are read at scrape time from their source of truth: jobs by status, kind and engine, failed jobs by
  error code, live workers by engine, webhook deliveries by outcome (PostgreSQL), queue depth per queue (Redis:
  one pipelined LLEN per list of each known queue, never a scan of the keyspace);
* messages a worker received for a job its database does not know (another farm's, on a shared broker) are
  counted in Redis by the worker;
* latency and real-time-factor histograms are observed once per finished job by the worker that finished it,
  into Redis hashes (one per histogram; fields `<engine>|<bucket>`, `<engine>|sum`, `<engine>|count`), which the
  collector turns into Prometheus histograms.
A scrape's page is kept for `VOICEFARM_METRICS_CACHE_S` by each API process (`ScrapeCache`), so scrapes closer
together than that cost the database and Redis nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.engines import engine_names, fleet
from shared.models import Job, WebhookDelivery
from shared.queue import QA_QUEUE, WEBHOOK_QUEUE, engine_queue, queue_keys

log = logging.getLogger(__name__)
T = TypeVar("T")
PREFIX = "voicefarm:metrics"
UNKNOWN_JOBS_KEY = f"{PREFIX}:unknown_jobs"
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "queue_wait_seconds": ("time from submission to a worker starting the job", _SECONDS),
    "synthesis_seconds": ("time from a worker starting the job to its audio stored", _SECONDS),
    "end_to_end_seconds": ("time from submission to the job's audio stored", _SECONDS),
    "real_time_factor": ("compute seconds per second of audio", (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)),
}


def observe_job(client: redis.Redis, job: Job) -> None:
    """Observe a finished synthesis job's latencies once (a second call for the same job is a no-op)."""
    if job.kind != "synthesize" or job.status != "succeeded" or job.started_at is None or job.finished_at is None:
        return
    values = {
        "queue_wait_seconds": (job.started_at - job.created_at).total_seconds(),
        "synthesis_seconds": (job.finished_at - job.started_at).total_seconds(),
        "end_to_end_seconds": (job.finished_at - job.created_at).total_seconds(),
    }
    if job.result and isinstance(job.result.get("rtf"), int | float):
        values["real_time_factor"] = float(job.result["rtf"])
    if not client.set(f"{PREFIX}:seen:{job.id}", 1, nx=True, ex=86400):
        return
    pipe = client.pipeline()
    for name, value in values.items():
        key, buckets = f"{PREFIX}:{name}", HISTOGRAMS[name][1]
        for bound in (*buckets, float("inf")):
            if value <= bound:
                pipe.hincrby(key, f"{job.engine}|{bound:g}", 1)
        pipe.hincrbyfloat(key, f"{job.engine}|sum", max(value, 0.0))
        pipe.hincrby(key, f"{job.engine}|count", 1)
    pipe.execute()


class FarmCollector(Collector):
    """Collects the farm's metrics at scrape time (see the module docstring)."""

    def __init__(self, sessions: sessionmaker[Session], client: redis.Redis, live_s: float) -> None:
        self.sessions, self.redis, self.live_s = sessions, client, live_s

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            yield from self._database(session)
        try:
            yield from self._queues()
            yield from self._histograms()
        except redis.RedisError:
            log.warning("metrics: Redis unavailable; queue depth and histograms left out", exc_info=True)

    def _database(self, session: Session) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "voicefarm_jobs", "jobs by status, kind and engine", labels=["status", "kind", "engine"]
        )
        for status, kind, engine, n in session.execute(
            select(Job.status, Job.kind, Job.engine, func.count()).group_by(Job.status, Job.kind, Job.engine)
        ):
            jobs.add_metric([status, kind, engine], n)
        yield jobs
        errors = GaugeMetricFamily("voicefarm_job_errors", "failed jobs by error code", labels=["code", "engine"])
        for code, engine, n in session.execute(
            select(Job.error_code, Job.engine, func.count())
            .where(Job.status == "failed")
            .group_by(Job.error_code, Job.engine)
        ):
            errors.add_metric([code or "unknown", engine], n)
        yield errors
        workers = GaugeMetricFamily("voicefarm_live_workers", "workers with a fresh heartbeat", labels=["engine"])
        for engine, n in fleet.live_by_engine(session, self.live_s).items():
            workers.add_metric([engine], n)
        yield workers
        delivered = case((WebhookDelivery.status_code.between(200, 299), "delivered"), else_="failed")
        hooks = GaugeMetricFamily("voicefarm_webhook_deliveries", "webhook delivery attempts", labels=["outcome"])
        for outcome, n in session.execute(select(delivered, func.count()).group_by(delivered)):
            hooks.add_metric([outcome], n)
        yield hooks

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("voicefarm_queue_depth", "messages waiting in the broker", labels=["queue"])
        # Every queue the farm sends to: each engine's, webhook deliveries, the QA gate's checks. kombu keeps one
        # Redis list per priority step of each (shared.queue.queue_keys): one pipelined LLEN per list.
        names = [engine_queue(engine) for engine in engine_names()] + [WEBHOOK_QUEUE, QA_QUEUE]
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            for key in queue_keys(name):
                pipe.llen(key)
        lengths = pipe.execute()
        per_queue = len(queue_keys(""))
        for i, name in enumerate(names):
            depth.add_metric([name], sum(int(n) for n in lengths[i * per_queue : (i + 1) * per_queue]))
        yield depth
        unknown = CounterMetricFamily(
            "voicefarm_unknown_job_messages",
            "messages workers received for a job this farm's database does not know (another farm on the broker?)",
        )
        unknown.add_metric([], float(self.redis.get(UNKNOWN_JOBS_KEY) or 0))  # type: ignore[arg-type]
        yield unknown

    def _histograms(self) -> Iterator[Metric]:
        for name, (doc, buckets) in HISTOGRAMS.items():
            raw: dict[Any, Any] = self.redis.hgetall(f"{PREFIX}:{name}")  # type: ignore[assignment]
            fields = {k.decode(): float(v) for k, v in raw.items()}
            family = HistogramMetricFamily(f"voicefarm_{name}", doc, labels=["engine"])
            for engine in sorted({f.split("|")[0] for f in fields}):
                points = [(floatToGoString(b), fields.get(f"{engine}|{b:g}", 0.0)) for b in buckets]
                points.append(("+Inf", fields.get(f"{engine}|inf", 0.0)))
                family.add_metric([engine], points, sum_value=fields.get(f"{engine}|sum", 0.0))
            yield family


class JobObserver:
    """The worker's side: observe each job it finished (best effort; a Redis error costs one observation)."""

    def __init__(self, broker_url: str) -> None:
        self._redis = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)

    def observe(self, job: Job) -> None:
        try:
            observe_job(self._redis, job)
        except redis.RedisError:
            log.warning("job %s: latency not observed (broker unavailable)", job.id)

    def unknown_job(self) -> None:
        """Count a message for a job this farm's database does not know."""
        try:
            self._redis.incr(UNKNOWN_JOBS_KEY)
        except redis.RedisError:
            log.warning("an unknown job's message not counted (broker unavailable)")


class ScrapeCache:
    """A page (or any answer) kept for `ttl_s` seconds in this process: the first caller within the TTL computes
    it, the others wait for it and share it. Per process: gunicorn runs few workers, so a farm computes its figures
    at most (processes) times per TTL."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self._clock = ttl_s, clock
        self._lock = threading.Lock()
        self._value: Any = None
        self._expires = float("-inf")

    def get(self, compute: Callable[[], T]) -> T:
        with self._lock:
            if self._clock() >= self._expires:
                value = compute()
                self._value, self._expires = value, self._clock() + self.ttl_s
            result: T = self._value
            return result
