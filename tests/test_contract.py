"""schemathesis against /openapi.json on a live server: no 5xx, every answer as documented."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from werkzeug import Response

from tests.conftest import auth
from tests.fakes import openai as fake_openai

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = int(os.environ.get("CONTRACT_EXAMPLES", "40"))  # per operation; OpenAI's own spec gets 10×


def answer(request) -> Response:
    """A completion, or a stream when the gateway asks for one."""
    if (request.get_json(silent=True) or {}).get("stream"):
        return fake_openai.Stream(["fuzz", "ed"]).handler(request)
    return Response(json.dumps(fake_openai.completion()), content_type="application/json")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_api_conforms_to_its_openapi_document(make_app, upstream, live_factory):
    app = make_app(DEFAULT_MODEL="fuzz-target", RATE_LIMIT_DEFAULT="100000/minute")
    client = app.test_client()
    client.post("/api/admin/models", headers=auth("root", True), json={
        "id": 987654, "name": "fuzz-target", "api": "openai", "base_url": upstream.url_for("/v1"),
        "cost_per_1k_tokens": "0.001"})
    client.post("/api/admin/accounts/root/credits", json={"amount": 1000}, headers=auth("root", True))
    upstream.expect_request("/v1/chat/completions").respond_with_handler(answer)
    live = live_factory(app)
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    headers = auth("root", True)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 47  # every documented operation (checked against the code elsewhere)

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            case.call_and_validate(base_url=live.url, headers=headers, checks=CHECKS)

        run()


OPENAI_SCHEMAS = Path(__file__).resolve().parent / "fixtures" / "openai_schemas.json"  # vendored, see README


def openai_chat_spec() -> dict:
    """OpenAI's own createChatCompletion operation, from its published schemas (vendored)."""
    bundle = json.loads(OPENAI_SCHEMAS.read_text())["$defs"]
    json_body = lambda name: {"application/json": {"schema": bundle[name]}}  # noqa: E731
    return {"openapi": "3.1.0", "info": {"title": "OpenAI createChatCompletion", "version": "2.3.0"},
            "paths": {"/v1/chat/completions": {"post": {
                "operationId": "createChatCompletion",
                "requestBody": {"required": True, "content": json_body("CreateChatCompletionRequest")},
                "responses": {"200": {"description": "OK", "content": json_body("CreateChatCompletionResponse")},
                              "default": {"description": "error", "content": json_body("ErrorResponse")}}}}}}


def model_names(schema) -> list[str]:
    """Every model name OpenAI's spec enumerates (the fuzz row answers to all of them)."""
    found = []
    if isinstance(schema, dict):
        if schema.get("type") == "string" and isinstance(schema.get("enum"), list) and "gpt-4.1" in schema["enum"]:
            found += schema["enum"]
        for value in schema.values():
            found += model_names(value)
    elif isinstance(schema, list):
        for value in schema:
            found += model_names(value)
    return found


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_openai_spec_finds_no_server_error(make_app, upstream, live_factory):
    """schemathesis drives OpenAI's published request schema at the gateway: no 5xx, and every
    200 body conforms to OpenAI's response schema."""
    spec = openai_chat_spec()
    names = sorted(set(model_names(spec)))
    app = make_app(RATE_LIMIT_DEFAULT="100000/minute", DEFAULT_MODEL="fuzz-openai")
    client = app.test_client()
    r = client.post("/api/admin/models", headers=auth("root", True), json={
        "id": 1, "name": "fuzz-openai", "api": "openai", "base_url": upstream.url_for("/v1"),
        "cost_per_1k_tokens": "0.001", "aliases": names})
    assert r.status_code == 201, r.json
    client.post("/api/admin/accounts/root/credits", json={"amount": 100000}, headers=auth("root", True))
    upstream.expect_request("/v1/chat/completions").respond_with_handler(answer)
    live = live_factory(app)
    operation = next(iter(schemathesis.openapi.from_dict(spec).get_all_operations())).ok()
    headers = auth("root", True)

    @given(case=operation.as_strategy())
    @settings(max_examples=10 * EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(base_url=live.url, headers=headers,
                               checks=[not_a_server_error, response_schema_conformance])

    run()
    assert len(upstream.log) > 20  # many generated calls were valid and went all the way through
