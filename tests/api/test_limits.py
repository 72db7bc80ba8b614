"""Admission limits and CORS against real PostgreSQL and Redis."""

from __future__ import annotations

import io

from flask.testing import FlaskClient

from producer.app import create_app
from shared.config import Settings
from tests.support.fixtures import auth


def client_with(settings: Settings, **overrides: object) -> FlaskClient:
    return create_app(settings.model_copy(update=overrides)).test_client()


def test_rate_limit_per_key_answers_429_with_retry_after(farm_settings: Settings, api_key: str) -> None:
    client = client_with(farm_settings, rate_limit_per_minute=3)
    responses = [client.get("/v1/jobs", headers=auth(api_key)) for _ in range(7)]
    codes = [r.status_code for r in responses]
    # Three per window; seven requests span at most two windows, so at least one is refused.
    assert codes.count(200) <= 6 and 429 in codes
    refused = responses[codes.index(429)]
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_queue_depth_limit(farm_settings: Settings, api_key: str) -> None:
    client = client_with(farm_settings, max_queued_per_tenant=2)
    keyed = auth(api_key) | {"Idempotency-Key": "first"}
    first = client.post("/v1/jobs", json={"text": "job 0"}, headers=keyed)
    assert first.status_code == 202
    assert client.post("/v1/jobs", json={"text": "job 1"}, headers=auth(api_key)).status_code == 202
    full = client.post("/v1/jobs", json={"text": "one more"}, headers=auth(api_key))
    assert full.status_code == 429 and full.get_json()["error"]["code"] == "queue_full"
    assert full.headers["Retry-After"] == "30"
    # Retrying an accepted submission is not a new job: it is answered, not refused.
    again = client.post("/v1/jobs", json={"text": "job 0"}, headers=keyed)
    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]


def test_upload_size_limit_answers_413(farm_settings: Settings, api_key: str) -> None:
    client = client_with(farm_settings, max_upload_bytes=10_000)
    response = client.post("/v1/voices", data={"audio": (io.BytesIO(b"\0" * 20_000), "big.wav")}, headers=auth(api_key))
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert "10000" in response.get_json()["error"]["message"]


def test_cors_is_closed_by_default(client: FlaskClient, api_key: str) -> None:
    response = client.get("/v1/jobs", headers=auth(api_key) | {"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = client.options("/v1/jobs", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_cors_allows_configured_origins(farm_settings: Settings, api_key: str) -> None:
    client = client_with(farm_settings, cors_origins=["https://studio.example"])
    ok = client.get("/v1/jobs", headers=auth(api_key) | {"Origin": "https://studio.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://studio.example"
    other = client.get("/v1/jobs", headers=auth(api_key) | {"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
