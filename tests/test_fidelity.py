"""Drop-in fidelity (issue 18): what a client sends reaches the provider, what the provider
returns reaches the client; parts stay parts; retry headers mean what they say."""
from __future__ import annotations

import json
import time

import openai
import pytest
from werkzeug import Response

from tests import schemas
from tests.conftest import PROVIDER_KEY, auth, token
from tests.fakes import ollama as fake_ollama
from tests.fakes import openai as fake_openai
from tests.providers import fixture

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PARTS = [{"type": "text", "text": "second"}, {"type": "text", "text": "question"},
         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
PATHS = {"openai": "/v1/chat/completions", "ollama": "/api/chat", "gemini": "/v1beta/models/up:generateContent",
         "anthropic": "/v1/messages"}
ANSWERS = {
    "openai": lambda: json.loads(fixture("openai", "completion.json")),
    "ollama": lambda: fake_ollama.chat("ok", 5, 2),
    "gemini": lambda: json.loads(fixture("gemini", "generate.json")),
    "anthropic": lambda: json.loads(fixture("anthropic", "message.json")),
}
TOOL_ANSWERS = {"ollama": ("ollama", "tool_call.json"), "gemini": ("gemini", "function_call.json"),
                "anthropic": ("anthropic", "tool_use.json")}
TRANSLATED = ["ollama", "gemini", "anthropic"]


def answer(upstream, api, body=None):
    body = body if body is not None else ANSWERS[api]()
    upstream.expect_request(PATHS[api]).respond_with_json(body)


def call(client, api, **body):
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return client.post("/api/v1/chat/completions", headers=auth(), json={"model": f"m-{api}", **body})


def sent(upstream) -> dict:
    return upstream.log[-1][0].get_json()


# --- OpenAI-compatible rows: everything through, both ways ---------------------------------------

def test_openai_answer_keeps_every_field(gateway, upstream):
    body = json.loads(fixture("openai", "completion.json"))
    body["choices"][0]["logprobs"] = {"content": [{"token": "Hello", "logprob": -0.1, "bytes": [72],
                                                   "top_logprobs": []}], "refusal": None}
    answer(upstream, "openai", body)
    r = call(gateway, "openai", logprobs=True)
    assert r.status_code == 200
    out = r.json
    schemas.check("CreateChatCompletionResponse", out)
    assert out["system_fingerprint"] == "fp_a1b2c3" and out["service_tier"] == "default"
    assert out["choices"][0]["message"]["annotations"] == []
    assert out["choices"][0]["logprobs"]["content"][0]["token"] == "Hello"
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
    assert out["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert out["usage"]["cost"] == 0.029 and out["model"] == "m-openai" and out["id"] == r.headers["X-Request-ID"]


def test_openai_stream_chunks_keep_every_field(gateway, upstream):
    def events(request):
        yield fake_openai.chunk({"role": "assistant", "content": ""})
        for word in ("Hel", "lo"):
            body = json.loads(fake_openai.chunk({"content": word})[6:])
            body["choices"][0]["logprobs"] = {"content": [{"token": word, "logprob": -0.5, "bytes": None,
                                                           "top_logprobs": []}], "refusal": None}
            body["service_tier"] = "default"
            yield b"data: " + json.dumps(body).encode() + b"\n\n"
        yield fake_openai.chunk({}, finish="stop")
        yield fake_openai.chunk({}, usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                                           "prompt_tokens_details": {"cached_tokens": 3}}, choices=False)
        yield b"data: [DONE]\n\n"

    upstream.expect_request(PATHS["openai"]).respond_with_handler(
        lambda request: Response(events(request), mimetype="text/event-stream"))
    r = call(gateway, "openai", stream=True, logprobs=True,
             stream_options={"include_usage": True, "include_obfuscation": False})
    chunks = [json.loads(line[6:]) for line in r.get_data().split(b"\n\n") if line.startswith(b"data: {")]
    for c in chunks:
        schemas.check("CreateChatCompletionStreamResponse", c)
    words = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert [c["choices"][0]["logprobs"]["content"][0]["token"] for c in words] == ["Hel", "lo"]
    assert all(c["service_tier"] == "default" and c["model"] == "m-openai" for c in words)
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}
    assert chunks[-1]["usage"]["cost"] == 0.007
    assert sent(upstream)["stream_options"] == {"include_usage": True, "include_obfuscation": False}


# --- translated rows: parts stay parts, images arrive, parameters map or are refused -------------

RECEIVED_PARTS = {
    "gemini": lambda body: body["contents"][0]["parts"] == [
        {"text": "second"}, {"text": "question"}, {"inline_data": {"mime_type": "image/png", "data": PNG}}],
    "anthropic": lambda body: body["messages"][0]["content"] == [
        {"type": "text", "text": "second"}, {"type": "text", "text": "question"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}],
    "ollama": lambda body: body["messages"][0] == {"role": "user", "content": "second\nquestion",
                                                   "images": [PNG]},
}


@pytest.mark.parametrize("api", TRANSLATED)
def test_parts_stay_parts_and_inline_images_arrive(gateway, upstream, api):
    answer(upstream, api)
    r = call(gateway, api, messages=[{"role": "user", "content": PARTS}])
    assert r.status_code == 200, r.json
    assert RECEIVED_PARTS[api](sent(upstream)), sent(upstream)


@pytest.mark.parametrize("api", TRANSLATED)
def test_image_urls_go_where_a_provider_takes_them(gateway, upstream, api):
    answer(upstream, api)
    url = "https://images.example/cat.png"
    r = call(gateway, api, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": url}}]}])
    if api == "anthropic":
        assert r.status_code == 200
        assert sent(upstream)["messages"][0]["content"][1] == {"type": "image", "source": {"type": "url", "url": url}}
    else:  # the gateway does not fetch URLs for a caller
        assert r.status_code == 400 and r.json["error"]["param"] == "messages[0].content[1]"
        assert "data URL" in r.json["error"]["message"] and not upstream.log


@pytest.mark.parametrize("api", TRANSLATED)
@pytest.mark.parametrize("param,value", [("verbosity", "low"), ("prediction", {"type": "content", "content": "x"}),
                                         ("store", True), ("unknownField", 1)])
def test_a_parameter_without_equivalent_is_a_400_naming_it(gateway, upstream, api, param, value):
    r = call(gateway, api, **{param: value})
    assert r.status_code == 400 and r.json["error"]["param"] == param
    assert param in r.json["error"]["message"] and r.headers["x-should-retry"] == "false"
    assert not upstream.log


MAPPED = {
    "gemini": lambda body: body["generationConfig"]["topK"] == 20
    and body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024},
    "anthropic": lambda body: body["top_k"] == 20 and body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    and body["metadata"] == {"user_id": "u-1"},
    "ollama": lambda body: body["options"]["top_k"] == 20 and body["think"] is True
    and body["options"]["repeat_penalty"] == 1.1,
}
EXTRA = {"anthropic": {"user": "u-1"}, "ollama": {"repetition_penalty": 1.1}, "gemini": {}}


@pytest.mark.parametrize("api", TRANSLATED)
def test_top_k_and_reasoning_effort_map(gateway, upstream, api):
    answer(upstream, api)
    r = call(gateway, api, top_k=20, reasoning_effort="low", max_tokens=2000, **EXTRA[api])
    assert r.status_code == 200, r.json
    assert MAPPED[api](sent(upstream)), sent(upstream)


def test_anthropic_thinking_needs_room(gateway, upstream):
    r = call(gateway, "anthropic", reasoning_effort="high", max_tokens=100)
    assert r.status_code == 400 and r.json["error"]["param"] == "max_tokens" and not upstream.log


LEGACY = [{"name": "get_weather", "description": "Weather now",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]


@pytest.mark.parametrize("api", TRANSLATED)
def test_legacy_function_calling_maps_to_tools_and_back(gateway, upstream, api):
    upstream.expect_request(PATHS[api]).respond_with_json(json.loads(fixture(*TOOL_ANSWERS[api])))
    r = call(gateway, api, functions=LEGACY, function_call="auto",
             messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert r.status_code == 200, r.json
    choice = r.json["choices"][0]
    assert choice["finish_reason"] == "function_call" and "tool_calls" not in choice["message"]
    assert choice["message"]["function_call"]["name"] == "get_weather"
    assert json.loads(choice["message"]["function_call"]["arguments"]) == {"city": "Paris"}
    body = json.dumps(sent(upstream))
    assert "get_weather" in body and "functions" not in body
    # the result comes back as a `function` message
    r = call(gateway, api, functions=LEGACY, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"role": "function", "name": "get_weather", "content": '{"temp_c": 18}'}])
    assert r.status_code == 200 and "temp_c" in json.dumps(sent(upstream))


def test_ollama_wording_follows_the_api_not_the_display_name(make_app, add_model, topup):
    client = make_app().test_client()
    add_model(id=9, name="local", api="ollama", provider="My Box", base_url="http://127.0.0.1:9")
    r = client.post("/api/v1/chat/completions", headers=auth(), json={"model": "local", "messages": [
        {"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.json["error"]["code"] == "ollama_unavailable"
    assert r.json["error"]["message"].startswith("Ollama service is unavailable")


# --- retry headers, through the official SDK with its default retries ------------------------------

@pytest.fixture
def sdk_gateway(make_app, live_factory, upstream, add_model):
    app = make_app(PROVIDER_KEYS={"FAKE_API_KEY": PROVIDER_KEY}, UPSTREAM_RETRIES=0)
    live = live_factory(app)
    for i, (api, base) in enumerate((("openai", "/v1"), ("gemini", "/"))):
        add_model(id=i + 1, name=f"m-{api}", api=api, upstream_model="up", api_key_env="FAKE_API_KEY",
                  base_url=upstream.url_for(base).rstrip("/"), cost_per_1k_tokens="0")
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=token("alice"))  # default retries (2)


HI = [{"role": "user", "content": "hi"}]


def test_sdk_raises_refused_parameters_at_once(sdk_gateway, upstream):
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as caught:
        sdk_gateway.chat.completions.create(model="m-gemini", messages=HI, logprobs=True)
    assert caught.value.code == "unsupported_parameter" and caught.value.param == "logprobs"
    assert "retry-after" not in caught.value.response.headers
    with pytest.raises(openai.BadRequestError):
        sdk_gateway.chat.completions.create(model="m-gemini", messages=HI, extra_body={"verbosity": "low"})
    assert time.monotonic() - started < 2 and not upstream.log


def test_sdk_retries_502_on_its_own_backoff(sdk_gateway, upstream):
    upstream.expect_request(PATHS["openai"]).respond_with_json({"error": {"message": "boom"}}, status=500)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        sdk_gateway.chat.completions.create(model="m-openai", messages=HI)
    assert caught.value.status_code == 502 and "retry-after" not in caught.value.response.headers
    assert len(upstream.log) == 3 and time.monotonic() - started < 10  # 1 + 2 retries, no 60 s waits


def test_upstream_429_carries_the_providers_retry_after(sdk_gateway, upstream):
    upstream.expect_request(PATHS["openai"]).respond_with_json(
        {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "1"})
    with pytest.raises(openai.RateLimitError) as caught:
        sdk_gateway.with_options(max_retries=0).chat.completions.create(model="m-openai", messages=HI)
    assert caught.value.response.headers["retry-after"] == "1"


def test_a_200_has_rate_limit_headers_but_no_retry_after(sdk_gateway, upstream):
    upstream.expect_request(PATHS["openai"]).respond_with_json(fake_openai.completion())
    raw = sdk_gateway.chat.completions.with_raw_response.create(model="m-openai", messages=HI)
    assert raw.status_code == 200 and "retry-after" not in raw.headers
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(raw.headers.keys())
