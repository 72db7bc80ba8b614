"""A running farm for tests that talk to it as a client would: `voicefarm api` (gunicorn) and `voicefarm worker`
as real processes on the session's PostgreSQL, Redis and SeaweedFS (tests/conftest.py). Import the fixture:
`from tests.support.livefarm import live_farm`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from tests.support.fixtures import new_api_key
from voicefarm.ops import services

CLI = [sys.executable, "-m", "voicefarm.cli"]


@dataclass
class LiveFarm:
    url: str
    key: str
    logs: Path
    settings: Settings
    env: dict[str, str]
    api_pid: int = 0  # `voicefarm api`, which becomes gunicorn's master

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in sorted(self.logs.glob("*.log")))


def farm_env(settings: Settings, port: int) -> dict[str, str]:
    return os.environ | {
        "DATABASE_URL": settings.database_url,
        "BROKER_URL": settings.broker_url,
        "S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": settings.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key,
        "VOICEFARM_S3_BUCKET": settings.s3_bucket,
        "VOICEFARM_DATA_DIR": str(settings.data_dir),
        "VOICEFARM_PORT": str(port),
        "VOICEFARM_API_WORKERS": "2",
        "PYTHONUNBUFFERED": "1",
    }


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def live_farm(
    request: pytest.FixtureRequest, farm_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> Iterator[LiveFarm]:
    """API and one CPU kokoro worker, ready (the worker has registered) before the test starts. A test marked
    `qa_pool` also gets `voicefarm qa-worker`, as `voicefarm up` runs it: batch lines pass the QA gate there."""
    port = services.free_port()
    env = farm_env(farm_settings, port)
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        services.spawn([*CLI, "api"], env=env, log_path=logs / "api.log"),
        services.spawn([*CLI, "worker", "--cpu", "1"], env=env, log_path=logs / "worker.log"),
    ]
    if request.node.get_closest_marker("qa_pool"):
        procs.append(services.spawn([*CLI, "qa-worker", "--concurrency", "1"], env=env, log_path=logs / "qa.log"))
    url = f"http://127.0.0.1:{port}"
    farm = LiveFarm(url, new_api_key(sessions, "live"), logs, farm_settings, env, procs[0].pid)
    try:
        if not services.wait_until(lambda: _ready(url), 240):
            pytest.fail(f"farm not ready in 240 s:\n{farm.log_tail()}")
        yield farm
    finally:
        for proc in procs:
            services.terminate(proc, 20)


@pytest.fixture
def idle_farm(
    request: pytest.FixtureRequest, farm_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> Iterator[LiveFarm]:
    """`voicefarm api` (two gunicorn workers) beside a kokoro worker that is registered live but is no process:
    every job waits in the queue, as when every worker is busy or hung. Costs no engine. Settings from a
    `farm_env({...})` marker are added to the API's environment."""
    from shared.db import transaction
    from shared.engines import catalogue
    from shared.engines.fleet import register_worker

    with transaction(sessions) as session:
        caps = catalogue("kokoro").capabilities.to_json()
        register_worker(session, "idle-kokoro", engine="kokoro", model="none", capabilities=caps, device="cpu")
    port = services.free_port()
    marker = request.node.get_closest_marker("farm_env")
    # The row's heartbeat never beats again: it stays live for the whole test.
    env = farm_env(farm_settings, port) | {"VOICEFARM_WORKER_LIVE_S": "3600"} | (marker.args[0] if marker else {})
    logs = tmp_path / "logs"
    logs.mkdir()
    proc = services.spawn([*CLI, "api"], env=env, log_path=logs / "api.log")
    url = f"http://127.0.0.1:{port}"
    farm = LiveFarm(url, new_api_key(sessions, "idle"), logs, farm_settings, env, proc.pid)
    try:
        if not services.wait_until(lambda: _ready(url), 120):
            pytest.fail(f"API not ready in 120 s:\n{farm.log_tail()}")
        yield farm
    finally:
        services.terminate(proc, 20)
