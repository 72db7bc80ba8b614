"""The whole farm as a user meets it: API (gunicorn) and worker as real processes, talking over HTTP to real
PostgreSQL, Redis and SeaweedFS; each output is transcribed back with Whisper and compared with the text."""

from __future__ import annotations

import hashlib
import io
import time

import pytest
import requests
import soundfile as sf

from tests.support.asr import error_rate, transcribe
from tests.support.livefarm import LiveFarm, live_farm  # noqa: F401  (fixture)

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


def wait_for(farm: LiveFarm, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{farm.url}/v1/jobs/{job_id}", headers=farm.headers(), timeout=10).json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.5)
    pytest.fail(f"job {job_id} still {job['status']} after {timeout} s")


def test_three_languages_are_spoken_stored_and_reported(live_farm: LiveFarm) -> None:  # noqa: F811
    submitted = {}
    for language, text in CASES:
        response = requests.post(
            f"{live_farm.url}/v1/jobs", json={"text": text, "format": "flac"}, headers=live_farm.headers(), timeout=10
        )
        assert response.status_code == 202, response.text
        assert response.json()["language"] == language
        submitted[language] = (response.json()["id"], text)

    for language, (job_id, text) in submitted.items():
        job = wait_for(live_farm, job_id)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1 and job["progress"] == 1
        assert job["started_at"] and job["finished_at"] >= job["started_at"] >= job["created_at"]
        result = job["result"]
        # The presigned URL is fetched straight from S3, without the API key.
        direct = requests.get(result["url"], timeout=10)
        assert direct.status_code == 200
        proxied = requests.get(f"{live_farm.url}/v1/jobs/{job_id}/audio", headers=live_farm.headers(), timeout=10)
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

    workers = requests.get(f"{live_farm.url}/readyz", timeout=5).json()
    assert workers["checks"]["workers"] == "ok"
    listed = requests.get(f"{live_farm.url}/v1/workers", headers=live_farm.headers(), timeout=5).json()["workers"]
    assert len(listed) == 1 and listed[0]["jobs_done"] >= 3 and listed[0]["mean_rtf"] > 0
    # API keys are never written to the logs.
    for log in live_farm.logs.glob("*.log"):
        assert live_farm.key not in log.read_text(errors="replace")


def test_tampered_presigned_url_is_refused(live_farm: LiveFarm) -> None:  # noqa: F811
    response = requests.post(
        f"{live_farm.url}/v1/jobs", json={"text": "Short."}, headers=live_farm.headers(), timeout=10
    )
    job = wait_for(live_farm, response.json()["id"])
    url = job["result"]["url"]
    assert requests.get(url, timeout=10).status_code == 200
    tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert requests.get(tampered, timeout=10).status_code == 403
