"""The whole farm as a user meets it: API (gunicorn) and worker as real processes, talking over HTTP to real
PostgreSQL, Redis and SeaweedFS; each output is transcribed back with Whisper and compared with the text."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import soundfile as sf
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from tests.support.asr import error_rate, transcribe
from tests.support.fixtures import new_api_key
from voicefarm.ops import services

pytestmark = pytest.mark.slow

# Error-rate ceilings. Kokoro's stock voices read these sentences back through Whisper base/tiny.en with
# CER/WER of about 0-0.1 (tests/worker/test_kokoro_engine.py); 0.3 leaves room for Whisper's own slips on a
# 2-core machine while still failing on garbled or wrong-language speech, which scores near 1.
MAX_ERROR_RATE = 0.3
CASES = [
    ("zh", "今天天气很好，我们一起去公园散步吧。"),
    ("en", "The quick brown fox jumps over the lazy dog."),
    ("ja", "今日はとても良い天気ですね。"),
]


@dataclass
class Farm:
    url: str
    key: str
    logs: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def _env(settings: Settings, port: int) -> dict[str, str]:
    return os.environ | {
        "DATABASE_URL": settings.database_url,
        "BROKER_URL": settings.broker_url,
        "S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": settings.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key,
        "VOICEFARM_S3_BUCKET": settings.s3_bucket,
        "VOICEFARM_DATA_DIR": str(settings.data_dir),
        "VOICEFARM_PORT": str(port),
        "VOICEFARM_API_WORKERS": "1",
    }


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def farm(farm_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Farm]:
    port = services.free_port()
    env = _env(farm_settings, port)
    cli = [sys.executable, "-m", "voicefarm.cli"]
    procs = [
        services.spawn([*cli, "api"], env=env, log_path=tmp_path / "api.log"),
        services.spawn([*cli, "worker", "--cpu", "1"], env=env, log_path=tmp_path / "worker.log"),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        if not services.wait_until(lambda: _ready(url), 180):
            logs = "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("*.log"))
            pytest.fail(f"farm not ready in 180 s:\n{logs}")
        yield Farm(url, new_api_key(sessions, "e2e"), tmp_path)
    finally:
        for proc in procs:
            services.terminate(proc, 20)


def wait_for(farm: Farm, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{farm.url}/v1/jobs/{job_id}", headers=farm.headers(), timeout=10).json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.5)
    pytest.fail(f"job {job_id} still {job['status']} after {timeout} s")


def test_three_languages_are_spoken_stored_and_reported(farm: Farm) -> None:
    submitted = {}
    for language, text in CASES:
        response = requests.post(
            f"{farm.url}/v1/jobs", json={"text": text, "format": "flac"}, headers=farm.headers(), timeout=10
        )
        assert response.status_code == 202, response.text
        assert response.json()["language"] == language
        submitted[language] = (response.json()["id"], text)

    for language, (job_id, text) in submitted.items():
        job = wait_for(farm, job_id)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1 and job["progress"] == 1
        assert job["started_at"] and job["finished_at"] >= job["started_at"] >= job["created_at"]
        result = job["result"]
        # The presigned URL is fetched straight from S3, without the API key.
        direct = requests.get(result["url"], timeout=10)
        assert direct.status_code == 200
        proxied = requests.get(f"{farm.url}/v1/jobs/{job_id}/audio", headers=farm.headers(), timeout=10)
        assert proxied.status_code == 200 and proxied.content == direct.content
        assert hashlib.sha256(direct.content).hexdigest() == result["sha256"]
        assert len(direct.content) == result["bytes"]
        audio, rate = sf.read(io.BytesIO(direct.content), dtype="float32")
        assert rate == result["sample_rate"] == 24000
        assert len(audio) / rate == pytest.approx(result["duration_s"], abs=0.01)
        heard = transcribe(audio, rate, language)
        rate_ = error_rate(text, heard, language)
        print(f"{language}: error rate {rate_:.3f}; heard {heard!r}")
        assert rate_ < MAX_ERROR_RATE, f"{language}: heard {heard!r} for {text!r}"

    workers = requests.get(f"{farm.url}/readyz", timeout=5).json()
    assert workers["checks"]["workers"] == "ok"
    listed = requests.get(f"{farm.url}/v1/workers", headers=farm.headers(), timeout=5).json()["workers"]
    assert len(listed) == 1 and listed[0]["jobs_done"] >= 3 and listed[0]["mean_rtf"] > 0
    # API keys are never written to the logs.
    for log in farm.logs.glob("*.log"):
        assert farm.key not in log.read_text(errors="replace")


def test_tampered_presigned_url_is_refused(farm: Farm) -> None:
    response = requests.post(f"{farm.url}/v1/jobs", json={"text": "Short."}, headers=farm.headers(), timeout=10)
    job = wait_for(farm, response.json()["id"])
    url = job["result"]["url"]
    assert requests.get(url, timeout=10).status_code == 200
    tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert requests.get(tampered, timeout=10).status_code == 403
