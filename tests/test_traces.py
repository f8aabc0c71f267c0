"""Traces (SPEC §17, issue 35): with OTEL_EXPORTER_OTLP_ENDPOINT set, an OTLP/HTTP receiver gets
each call's trace: the call's span with GenAI attributes and its steps as children."""
from __future__ import annotations

import threading

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from tests.conftest import auth
from tests.fakes import openai as fake_openai

HI = [{"role": "user", "content": "hi"}]


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: decodes each export, keeps its spans."""

    def __init__(self):
        self.server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
        self.server.expect_request("/v1/traces", method="POST").respond_with_handler(self.receive)
        self.server.start()
        self.spans, self.arrived = [], threading.Event()
        self.content_types = set()

    def receive(self, request):
        self.content_types.add(request.headers.get("Content-Type"))
        export = ExportTraceServiceRequest.FromString(request.get_data())
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                self.spans += list(scope.spans)
        self.arrived.set()
        return Response(b"", content_type="application/x-protobuf")

    def close(self):
        self.server.clear()
        self.server.stop()


@pytest.fixture
def receiver():
    found = Receiver()
    yield found
    found.close()


def attributes(span) -> dict:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = value.string_value if value.HasField("string_value") else value.int_value
    return out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_otlp_receiver_gets_the_trace_of_a_call(make_app, receiver, upstream, db_url):
    app = make_app(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.server.url_for("/").rstrip("/"),
                   PROVIDER_KEYS={"FAKE_API_KEY": "k"})
    client = app.test_client()
    r = client.post("/api/admin/models", headers=auth("root", True), json={
        "id": 1, "name": "m-openai", "provider": "openai", "api": "openai", "upstream_model": "up",
        "base_url": upstream.url_for("/v1"), "api_key_env": "FAKE_API_KEY", "cost_per_1k_tokens": "1"})
    assert r.status_code == 201
    client.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=auth("root", True))
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    answer = client.post("/api/v1/chat/completions", headers=auth(), json={"model": "m-openai", "messages": HI})
    assert answer.status_code == 200
    assert app.extensions["tollgate_traces"].flush()  # the exporter's thread sends; the call did not wait
    assert receiver.arrived.wait(10)
    [call] = [s for s in receiver.spans if s.name == "chat m-openai"]
    got = attributes(call)
    assert got["gen_ai.operation.name"] == "chat" and got["gen_ai.system"] == "openai"
    assert got["gen_ai.request.model"] == "m-openai" and got["gen_ai.response.id"] == answer.json["id"]
    assert (got["gen_ai.usage.input_tokens"], got["gen_ai.usage.output_tokens"]) == (10, 15)
    assert got["http.response.status_code"] == 200
    steps = {s.name: s for s in receiver.spans if s.trace_id == call.trace_id and s.span_id != call.span_id}
    assert set(steps) == {"admission", "hold", "provider call", "settle"}
    assert all(s.parent_span_id == call.span_id for s in steps.values())
    assert steps["hold"].end_time_unix_nano <= steps["provider call"].start_time_unix_nano
    assert steps["provider call"].end_time_unix_nano <= steps["settle"].start_time_unix_nano
    assert receiver.content_types == {"application/x-protobuf"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_refused_call_is_traced_as_an_error(make_app, receiver, db_url):
    app = make_app(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.server.url_for("/").rstrip("/"))
    client = app.test_client()
    assert client.post("/api/v1/chat/completions", headers=auth(), json={"model": "nope", "messages": HI}
                       ).status_code == 404
    assert app.extensions["tollgate_traces"].flush() and receiver.arrived.wait(10)
    [call] = receiver.spans
    assert call.status.code == 2 and attributes(call)["error.type"] == "model_not_found"


def test_without_the_setting_nothing_is_traced(app):
    assert "tollgate_traces" not in app.extensions


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_streamed_call_is_traced_to_its_settle(make_app, receiver, upstream, db_url):
    """A stream settles inside its body, after the view returned: its settle span still has the
    call's span as parent, and the call's span ends when the body does."""
    app = make_app(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.server.url_for("/").rstrip("/"))
    client = app.test_client()
    client.post("/api/admin/models", headers=auth("root", True), json={
        "id": 1, "name": "m-openai", "provider": "openai", "api": "openai", "upstream_model": "up",
        "base_url": upstream.url_for("/v1"), "cost_per_1k_tokens": "1"})
    client.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=auth("root", True))
    upstream.expect_request("/v1/chat/completions").respond_with_handler(fake_openai.Stream(["a", "b"]).handler)
    r = client.post("/api/v1/chat/completions", headers=auth(),
                    json={"model": "m-openai", "messages": HI, "stream": True})
    assert b"[DONE]" in r.get_data()
    r.close()
    assert app.extensions["tollgate_traces"].flush() and receiver.arrived.wait(10)
    [call] = [s for s in receiver.spans if s.name == "chat m-openai"]
    [settle] = [s for s in receiver.spans if s.name == "settle"]
    assert settle.parent_span_id == call.span_id and settle.end_time_unix_nano <= call.end_time_unix_nano
    assert attributes(call)["gen_ai.usage.output_tokens"] == 2 and "tollgate.ttft_ms" in attributes(call)
