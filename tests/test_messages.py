"""POST /v1/messages: the official anthropic SDK against the gateway, answered by OpenAI-compatible,
Gemini and Anthropic rows alike, with the chat call's billing and errors in Anthropic's shape."""
from __future__ import annotations

import json

import anthropic
import pytest
from werkzeug import Response

from tests.conftest import auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import anthropic_shape, charges, holds, invariant, json_answer
from tests.providers import fixture

TOOL = {"name": "get_weather", "description": "Weather now",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
PATHS = {"openai": "/v1/chat/completions", "gemini": "/v1beta/models/up:generateContent",
         "anthropic": "/v1/messages", "ollama": "/api/chat"}


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
    assert msg._request_id and msg._request_id.startswith("req_")
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


def test_the_sdks_model_list_and_retrieve_get_anthropics_shape(sdk, gateway):
    """Anthropic's SDK (`anthropic-version`, its key as `x-api-key`) gets ModelInfo objects and
    its list's paging fields; an unknown model is its NotFoundError. Without the header the list
    is OpenAI's."""
    from anthropic.types import ModelInfo

    listed = sdk.models.list()
    names = [m.id for m in listed.data]
    assert {"m-openai", "m-anthropic"} <= set(names) and listed.has_more is False
    assert listed.first_id == names[0] and listed.last_id == names[-1]
    for m in listed.data:
        ModelInfo.model_validate(m.model_dump(), strict=True)
        assert m.type == "model" and m.display_name == m.id and m.created_at.tzinfo is not None
    assert sdk.models.retrieve("m-openai").id == "m-openai"
    with pytest.raises(anthropic.NotFoundError) as err:
        sdk.models.retrieve("nope")
    assert err.value.body["error"]["type"] == "not_found_error"
    assert gateway.get("/v1/models", headers=auth()).json["object"] == "list"


def test_errors_before_the_doors_view_are_in_anthropics_shape_too(gateway):
    """A method the door does not serve and a body that is not JSON are refused before the door's
    own hook runs; they are still Anthropic errors, typed as the client's fault."""
    r = gateway.get("/v1/messages", headers=auth())
    assert r.status_code == 405 and r.headers["Allow"]
    anthropic_shape("error", r.json)
    assert r.json["request_id"].startswith("req_") and r.headers["request-id"] == r.json["request_id"]
    assert r.json["error"]["type"] == "invalid_request_error"
    r = gateway.post("/v1/messages", headers=auth(), data="hi", content_type="text/plain")
    assert r.status_code == 415
    anthropic_shape("error", r.json)
    assert r.json["error"]["type"] == "invalid_request_error"
    r = gateway.get("/v1/messages/nothing-here", headers=auth())
    assert r.status_code == 404 and r.json["error"]["type"] == "not_found_error"
    r = gateway.get("/v1/messagesx", headers=auth())  # not the door: the gateway's own shape
    assert r.status_code == 404 and r.json["success"] is False
    assert not charges("alice") and holds() == 0


@pytest.mark.parametrize("api", ["gemini", "anthropic"])
def test_count_tokens(sdk, api):
    counted = sdk.messages.count_tokens(model=f"m-{api}", messages=[{"role": "user", "content": "x" * 400}])
    assert 100 <= counted.input_tokens <= 130  # the estimate: 4 bytes a token, plus the framing
    assert counted._request_id.startswith("req_")


def test_count_tokens_on_an_anthropic_row_takes_what_its_calls_take(gateway):
    r = gateway.post("/v1/messages/count_tokens", headers=auth(), json={
        "model": "m-anthropic", "messages": [{"role": "user", "content": "x" * 400}],
        "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]})
    assert r.status_code == 200 and r.json["input_tokens"] > 100


def _sse(data: bytes) -> list[dict]:
    """A Messages stream's events (each `event:` name checked against its data's type)."""
    out = []
    for frame in data.decode().split("\n\n"):
        if not frame.strip():
            continue
        name, payload = frame.split("\n", 1)
        event = json.loads(payload.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        out.append(event)
    return out


def _post(gateway, body: dict, **headers):
    return gateway.post("/v1/messages", headers={**auth(), **headers}, json=body)


ANSWERS = {"openai": _json(fake_openai.completion("Hello from GPT", 9, 3)),
           "gemini": _json(fixture("gemini", "generate.json")), "ollama": _json(fixture("ollama", "chat.json"))}
# what Claude Code 2.1.197 sends on every call, besides model, messages, max_tokens, stream, system, tools
CLAUDE_CODE = {"metadata": {"user_id": '{"device_id":"d1","session_id":"s1"}'}, "thinking": {"type": "adaptive"},
               "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
               "output_config": {"effort": "high"}}


@pytest.mark.parametrize("api", ["openai", "gemini"])
def test_claude_codes_fields_and_the_sdks_are_served_on_translated_rows(gateway, upstream, api):
    """context_management, service_tier, a top-level and block cache_control, output_config and
    adaptive thinking were 400; a system message between turns was refused."""
    upstream.expect_request(PATHS[api]).respond_with_handler(ANSWERS[api])
    body = {"model": f"m-{api}", "max_tokens": 50, **CLAUDE_CODE, "service_tier": "auto",
            "cache_control": {"type": "ephemeral"}, "speed": "standard", "inference_geo": "us",
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
                {"role": "system", "content": "Agents: none."}]}
    r = _post(gateway, body)
    assert r.status_code == 200, r.json
    anthropic_shape("message", r.json)
    assert r.headers["request-id"].startswith("req_")
    sent = upstream.log[-1][0].get_json()
    assert not {"context_management", "service_tier", "cache_control", "metadata", "output_config"} & set(sent)
    if api == "openai":
        assert "reasoning_effort" not in sent  # adaptive: the model's own default
        assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                                    {"role": "system", "content": "Agents: none."}]
    else:
        assert "thinkingConfig" not in sent.get("generationConfig", {})
        assert "Agents: none." in json.dumps(sent["systemInstruction"])
    _charged_matches(anthropic.types.Usage(**r.json["usage"]))


def test_the_sdks_own_parameters_are_served(sdk, upstream):
    upstream.expect_request(PATHS["openai"]).respond_with_handler(ANSWERS["openai"])
    msg = sdk.messages.create(model="m-openai", max_tokens=50, messages=[{"role": "user", "content": "Hi"}],
                              service_tier="standard_only", cache_control={"type": "ephemeral"},
                              thinking={"type": "adaptive"}, output_config={"effort": "max"})
    assert msg.content[0].text == "Hello from GPT" and msg.usage.service_tier == "standard"
    assert "reasoning_effort" not in upstream.log[-1][0].get_json()


@pytest.mark.parametrize("thinking,config,effort", [
    ({"type": "enabled", "budget_tokens": 2048}, None, "low"),
    ({"type": "enabled", "budget_tokens": 2048}, {"effort": "max"}, "xhigh"),
    ({"type": "adaptive", "display": "omitted"}, {"effort": "high"}, None),
    ({"type": "disabled"}, {"effort": "low"}, None),
    (None, {"effort": "medium"}, None),
])
def test_thinking_and_effort(gateway, upstream, thinking, config, effort):
    upstream.expect_request(PATHS["openai"]).respond_with_handler(ANSWERS["openai"])
    body = {"model": "m-openai", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
    body.update({k: v for k, v in (("thinking", thinking), ("output_config", config)) if v is not None})
    assert _post(gateway, body).status_code == 200
    assert upstream.log[-1][0].get_json().get("reasoning_effort") == effort


def test_output_config_format_is_a_json_schema_response_format(gateway, upstream):
    upstream.expect_request(PATHS["openai"]).respond_with_handler(ANSWERS["openai"])
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    r = _post(gateway, {"model": "m-openai", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}],
                        "output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert r.status_code == 200, r.json
    assert upstream.log[-1][0].get_json()["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}


@pytest.mark.parametrize("field,value,param", [
    ("mcp_servers", [{"type": "url", "url": "https://mcp.example", "name": "x"}], "mcp_servers"),
    ("compaction", {"type": "enabled"}, "compaction"),
    ("frobnicate", True, "frobnicate"),
    ("thinking", {"type": "sometimes"}, "thinking"),
    ("service_tier", "priority_only", "service_tier"),
    ("output_config", {"effort": "huge"}, "output_config.effort"),
    ("output_config", {"verbosity": "low"}, "output_config.verbosity"),
    ("billing_policy", {"type": "billing_policy", "bill_to": "user_profile"}, "billing_policy"),
    ("tools", [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}], "tools[0]"),
    ("tools", [{**TOOL, "allowed_callers": ["code_execution_20250825"]}], "tools[0].allowed_callers"),
    ("tools", [TOOL, {**TOOL, "input_examples": {"city": "Paris"}}], "tools[1].input_examples"),
    ("tools", [{**TOOL, "search_hint": "weather"}], "tools[0].search_hint"),
    ("temperature", 1.5, "temperature"),  # Anthropic's ranges: 0 to 1 (a translated row took up to 2)
    ("top_p", -0.1, "top_p"),
    ("top_k", -1, "top_k"),
    ("top_k", 2 ** 64 + 5, "top_k"),
    ("tool_choice", {"type": "tool", "name": "Nope"}, "tool_choice.name"),  # not among the tools
])
def test_what_would_change_the_answer_is_refused_by_name(gateway, upstream, field, value, param):
    r = _post(gateway, {"model": "m-openai", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}],
                        field: value})
    assert r.status_code == 400 and r.json["error"]["type"] == "invalid_request_error"
    assert f"'{param}'" in r.json["error"]["message"], r.json
    anthropic_shape("error", r.json)
    assert r.headers["request-id"] == r.json["request_id"]
    assert not upstream.log and not charges("alice") and holds() == 0


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
SCREENSHOT = [{"role": "user", "content": "Take a screenshot"},
              {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                  {"type": "text", "text": "the screen"},
                  {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
                  {"type": "text", "text": "What is on it?"}]}]


@pytest.mark.parametrize("api", ["openai", "ollama", "gemini"])
def test_an_image_in_a_tool_result_reaches_the_provider(gateway, upstream, api):
    """It was dropped: only the result's text went upstream."""
    upstream.expect_request(PATHS[api]).respond_with_handler(ANSWERS[api])
    r = _post(gateway, {"model": f"m-{api}", "max_tokens": 50, "messages": SCREENSHOT,
                        "tools": [{"name": "shot", "input_schema": {"type": "object"}}]})
    assert r.status_code == 200, r.json
    sent = upstream.log[-1][0].get_json()
    if api == "openai":  # a tool message carries text only: the image follows it in a user message
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "the screen"}
        assert sent["messages"][3] == {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "text", "text": "What is on it?"}]}
    elif api == "ollama":
        assert sent["messages"][2] == {"role": "tool", "content": "the screen"}
        assert sent["messages"][3] == {"role": "user", "content": "What is on it?", "images": [PNG]}
    else:
        parts = sent["contents"][-1]["parts"]
        assert "functionResponse" in parts[0]
        assert {"inline_data": {"mime_type": "image/png", "data": PNG}} in parts


def test_a_tool_result_block_no_row_can_take_is_refused_by_name(gateway, upstream):
    messages = json.loads(json.dumps(SCREENSHOT))
    messages[2]["content"][0]["content"].append({"type": "search_result", "source": "s", "title": "t",
                                                 "content": [{"type": "text", "text": "x"}]})
    r = _post(gateway, {"model": "m-openai", "max_tokens": 50, "messages": messages})
    assert r.status_code == 400 and "'messages[2].content[0].content[2]'" in r.json["error"]["message"]
    assert not upstream.log


def test_a_stop_sequence_the_provider_names_is_stop_sequence(sdk, upstream):
    """vLLM names the sequence it stopped on (`stop_reason`); OpenAI itself does not say."""
    answer = fake_openai.completion("Counting: 1, 2", 9, 3)
    answer["choices"][0]["stop_reason"] = "3"
    upstream.expect_request(PATHS["openai"]).respond_with_handler(_json(answer))
    msg = sdk.messages.create(model="m-openai", max_tokens=50, stop_sequences=["3"],
                              messages=[{"role": "user", "content": "Count"}])
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "3")
    assert upstream.log[-1][0].get_json()["stop"] == ["3"]


def test_translated_stream_events_have_anthropics_shapes(gateway, upstream):
    fake = fake_openai.Stream(["Hel", "lo"])
    upstream.expect_request(PATHS["openai"]).respond_with_handler(fake.handler)
    r = _post(gateway, {"model": "m-openai", "max_tokens": 50, "stream": True,
                        "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200 and r.headers["request-id"].startswith("req_")
    events = _sse(r.data)
    for event in events:
        anthropic_shape("event", event)
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "content_block_delta",
                                           "content_block_delta", "content_block_stop", "message_delta",
                                           "message_stop"]
    assert set(events[0]["message"]["usage"]) == {"input_tokens", "cache_creation_input_tokens",
                                                  "cache_read_input_tokens", "cache_creation", "output_tokens",
                                                  "service_tier"}
    assert events[-2]["usage"] == {"input_tokens": 9, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 0, "output_tokens": 2}


# --- native: an anthropic row gets the body as sent and its answer back whole

NATIVE = {"model": "m-anthropic", "max_tokens": 300, **CLAUDE_CODE, "service_tier": "auto",
          "mcp_servers": [], "a_field_from_next_year": {"x": 1},
          "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
          "messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 5000}]},
                       {"role": "system", "content": "Agents: none."}]}


def test_an_anthropic_row_gets_the_body_as_sent_and_answers_whole(gateway, upstream):
    answer = json.loads(fixture("anthropic", "cache.json"))
    answer.update(stop_reason="stop_sequence", stop_sequence="END", container=None, a_reply_field_from_next_year=1)
    upstream.expect_request(PATHS["anthropic"]).respond_with_handler(_json(answer))
    beta = "context-management-2025-06-27,effort-2025-11-24"
    r = _post(gateway, NATIVE, **{"anthropic-beta": beta, "anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.json
    request = upstream.log[-1][0]
    assert request.get_json() == {**NATIVE, "model": "up"}
    assert request.headers["anthropic-beta"] == beta and request.headers["x-api-key"] == "provider-secret-key-123"
    assert r.json == {**answer, "model": "m-anthropic"}
    assert r.headers["request-id"].startswith("req_")
    _charged_matches(anthropic.types.Usage(**answer["usage"]))  # input, cache read, cache writes, output


def test_an_anthropic_row_without_a_cap_gets_the_rows(gateway, upstream):
    upstream.expect_request(PATHS["anthropic"]).respond_with_handler(_json(fixture("anthropic", "message.json")))
    body = {k: v for k, v in NATIVE.items() if k != "max_tokens"}
    assert _post(gateway, body).status_code == 200
    assert upstream.log[-1][0].get_json()["max_tokens"] == 64


def test_an_anthropic_rows_stream_comes_back_event_for_event(gateway, upstream):
    upstream.expect_request(PATHS["anthropic"]).respond_with_handler(
        lambda request: Response(fixture("anthropic", "cache.sse"), mimetype="text/event-stream"))
    r = _post(gateway, {**NATIVE, "stream": True})
    assert r.status_code == 200 and r.headers["request-id"].startswith("req_")
    assert upstream.log[-1][0].get_json() == {**NATIVE, "model": "up", "stream": True}
    expected = _sse(fixture("anthropic", "cache.sse"))
    expected[0]["message"]["model"] = "m-anthropic"
    assert _sse(r.data) == expected  # ping and all
    _charged_matches(anthropic.types.Usage(**expected[0]["message"]["usage"] | {"output_tokens": 210}))


def test_a_stop_sequence_on_an_anthropic_row_is_stop_sequence(sdk, upstream):
    """It came back as end_turn with stop_sequence null."""
    answer = json.loads(fixture("anthropic", "message.json"))
    answer.update(stop_reason="stop_sequence", stop_sequence="END")
    upstream.expect_request(PATHS["anthropic"]).respond_with_handler(_json(answer))
    msg = sdk.messages.create(model="m-anthropic", max_tokens=50, stop_sequences=["END"],
                              messages=[{"role": "user", "content": "Count " + "x" * 200}])
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "END")
    assert msg._request_id.startswith("req_")


def test_every_answer_has_a_request_id(sdk):
    """The SDK's `_request_id` was None."""
    with pytest.raises(anthropic.NotFoundError) as err:
        sdk.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert err.value.request_id and err.value.request_id == err.value.body["request_id"]


def test_an_anthropic_rows_stream_replays_for_its_idempotency_key(gateway, upstream):
    upstream.expect_request(PATHS["anthropic"]).respond_with_handler(
        lambda request: Response(fixture("anthropic", "cache.sse"), mimetype="text/event-stream"))
    first = _post(gateway, {**NATIVE, "stream": True}, **{"Idempotency-Key": "k-native-1"})
    heard = first.data  # the stream runs to its end
    again = _post(gateway, {**NATIVE, "stream": True}, **{"Idempotency-Key": "k-native-1"})
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == heard and again.headers["request-id"] == first.headers["request-id"]
    assert len(upstream.log) == 1 and len(charges("alice")) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_tokens_are_thinking_tokens(gateway, upstream, stream):
    """OpenAI's reasoning tokens as Anthropic's output_tokens_details.thinking_tokens."""
    if stream:
        upstream.expect_request(PATHS["openai"]).respond_with_handler(
            lambda request: Response(fixture("openai", "cached_reasoning.sse"), mimetype="text/event-stream"))
    else:
        upstream.expect_request(PATHS["openai"]).respond_with_handler(_json(fixture("openai", "cached_reasoning.json")))
    r = _post(gateway, {"model": "m-openai", "max_tokens": 400, "stream": stream,
                        "messages": [{"role": "user", "content": "x" * 9000}]})
    assert r.status_code == 200
    if stream:
        events = _sse(r.data)
        for event in events:
            anthropic_shape("event", event)
        counted = events[-2]["usage"]
    else:
        anthropic_shape("message", r.json)
        counted = r.json["usage"]
    assert counted["output_tokens_details"] == {"thinking_tokens": 192}
    assert (counted["input_tokens"], counted["cache_read_input_tokens"]) == (2006 - 1920, 1920)


def test_advanced_tool_use_fields_claude_code_sends(gateway, upstream):
    """Claude Code 2.1.332 sends a `defer_loading` tool (and the beta allows `input_examples`):
    a deferred tool is declared from the start, examples are shown in the description."""
    upstream.expect_request(PATHS["openai"]).respond_with_handler(ANSWERS["openai"])
    tools = [{"name": "DeferredToolPlaceholder", "description": "never call this tool",
              "input_schema": {"type": "object", "properties": {}}, "defer_loading": True},
             {**TOOL, "input_examples": [{"city": "Paris"}], "allowed_callers": ["direct"]}]
    r = _post(gateway, {"model": "m-openai", "max_tokens": 50, "tools": tools,
                        "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.json
    sent = upstream.log[-1][0].get_json()["tools"]
    assert [t["function"]["name"] for t in sent] == ["DeferredToolPlaceholder", "get_weather"]
    assert sent[1]["function"]["description"] == 'Weather now\n\nInput examples:\n{"city": "Paris"}'


@pytest.mark.parametrize("gateway_type,anthropic_type", [("service_unavailable", "overloaded_error"),
                                                         ("timeout_error", "timeout_error"),
                                                         ("api_error", "api_error")])
def test_a_streams_error_event_says_what_failed(gateway_type, anthropic_type):
    """It always said api_error (the shutting-down gateway's 503 included)."""
    from frontdoors.anthropic import events

    chunks = [fake_openai.chunk({"role": "assistant", "content": "Hi"}),
              b"data: " + json.dumps({"error": {"type": gateway_type, "message": "m"}}).encode() + b"\n\n"]
    out = _sse(b"".join(events(iter(chunks))))
    assert out[-1] == {"type": "error", "error": {"type": anthropic_type, "message": "m"}}
    for event in out:
        anthropic_shape("event", event)


@pytest.mark.parametrize("stream", [False, True])
def test_a_providers_reasoning_is_a_thinking_block(gateway, upstream, stream):
    """DeepSeek's and vLLM's `reasoning_content` was dropped from the Messages answer."""
    if stream:
        pieces = [fake_openai.chunk({"role": "assistant", "content": ""}),
                  fake_openai.chunk({"reasoning_content": "Think"}), fake_openai.chunk({"reasoning_content": "ing."}),
                  fake_openai.chunk({"content": "Hello"}), fake_openai.chunk({}, finish="stop"),
                  fake_openai.chunk({}, usage={"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
                                    choices=False), b"data: [DONE]\n\n"]
        upstream.expect_request(PATHS["openai"]).respond_with_handler(
            lambda request: Response(pieces, mimetype="text/event-stream"))
    else:
        answer = fake_openai.completion("Hello", 9, 5)
        answer["choices"][0]["message"]["reasoning_content"] = "Thinking."
        upstream.expect_request(PATHS["openai"]).respond_with_handler(_json(answer))
    r = _post(gateway, {"model": "m-openai", "max_tokens": 50, "stream": stream, "thinking": {"type": "adaptive"},
                        "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200
    if stream:
        events = _sse(r.data)
        for event in events:
            anthropic_shape("event", event)
        starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
        thought = "".join(e["delta"].get("thinking", "") for e in events if e["type"] == "content_block_delta")
        assert starts == ["thinking", "text"] and thought == "Thinking."
    else:
        anthropic_shape("message", r.json)
        assert r.json["content"] == [{"type": "thinking", "thinking": "Thinking.", "signature": ""},
                                     {"type": "text", "text": "Hello"}]
