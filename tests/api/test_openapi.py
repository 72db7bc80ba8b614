"""The OpenAPI document, and schemathesis fuzzing every operation in it: no input may cause a 5xx."""

from __future__ import annotations

import re

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings

from shared.batches.lines import DEFAULT_FIELDS, LINE_FIELDS
from tests.support.fixtures import auth


def test_document_describes_every_route(app: Flask) -> None:
    document = app.test_client().get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    documented = {path.replace("{", "<").replace("}", ">") for path in document["paths"]}
    routes = {
        re.sub(r"<\w+:", "<", r.rule)
        for r in app.url_map.iter_rules()
        if r.rule.startswith("/v1") or r.rule.endswith("z")
    }
    assert routes == documented
    job_request = document["components"]["schemas"]["JobRequest"]
    assert set(job_request["properties"]) >= {"text", "voice", "mode", "instruct", "language", "speed", "format"}


def test_batch_lines_are_documented_with_every_field_a_line_may_set(app: Flask) -> None:
    schemas = app.test_client().get("/openapi.json").get_json()["components"]["schemas"]
    assert set(schemas["BatchLine"]["properties"]) == {"id", *LINE_FIELDS}
    assert set(schemas["BatchLineFields"]["properties"]) == set(DEFAULT_FIELDS)


@pytest.mark.slow
def test_no_input_causes_a_server_error(app: Flask, api_key: str) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    failures: list[str] = []
    for operation in schema.get_all_operations():
        op = operation.ok()
        if op.path == "/readyz":  # takes no input; it answers 503 here by design (no worker runs)
            continue
        if op.path == "/v1/audio/speech":  # answered synchronously: 503 by design with no live worker (test_speech)
            continue

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(headers=auth(api_key))
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")

        fuzz()
    assert failures == []
