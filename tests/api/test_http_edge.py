"""The HTTP edge from libraries: the OpenAPI document generated from pydantic models, /docs served from the
farm's own assets, the answers of the API matching the models the document is built from."""

from __future__ import annotations

import re
import time

from flask.testing import FlaskClient

from producer import bodies
from producer.app import create_app
from shared.config import Settings
from tests.support.fixtures import auth


def test_every_body_in_the_document_is_a_pydantic_schema(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    assert {"JobRequest", "SpeechRequest", "JobView", "VoiceList", "ModelList", "Error"} <= set(schemas)
    speech = document["paths"]["/v1/audio/speech"]["post"]
    assert speech["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SpeechRequest")
    assert schemas["SpeechRequest"]["properties"]["speed"]["maximum"] == 4.0
    assert "engine" in schemas["JobRequest"]["properties"]
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', str(document).replace("'", '"')))
    assert refs <= set(schemas), refs - set(schemas)


def test_docs_render_with_assets_served_by_the_farm(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.get_data(as_text=True))
    assert sources and all(s.startswith("/") for s in sources), sources  # nothing from outside the farm
    for source in sources:
        answer = client.get(source)
        assert answer.status_code == 200 and len(answer.data) > 100, source
    assert b"SwaggerUIBundle" in client.get("/docs/assets/js/swagger-ui-bundle.js").data
    assert client.get("/docs/assets/../../../etc/passwd").status_code == 404


def test_answers_match_their_models(client: FlaskClient, api_key: str) -> None:
    headers = auth(api_key)
    job = client.post("/v1/jobs", json={"text": "Hello there."}, headers=headers).get_json()
    bodies.JobView.model_validate(job)
    bodies.JobList.model_validate(client.get("/v1/jobs", headers=headers).get_json())
    bodies.VoiceList.model_validate(client.get("/v1/voices", headers=headers).get_json())
    bodies.Instructions.model_validate(client.get("/v1/instructions", headers=headers).get_json())
    bodies.WorkerList.model_validate(client.get("/v1/workers", headers=headers).get_json())
    bodies.ModelList.model_validate(client.get("/v1/models", headers=headers).get_json())
    bodies.Health.model_validate(client.get("/healthz").get_json())
    bodies.Readiness.model_validate(client.get("/readyz").get_json())
    bodies.Error.model_validate(client.get("/v1/jobs/nope", headers=headers).get_json())


def test_speech_waits_for_a_worker_within_the_wait_then_cancels(farm_settings: Settings, api_key: str) -> None:
    """No live worker yet (the first one still loading its engine): the request waits within speech_start_wait_s,
    as for a busy farm, then answers 503 with Retry-After and its job ends canceled."""
    client = create_app(farm_settings.model_copy(update={"speech_start_wait_s": 1.0})).test_client()
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello."}
    started = time.monotonic()
    answer = client.post("/v1/audio/speech", json=body, headers=auth(api_key))
    waited = time.monotonic() - started
    assert answer.status_code == 503 and answer.get_json()["error"]["code"] == "workers_busy", answer.get_json()
    assert answer.headers["Retry-After"] and 1.0 <= waited < 10
    (job,) = client.get("/v1/jobs", headers=auth(api_key)).get_json()["jobs"]
    assert job["status"] == "canceled"
