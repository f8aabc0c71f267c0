"""schemathesis against /openapi.json on a live server: no 5xx, every answer as documented."""
from __future__ import annotations

import json

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
EXAMPLES = 40


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
    assert len(operations) == 22  # every documented operation (checked against the code elsewhere)

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            case.call_and_validate(base_url=live.url, headers=headers, checks=CHECKS)

        run()
