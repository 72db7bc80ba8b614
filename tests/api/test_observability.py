"""Observability: /metrics in the Prometheus format (the same from every API process), JSON log lines with job
and tenant ids, and Flower, unmodified, reading the farm's Celery task events."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from datetime import timedelta

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from producer.app import create_app
from shared import metrics, tenants
from shared.config import Settings
from shared.db import transaction
from shared.jobs import state as jobs
from shared.logs import JsonFormatter
from shared.models import Job, Worker, utcnow
from tests.support.fixtures import auth, new_api_key
from tests.support.livefarm import LiveFarm, live_farm  # noqa: F401  (fixture)
from voicefarm.ops import services


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_come_from_the_farm_not_the_process(
    app: Flask, client: FlaskClient, api_key: str, farm_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    headers = auth(api_key)
    for text in ("One.", "Two."):
        assert client.post("/v1/jobs", json={"text": text}, headers=headers).status_code == 202
    now = utcnow()
    with transaction(sessions) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        done, _ = jobs.create_job(session, tenant_id=tenant.id, idempotency_key=None, engine="kokoro", text="Hi.",
                                  voice="jf_alpha", mode="clone", language="en", format="wav")  # fmt: skip
        done.status, done.created_at = "succeeded", now - timedelta(seconds=3)
        done.started_at, done.finished_at, done.result = now - timedelta(seconds=2), now, {"rtf": 0.4}
        bad, _ = jobs.create_job(session, tenant_id=tenant.id, idempotency_key=None, engine="kokoro", text="Hi!",
                                 voice="jf_alpha", mode="clone", language="en", format="wav")  # fmt: skip
        bad.status, bad.error_code = "failed", "synthesis_rejected"
        session.add(Worker(name="kokoro-cpu0@m", engine="kokoro", device="cpu"))
    import redis

    from shared.queue import enqueue_check, make_celery

    enqueue_check(make_celery(farm_settings), done.id)  # a take waiting for the QA gate
    client_redis = redis.Redis.from_url(farm_settings.broker_url)
    with sessions() as session:
        finished = session.get(Job, done.id)
        assert finished is not None
        metrics.observe_job(client_redis, finished)
        metrics.observe_job(client_redis, finished)  # observed once however often the worker reports it

    operator = auth(new_api_key(sessions, "ops", role=tenants.OPERATOR))  # /metrics is for operators
    page = client.get("/metrics", headers=operator)
    assert page.status_code == 200 and page.content_type.startswith("text/plain")
    got = samples(page.get_data(as_text=True))
    kokoro = (("engine", "kokoro"),)
    assert got[("voicefarm_jobs", (("engine", "kokoro"), ("kind", "synthesize"), ("status", "queued")))] == 2
    assert got[("voicefarm_jobs", (("engine", "kokoro"), ("kind", "synthesize"), ("status", "succeeded")))] == 1
    assert got[("voicefarm_job_errors", (("code", "synthesis_rejected"), ("engine", "kokoro")))] == 1
    assert got[("voicefarm_live_workers", kokoro)] == 1
    assert got[("voicefarm_queue_depth", (("queue", "engine.kokoro"),))] == 2
    assert got[("voicefarm_queue_depth", (("queue", "qa"),))] == 1  # the take waiting for the QA gate
    assert got[("voicefarm_end_to_end_seconds_count", kokoro)] == 1
    assert got[("voicefarm_end_to_end_seconds_bucket", (("engine", "kokoro"), ("le", "2.5")))] == 0
    assert got[("voicefarm_end_to_end_seconds_bucket", (("engine", "kokoro"), ("le", "5.0")))] == 1
    assert got[("voicefarm_queue_wait_seconds_sum", kokoro)] == pytest.approx(1.0, abs=0.01)
    assert got[("voicefarm_real_time_factor_bucket", (("engine", "kokoro"), ("le", "0.5")))] == 1
    # A second API process (another app) answers the same figures: nothing is counted in process memory.
    again = create_app(farm_settings).test_client().get("/metrics", headers=operator)
    assert samples(again.get_data(as_text=True)) == got


def test_logs_are_json_lines_with_request_ids(app: Flask, client: FlaskClient, api_key: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("producer.api.jobs")
    logger.addHandler(handler)
    try:
        job = client.post("/v1/jobs", json={"text": "Hello."}, headers=auth(api_key)).get_json()
        with app.test_request_context(f"/v1/jobs/{job['id']}"):
            from flask import g, request

            g.tenant_id = "t_1"
            request.view_args = {"job_id": job["id"]}
            logger.warning("looked at %s", "it")
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["message"] == "looked at it" and line["level"] == "warning"
    assert line["job_id"] == job["id"] and line["tenant_id"] == "t_1" and line["ts"].endswith("+00:00")


@pytest.mark.slow
def test_flower_and_prometheus_read_a_running_farm(
    live_farm: LiveFarm,  # noqa: F811
    sessions: sessionmaker[Session],
) -> None:
    port = services.free_port()
    env = live_farm.env | {"FLOWER_UNAUTHENTICATED_API": "true"}
    flower = services.spawn(
        [sys.executable, "-m", "celery", "--broker", live_farm.settings.broker_url, "flower",
         "--address=127.0.0.1", f"--port={port}"],
        env=env, log_path=live_farm.logs / "flower.log",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def flower_up() -> bool:
            try:
                return requests.get(f"{base}/healthcheck", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        assert services.wait_until(flower_up, 60, flower), live_farm.log_tail()
        job = requests.post(f"{live_farm.url}/v1/jobs", json={"text": "Hello, Flower."},
                            headers=live_farm.headers(), timeout=10).json()  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = requests.get(f"{live_farm.url}/v1/jobs/{job['id']}", headers=live_farm.headers(), timeout=10)
            if state.json()["status"] == "succeeded":
                break
            time.sleep(0.5)
        assert state.json()["status"] == "succeeded", state.json()

        def task_seen() -> bool:
            tasks = requests.get(f"{base}/api/tasks", timeout=10).json()
            return any(t.get("name") == "voicefarm.synthesize" and job["id"] in str(t.get("args")) and
                       t.get("state") == "SUCCESS" for t in tasks.values())  # fmt: skip

        assert services.wait_until(task_seen, 30), requests.get(f"{base}/api/tasks", timeout=10).text
        workers = requests.get(f"{base}/api/workers", params={"refresh": "1"}, timeout=30).json()
        assert workers and any(name.startswith("kokoro") or "@" in name for name in workers), workers

        # The worker's log lines about the job are JSON with its job and tenant ids.
        lines = [json.loads(x) for x in (live_farm.logs / "worker.log").read_text().splitlines() if x.startswith("{")]
        about = [x for x in lines if x.get("job_id") == job["id"]]
        assert about and all(x.get("tenant_id") for x in about), lines[-5:]
        # Prometheus' view of the same farm, from both gunicorn processes in turn.
        operator = auth(new_api_key(sessions, "ops", role=tenants.OPERATOR))
        pages = [samples(requests.get(f"{live_farm.url}/metrics", headers=operator, timeout=10).text) for _ in range(4)]
        kokoro = (("engine", "kokoro"),)
        assert all(p[("voicefarm_end_to_end_seconds_count", kokoro)] >= 1 for p in pages)
        assert all(p[("voicefarm_live_workers", kokoro)] == 1 for p in pages)
        succeeded = (("engine", "kokoro"), ("kind", "synthesize"), ("status", "succeeded"))
        assert len({p[("voicefarm_jobs", succeeded)] for p in pages}) == 1
    finally:
        services.terminate(flower, 20)
