"""POST /v1/messages: the official anthropic SDK against the gateway, answered by OpenAI-compatible,
Gemini and Anthropic rows alike, with the chat call's billing and errors in Anthropic's shape."""
from __future__ import annotations

import json

import anthropic
import pytest
from werkzeug import Response

from tests.conftest import auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import charges, holds, invariant, json_answer
from tests.providers import fixture

TOOL = {"name": "get_weather", "description": "Weather now",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
PATHS = {"openai": "/v1/chat/completions", "gemini": "/v1beta/models/up:generateContent",
         "anthropic": "/v1/messages"}


@pytest.fixture
def sdk(gateway, live_factory):
    live = live_factory(gateway.application)
    return anthropic.Anthropic(base_url=live.url, api_key=token(), max_retries=0)


_json = json_answer


def _charged_matches(usage) -> None:
    """1 credit per 1k tokens in the gateway fixture: 1000 micro-credits a token."""
    row = charges("alice")[-1]
    tokens = (usage.input_tokens + (usage.cache_read_input_tokens or 0)
              + (usage.cache_creation_input_tokens or 0) + usage.output_tokens)
    assert row.delta == -tokens * 1000
    assert holds() == 0
    invariant("alice")


@pytest.mark.parametrize("api,answer,text", [
    ("openai", _json(fake_openai.completion("Hello from GPT", 9, 3)), "Hello from GPT"),
    ("gemini", _json(fixture("gemini", "generate.json")), "AI learns patterns from data."),
])
def test_messages_create_over_other_providers(sdk, upstream, api, answer, text):
    upstream.expect_request(PATHS[api]).respond_with_handler(answer)
    msg = sdk.messages.create(model=f"m-{api}", max_tokens=50, system="Be brief.",
                              messages=[{"role": "user", "content": "Hi"}])
    assert msg.type == "message" and msg.role == "assistant" and msg.stop_reason == "end_turn"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == text
    assert msg.model == f"m-{api}"
    _charged_matches(msg.usage)
    sent = upstream.log[-1][0].get_json()
    if api == "openai":
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."} and sent["max_tokens"] == 50


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_messages_stream(sdk, upstream, api):
    if api == "openai":
        fake = fake_openai.Stream(["Hel", "lo", "!"])
        upstream.expect_request(PATHS[api]).respond_with_handler(
            lambda request: Response(fake.events(), mimetype="text/event-stream"))
    else:
        upstream.expect_request(PATHS[api]).respond_with_handler(
            lambda request: Response(fixture("anthropic", "stream.sse"), mimetype="text/event-stream"))
    with sdk.messages.stream(model=f"m-{api}", max_tokens=50,
                             messages=[{"role": "user", "content": "Hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello!" and final.content[0].text == "Hello!" and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    _charged_matches(final.usage)


TOOL_ANSWERS = {"openai": (("openai", "tool_call.json"), fake_openai.completion("18 degrees", 20, 4), "18 degrees"),
                "gemini": (("gemini", "function_call.json"), json.loads(fixture("gemini", "generate.json")),
                           "AI learns patterns from data.")}


@pytest.mark.parametrize("api", ["openai", "gemini"])
def test_tool_use_and_a_second_turn_with_its_result(sdk, upstream, api):
    call, answer, text = TOOL_ANSWERS[api]
    upstream.expect_ordered_request(PATHS[api]).respond_with_handler(_json(fixture(*call)))
    upstream.expect_ordered_request(PATHS[api]).respond_with_handler(_json(answer))
    first = sdk.messages.create(model=f"m-{api}", max_tokens=50, tools=[TOOL],
                                messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert first.stop_reason == "tool_use"
    use = first.content[0]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    second = sdk.messages.create(model=f"m-{api}", max_tokens=50, tools=[TOOL], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": '{"temp_c": 18}'}]}])
    assert second.content[0].text == text
    sent = upstream.log[-1][0].get_json()
    if api == "openai":
        assert sent["tools"][0]["function"]["parameters"] == TOOL["input_schema"]
        assert sent["messages"][1]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                                    "arguments": '{"city": "Paris"}'}
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": use.id, "content": '{"temp_c": 18}'}
    else:
        assert sent["contents"][1]["parts"][0]["functionCall"] == {"name": "get_weather", "args": {"city": "Paris"}}
        assert sent["contents"][-1]["parts"][0]["functionResponse"] == {"name": "get_weather",
                                                                         "response": {"temp_c": 18}}
    assert len(charges("alice")) == 2
    _charged_matches(second.usage)


def test_streamed_tool_use_arrives_as_input_json_deltas(sdk, upstream):
    upstream.expect_request(PATHS["anthropic"]).respond_with_handler(
        lambda request: Response(fixture("anthropic", "tool_use_stream.sse"), mimetype="text/event-stream"))
    # a prompt and a cap whose hold covers the recorded counts (472 in, 89 out)
    with sdk.messages.stream(model="m-anthropic", max_tokens=200, tools=[TOOL],
                             messages=[{"role": "user", "content": "Weather? " + "x" * 2000}]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds or "content_block_delta" in kinds
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].input == {"city": "Paris"} and final.stop_reason == "tool_use"
    _charged_matches(final.usage)


def test_errors_come_in_anthropics_shape(sdk, gateway):
    with pytest.raises(anthropic.NotFoundError) as err:
        sdk.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "not_found_error"
    r = gateway.post("/v1/messages", headers=auth(), json={"model": "m-openai", "messages": [
        {"role": "user", "content": "Hi"}]})
    assert r.status_code == 400 and r.json["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json["error"]["message"]
    r = gateway.post("/v1/messages", headers={"x-api-key": "sk-wrong"}, json={})
    assert r.status_code == 401 and r.json["error"]["type"] == "authentication_error"
    assert not charges("alice") and holds() == 0


def test_count_tokens(sdk):
    counted = sdk.messages.count_tokens(model="m-gemini", messages=[{"role": "user", "content": "x" * 400}])
    assert 100 <= counted.input_tokens <= 120  # the estimate: 4 bytes a token, plus the framing
