"""Every error has the contract body (SPEC §8) and validates as OpenAI's ErrorResponse."""
from __future__ import annotations

import pytest

from tests import schemas
from tests.conftest import auth
from tests.helpers import holds, ledger

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gpt(add_model, upstream, topup):
    add_model(id=10, name="fake-gpt", api="openai", base_url=upstream.url_for("/v1"),
              cost_per_1k_tokens="1")
    add_model(id=12, name="disabled-gpt", api="openai", base_url=upstream.url_for("/v1"), enabled=False)
    topup("alice", 10)
    return upstream


def contract(r, status: int, code: str, param=None):
    assert r.status_code == status, r.get_data(as_text=True)
    body = r.json
    schemas.check("ErrorResponse", body)
    assert body["success"] is False and body["data"] is None
    assert body["message"] == body["error"]["message"]
    assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    return body


def post(client, body=None, data=None, **headers):
    kwargs = {"json": body} if data is None else {"data": data}
    return client.post("/api/v1/chat/completions", headers={**auth(), **headers}, **kwargs)


@pytest.mark.parametrize("data,code", [
    ("not json", "invalid_json"), ("[1, 2]", "invalid_json"), ("", "invalid_json"),
    ('{"messages": [{"role": "user", "content": "x"}]', "invalid_json"),
])
def test_body_not_a_json_object(client, gpt, data, code):
    contract(post(client, data=data), 400, code)


@pytest.mark.parametrize("body", [
    {}, {"messages": []}, {"messages": "hi"}, {"messages": [{"content": "x"}]},
    {"messages": [{"role": "user"}]}, {"messages": [{"role": "wizard", "content": "x"}]},
    {"messages": [{"role": "user", "content": None}]}, {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "tool", "content": "x"}]}, {"messages": ["hi"]},
])
def test_bad_messages(client, gpt, body):
    contract(post(client, {"model": "fake-gpt", **body}), 400, "invalid_messages")


@pytest.mark.parametrize("field,value", [
    ("temperature", 2.5), ("temperature", "hot"), ("top_p", -1), ("n", 0), ("n", 9),
    ("stop", ["a", "b", "c", "d", "e"]), ("stop", []), ("max_tokens", 0), ("max_tokens", "ten"),
    ("max_completion_tokens", -5), ("presence_penalty", 3), ("frequency_penalty", -2.1),
    ("temperature", True), ("stream", "yes"), ("response_format", {"type": "xml"}),
    ("tool_choice", "sometimes"), ("seed", 1.5), ("top_k", -1), ("top_k", 2 ** 64 + 5), ("top_k", "ten"),
])
def test_parameter_out_of_range(client, gpt, field, value):
    body = contract(post(client, {"model": "fake-gpt", "messages": MSGS, field: value}),
                    400, "invalid_parameter", param=field)
    assert field in body["error"]["message"]
    assert not gpt.log and holds() == 0


@pytest.mark.parametrize("selector", [{"model": "nope"}, {"id": 999}, {"model": "disabled-gpt"},
                                      {"id": 12}])
def test_unknown_or_disabled_model(client, gpt, selector):
    body = contract(post(client, {"messages": MSGS, **selector}), 404, "model_not_found", "model")
    assert body["error"]["message"].startswith("Unsupported model: ")


def test_chinese_messages(client, gpt):
    body = contract(post(client, {"model": "nope", "messages": MSGS}, **{"Accept-Language": "zh-CN,zh"}),
                    404, "model_not_found")
    assert body["message"] == "不支持的模型: nope"


def test_body_over_the_limit(make_app):
    client = make_app(MAX_CONTENT_LENGTH=1000).test_client()
    r = client.post("/api/v1/chat/completions", headers=auth(),
                    json={"messages": [{"role": "user", "content": "x" * 2000}]})
    contract(r, 413, "request_too_large")


def test_unknown_path_and_wrong_method(client):
    contract(client.get("/api/v1/nothing-here", headers=auth()), 404, "not_found")
    r = client.get("/api/v1/chat/completions", headers=auth())
    contract(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]


@pytest.mark.parametrize("status,code", [(415, "unsupported_media_type"), (416, "requested_range_not_satisfiable"),
                                         (431, "request_header_fields_too_large")])
def test_a_client_error_flask_raises_is_the_callers_fault_not_the_servers(make_app, status, code):
    """An HTTP error of the 4xx range the gateway has no case for was typed internal_error (a 415
    from Flask's get_json on the Responses door); it is invalid_request_error with its name."""
    from flask import abort

    app = make_app()
    app.add_url_rule("/api/v1/teapot", "teapot", lambda: abort(status))
    r = app.test_client().get("/api/v1/teapot", headers=auth())
    contract(r, status, code)
    assert r.json["error"]["type"] == "invalid_request_error"


def test_upstream_refusing_connections_is_503_with_seed_message(client, add_model, topup):
    add_model(id=20, name="dead-llama", api="ollama", base_url="http://127.0.0.1:9")
    topup("alice", 1)
    body = contract(post(client, {"model": "dead-llama", "messages": MSGS}), 503, "ollama_unavailable")
    assert body["error"]["message"] == ("Ollama service is unavailable. "
                                        "Please make sure Ollama is running.")
    assert body["error"]["type"] == "service_unavailable"
    assert holds() == 0


@pytest.mark.parametrize("status,payload,expect,code", [
    (500, {"error": {"message": "boom", "type": "server_error"}}, 502, "generation_failed"),
    (400, {"error": {"message": "context too long", "type": "invalid_request_error"}}, 400,
     "upstream_invalid_request"),
    (429, {"error": {"message": "slow down"}}, 429, "upstream_rate_limited"),
    (401, {"error": {"message": "Incorrect API key provided: sk-secret"}}, 502, "generation_failed"),
])
def test_upstream_errors_mapped(client, gpt, status, payload, expect, code):
    gpt.expect_request("/v1/chat/completions").respond_with_json(payload, status=status)
    body = contract(post(client, {"model": "fake-gpt", "messages": MSGS}), expect, code)
    if status == 400:
        assert body["error"]["message"] == "context too long"
    assert "sk-secret" not in str(body)
    assert holds() == 0 and not [e for e in ledger("alice") if e.kind == "charge"]


@pytest.mark.parametrize("garbage", ["<html>oops</html>", '{"no": "choices"}', "[]"])
def test_upstream_garbage_is_502(client, gpt, garbage):
    gpt.expect_request("/v1/chat/completions").respond_with_data(garbage, content_type="application/json")
    contract(post(client, {"model": "fake-gpt", "messages": MSGS}), 502, "generation_failed")
    assert holds() == 0


def test_missing_provider_key_is_503_naming_the_variable_only(client, add_model, topup):
    add_model(id=21, name="keyed", api="openai", base_url="http://127.0.0.1:9/v1",
              api_key_env="NOT_SET_API_KEY")
    r = post(client, {"model": "keyed", "messages": MSGS})
    body = contract(r, 503, "openai_unavailable")
    assert "NOT_SET_API_KEY" in body["error"]["message"]
    # no retry sets the variable: the SDKs must not try three more times
    assert r.headers["x-should-retry"] == "false" and "Retry-After" not in r.headers


def test_unexpected_exception_is_500_contract_body_without_trace(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    body = contract(client.get("/boom"), 500, "internal_error")
    assert "secret" not in str(body) and "Traceback" not in str(body)


def test_cors_preflight_and_allow_list(make_app):
    client = make_app(CORS_ORIGINS=["https://app.example"]).test_client()
    r = client.options("/api/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    r = client.get("/api/v1/models", headers={"Origin": "https://app.example"})
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "request-id", "x-should-retry", "retry-after", "x-ratelimit-remaining"} <= exposed
    r = client.options("/api/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in r.headers
