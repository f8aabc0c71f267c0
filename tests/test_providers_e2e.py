"""Every adapter end to end against a fake server that speaks that provider's format."""
from __future__ import annotations

import json

import pytest
from werkzeug import Response

from config.settings import ROOT
from tests import schemas
from tests.conftest import PROVIDER_KEY, auth
from tests.fakes import ollama as fake_ollama
from tests.fakes import openai as fake_openai
from tests.helpers import basic, charges, holds
from tests.providers import ROUND_TRIP, TOOLS, fixture

KEY = PROVIDER_KEY
MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
TURNS = [{"role": "user", "parts": [{"text": "Hi"}]}, {"role": "model", "parts": [{"text": "Hello"}]},
         {"role": "user", "parts": [{"text": "Bye"}]}]


def _json(name_or_body, status=200, **changes):
    body = json.loads(fixture(*name_or_body)) if isinstance(name_or_body, tuple) else name_or_body
    return lambda request: Response(json.dumps(_deep_update(body, changes)), status,
                                    content_type="application/json")


def _deep_update(body, changes):
    for path, value in changes.items():
        target = body
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[int(k)] if k.isdigit() else target[k]
        target[keys[-1]] = value
    return body


def _sse(api, name, mimetype="text/event-stream"):
    return lambda request: Response(fixture(api, name), mimetype=mimetype)


SPECS = {
    "openai": {
        "path": "/v1/chat/completions", "base": "/v1",
        "length": _json(fake_openai.completion("Hi", 9, 3, finish="length")), "usage": (9, 3),
        "plain_body": {"model": "up", "messages": MSGS, "temperature": 0.5, "max_tokens": 5, "stop": ["END"]},
        "stream": _sse("openai", "stream.sse"), "stream_text": "Hello!", "stream_usage": (9, 2),
        "stream_body": {"model": "up", "messages": MSGS, "stream": True, "stream_options": {"include_usage": True},
                        "max_tokens": 64},  # no cap sent: the row's max_output_tokens is
        "tool": _json(("openai", "tool_call.json")), "n2": _json(fake_openai.completion("Hi", 9, 3, n=2)),
        "tool_result": lambda body: body["messages"][-1] == ROUND_TRIP[-1],
        "error": lambda status: _json(("openai", "error_400.json"), status),
        "auth": lambda h: h.get("Authorization") == f"Bearer {KEY}",
    },
    "ollama": {
        "path": "/api/chat", "base": "/",
        "length": _json(fake_ollama.chat("Hi", 12, 4, "length")), "usage": (12, 4),
        "plain_body": {"model": "up", "stream": False, "messages": MSGS,
                       "options": {"temperature": 0.5, "num_predict": 5, "stop": ["END"]}},
        "stream": _sse("ollama", "stream.ndjson", "application/x-ndjson"), "stream_text": "The sky",
        "stream_body": {"model": "up", "stream": True, "messages": MSGS, "options": {"num_predict": 64}},
        "stream_usage": (26, 2), "tool": _json(("ollama", "tool_call.json")),
        "n2": _json(fake_ollama.chat("Hi", 12, 4)),
        "tool_result": lambda body: body["messages"][-1] == {"role": "tool", "content": '{"temp_c": 18}'},
        "error": lambda status: _json(("ollama", "error_404.json"), status),
        "auth": lambda h: "Authorization" not in h,
    },
    "gemini": {
        "path": "/v1beta/models/up:generateContent", "stream_path": "/v1beta/models/up:streamGenerateContent",
        "base": "/", "length": _json(("gemini", "generate.json"), candidates__0__finishReason="MAX_TOKENS"),
        "usage": (11, 7),
        "plain_body": {"contents": TURNS, "systemInstruction": {"parts": [{"text": "Be brief."}]},
                       "generationConfig": {"temperature": 0.5, "maxOutputTokens": 5, "stopSequences": ["END"]}},
        "stream": _sse("gemini", "stream.sse"), "stream_text": "AI learns patterns from data.",
        "stream_body": {"contents": TURNS, "systemInstruction": {"parts": [{"text": "Be brief."}]},
                        "generationConfig": {"maxOutputTokens": 64}},
        "stream_usage": (11, 7), "tool": _json(("gemini", "function_call.json")),
        "n2": _json({**json.loads(fixture("gemini", "generate.json")), "candidates": [
            {"content": {"parts": [{"text": t}], "role": "model"}, "finishReason": "STOP", "index": i}
            for i, t in enumerate(["A", "B"])]}),
        "tool_result": lambda body: body["contents"][-1] == {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}}]},
        "error": lambda status: _json(("gemini", "error_400.json"), status),
        "auth": lambda h: h.get("x-goog-api-key") == KEY,
    },
    "anthropic": {
        "path": "/v1/messages", "base": "/",
        "length": _json(("anthropic", "message.json"), stop_reason="max_tokens"), "usage": (10, 25),
        "plain_body": {"model": "up", "max_tokens": 5, "system": "Be brief.", "messages": MSGS[1:],
                       "temperature": 0.5, "stop_sequences": ["END"]},
        "stream": _sse("anthropic", "stream.sse"), "stream_text": "Hello!", "stream_usage": (25, 15),
        "stream_body": {"model": "up", "max_tokens": 64, "system": "Be brief.", "messages": MSGS[1:],
                        "stream": True},
        "tool": _json(("anthropic", "tool_use.json")), "n2": _json(("anthropic", "message.json")),
        "tool_result": lambda body: body["messages"][-1] == {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": '{"temp_c": 18}'}]},
        "error": lambda status: _json(("anthropic", "error_400.json"), status),
        "auth": lambda h: h.get("x-api-key") == KEY and h.get("anthropic-version") == "2023-06-01",
    },
}
APIS = list(SPECS)


def call(client, api, **body):
    return client.post("/api/v1/chat/completions", headers=auth(),
                       json={"model": f"m-{api}", "messages": MSGS, **body})


def received(upstream, i=-1):
    request = upstream.log[i][0]
    return request, request.get_json()


@pytest.mark.parametrize("api", APIS)
def test_plain_call_system_multi_turn_length_stop_usage_cost(gateway, upstream, api):
    spec = SPECS[api]
    upstream.expect_request(spec["path"]).respond_with_handler(spec["length"])
    r = call(gateway, api, temperature=0.5, max_tokens=5, stop=["END"])
    assert r.status_code == 200, r.json
    schemas.check("CreateChatCompletionResponse", r.json)
    assert r.json["choices"][0]["finish_reason"] == "length"
    p, c = spec["usage"]
    assert basic(r.json["usage"]) == {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                               "cost": (p + c) / 1000}
    request, body = received(upstream)
    assert body == spec["plain_body"]
    assert spec["auth"](request.headers) and KEY not in request.url
    assert charges("alice")[0].delta == -(p + c) * 1000 and holds() == 0


@pytest.mark.parametrize("api", APIS)
def test_stream(gateway, upstream, api):
    spec = SPECS[api]
    upstream.expect_request(spec.get("stream_path", spec["path"])).respond_with_handler(spec["stream"])
    r = call(gateway, api, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    events = [json.loads(line[6:]) for line in r.get_data().split(b"\n\n") if line.startswith(b"data: {")]
    assert r.get_data().endswith(b"data: [DONE]\n\n")
    for event in events:
        schemas.check("CreateChatCompletionStreamResponse", event)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == spec["stream_text"]
    p, c = spec["stream_usage"]
    assert basic(events[-1]["usage"]) == {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                                   "cost": (p + c) / 1000}
    request, sent = received(upstream)
    assert sent == spec["stream_body"]
    if api == "gemini":
        assert request.args.to_dict() == {"alt": "sse"}


@pytest.mark.parametrize("api", APIS)
def test_n2(gateway, upstream, api):
    spec = SPECS[api]
    upstream.expect_request(spec["path"]).respond_with_handler(spec["n2"])
    r = call(gateway, api, n=2)
    assert r.status_code == 200, r.json
    schemas.check("CreateChatCompletionResponse", r.json)
    assert [ch["index"] for ch in r.json["choices"]] == [0, 1]
    calls = 2 if api in ("ollama", "anthropic") else 1
    assert len(upstream.log) == calls
    _, body = received(upstream)
    if api == "gemini":
        assert body["generationConfig"]["candidateCount"] == 2
    elif api == "openai":
        assert body["n"] == 2
    else:
        assert "n" not in body
    usage = r.json["usage"]
    assert charges("alice")[0].delta == -(usage["prompt_tokens"] + usage["completion_tokens"]) * 1000


@pytest.mark.parametrize("api", APIS)
def test_tool_call_round_trip(gateway, upstream, api):
    spec = SPECS[api]
    upstream.expect_request(spec["path"]).respond_with_handler(spec["tool"])
    r = call(gateway, api, tools=TOOLS)
    assert r.status_code == 200, r.json
    schemas.check("CreateChatCompletionResponse", r.json)
    assert r.json["choices"][0]["finish_reason"] == "tool_calls"
    tool_call = r.json["choices"][0]["message"]["tool_calls"][0]
    assert tool_call["function"]["name"] == "get_weather"
    assert json.loads(tool_call["function"]["arguments"]) == {"city": "Paris"}
    r = call(gateway, api, tools=TOOLS, messages=ROUND_TRIP)
    assert r.status_code == 200
    assert spec["tool_result"](received(upstream)[1])


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("status,expect,code", [(400, 400, "upstream_invalid_request"),
                                                (401, 502, "generation_failed"),
                                                (429, 429, "upstream_rate_limited"),
                                                (500, 502, "generation_failed")])
def test_provider_errors(gateway, upstream, api, status, expect, code):
    spec = SPECS[api]
    upstream.expect_request(spec["path"]).respond_with_handler(spec["error"](status))
    r = call(gateway, api)
    assert r.status_code == expect and r.json["error"]["code"] == code
    schemas.check("ErrorResponse", r.json)
    assert KEY not in r.get_data(as_text=True)
    assert holds() == 0 and not charges("alice")


@pytest.mark.parametrize("api,param,value", [("anthropic", "logprobs", True), ("gemini", "logit_bias", {"1": 2}),
                                             ("ollama", "top_logprobs", 2), ("anthropic", "seed", 3)])
def test_parameters_a_provider_cannot_honour_are_400_naming_them(gateway, upstream, api, param, value):
    """SPEC §7: a translated row answers 400 naming the field (a 501 made the OpenAI SDK raise
    InternalServerError for the client's own choice of parameter); OpenAI's code for it."""
    r = call(gateway, api, **{param: value})
    assert r.status_code == 400 and r.json["error"]["param"] == param
    assert r.json["error"]["type"] == "invalid_request_error" and r.json["error"]["code"] == "unsupported_parameter"
    assert r.headers["x-should-retry"] == "false" and not upstream.log


def test_shipped_gemini_and_anthropic_rows_need_only_a_key(make_app, upstream):
    app = make_app(PROVIDER_KEYS={"GEMINI_API_KEY": KEY, "ANTHROPIC_API_KEY": KEY})
    assert app.test_cli_runner().invoke(
        args=["seed-models", "--file", str(ROOT / "config" / "models.toml")]).exit_code == 0
    client = app.test_client()
    for model_id in (2, 6):  # point the shipped rows at the fake instead of the internet
        client.patch(f"/api/admin/models/{model_id}", headers=auth("root", True),
                     json={"base_url": upstream.url_for("/").rstrip("/")})
    client.post("/api/admin/accounts/alice/credits", json={"amount": 100}, headers=auth("root", True))
    upstream.expect_request("/v1beta/models/gemini-2.0-flash:generateContent").respond_with_handler(
        _json(("gemini", "generate.json")))
    upstream.expect_request("/v1/messages").respond_with_handler(_json(("anthropic", "message.json")))
    for model in ("gemini-2.0-flash:generateContent", "claude-3-5-haiku-latest"):
        r = client.post("/api/v1/chat/completions", headers=auth(),
                        json={"model": model, "messages": [{"role": "user", "content": "Hi"}]})
        assert r.status_code == 200, r.json
        assert r.json["model"] == model
    assert upstream.log[0][0].headers["x-goog-api-key"] == KEY
    assert upstream.log[1][0].get_json()["model"] == "claude-3-5-haiku-latest"


def _history(*calls) -> list:
    return [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": list(calls)},
            {"role": "tool", "tool_call_id": "a", "content": "r"}]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("calls,param", [
    ([{"id": "a", "type": "function"}], "messages[1].tool_calls[0]"),
    ([[], -1], "messages[1].tool_calls[0]"),
    ([{"type": "function", "function": {"name": "f", "arguments": "{}"}}], "messages[1].tool_calls[0]"),
    ([{"id": "a", "type": "function", "function": {"name": "f", "arguments": 5}}],
     "messages[1].tool_calls[0].function.arguments"),
    ("not a list", "messages[1].tool_calls")])
def test_a_malformed_tool_call_in_the_history_is_a_400_naming_it_on_every_row(gateway, upstream, api, calls, param):
    """SPEC §8: no bad input is a 5xx. An assistant message's tool call missing its function (or
    not an object) was a 500 on the translated rows (the adapters read it) and went upstream on
    OpenAI's; OpenAI's schema decides its shape."""
    r = call(gateway, api, messages=_history(*calls) if isinstance(calls, list) else [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "tool_calls": calls}])
    assert r.status_code == 400, r.json
    assert r.json["error"]["param"] == param and r.json["error"]["code"] == "invalid_messages"
    schemas.check("ErrorResponse", r.json)
    assert not upstream.log and holds() == 0 and not charges("alice")


@pytest.mark.parametrize("api", ["anthropic", "gemini", "ollama"])
@pytest.mark.parametrize("arguments", ["not json", "[1, 2]"])
def test_tool_call_arguments_a_translating_provider_cannot_take_are_a_400(gateway, upstream, api, arguments):
    """A translating provider takes a call's arguments as an object: text that is not a JSON
    object (a model's broken JSON sent back) was a 500 on Anthropic and Gemini rows and was
    silently sent as {} to Ollama; it is a 400 naming the field."""
    r = call(gateway, api, messages=_history({"id": "a", "type": "function",
                                              "function": {"name": "f", "arguments": arguments}}))
    assert r.status_code == 400, r.json
    assert r.json["error"]["param"] == "messages[1].tool_calls[0].function.arguments"
    assert not upstream.log and holds() == 0 and not charges("alice")


@pytest.mark.parametrize("api", APIS)
def test_a_custom_tool_call_goes_to_openai_and_is_a_400_elsewhere(gateway, upstream, api):
    """OpenAI's schema has custom tool calls (type custom, a name and a text input): an OpenAI row
    sends them on; a translating provider has no such call."""
    spec = SPECS[api]
    upstream.expect_request(spec["path"]).respond_with_handler(spec["length"])
    r = call(gateway, api, messages=_history({"id": "a", "type": "custom", "custom": {"name": "f", "input": "x"}}))
    if api == "openai":
        assert r.status_code == 200, r.json
        assert received(upstream)[1]["messages"][1]["tool_calls"][0]["custom"] == {"name": "f", "input": "x"}
    else:
        assert r.status_code == 400 and r.json["error"]["param"] == "messages[1].tool_calls[0]"
        assert not upstream.log
