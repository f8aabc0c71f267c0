from __future__ import annotations

import json

import pytest

from core.chat import PassThrough
from providers.anthropic import AnthropicAdapter
from providers.base import StreamState
from core.errors import UnsupportedParameter
from service.web.errors import InvalidRequest, ProviderError, UpstreamRejected
from tests.providers import ROUND_TRIP, TOOLS, chat, fixture, lines

A = AnthropicAdapter()


def test_request_maps_system_max_tokens_clamp_and_stop():
    c = chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}],
             temperature=1.7, top_p=0.8, stop=["END", "STOP"], user="u-1")
    assert A.request(c) == {
        "model": "up-model", "max_tokens": 1024, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                     {"role": "user", "content": "Bye"}],
        "temperature": 1.0, "top_p": 0.8, "stop_sequences": ["END", "STOP"],
        "metadata": {"user_id": "u-1"}}
    assert A.request(chat([{"role": "user", "content": "x"}], max_tokens=5, stream=True))["max_tokens"] == 5
    assert A.headers("k") == {"Content-Type": "application/json", "anthropic-version": "2023-06-01",
                              "x-api-key": "k"}


def test_tools_and_tool_results():
    body = A.request(chat(ROUND_TRIP, tools=TOOLS, tool_choice={"type": "function",
                                                                 "function": {"name": "get_weather"}}))
    assert body["tools"] == [{"name": "get_weather", "description": "Weather now",
                              "input_schema": TOOLS[0]["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                      "content": "{\"temp_c\": 18}"}]}]


def test_response_and_tool_use():
    done = A.response(json.loads(fixture("anthropic", "message.json")), chat([]))
    assert done.choices[0]["message"]["content"] == "Hi! My name is Claude."
    assert (done.prompt_tokens, done.completion_tokens) == (10, 25)
    tool = A.response(json.loads(fixture("anthropic", "tool_use.json")), chat([]))
    assert tool.choices[0]["finish_reason"] == "tool_calls"
    assert tool.choices[0]["message"]["tool_calls"] == [{
        "id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]


@pytest.mark.parametrize("reason,mapped", [("end_turn", "stop"), ("stop_sequence", "stop"),
                                           ("max_tokens", "length"), ("tool_use", "tool_calls")])
def test_stop_reasons(reason, mapped):
    payload = json.loads(fixture("anthropic", "message.json"))
    payload["stop_reason"] = reason
    assert A.response(payload, chat([])).choices[0]["finish_reason"] == mapped


def test_stream_text_and_usage():
    state = StreamState()
    deltas = list(A.stream_events(lines("anthropic", "stream.sse"), state))
    assert "".join(d.content or "" for d in deltas) == "Hello!"
    assert deltas[-1].finish_reason == "stop"
    assert state.done and (state.prompt_tokens, state.completion_tokens) == (25, 15)


def test_stream_tool_use():
    state = StreamState()
    deltas = list(A.stream_events(lines("anthropic", "tool_use_stream.sse"), state))
    calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert calls[0]["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" and calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris"}'
    assert deltas[-1].finish_reason == "tool_calls"


def test_stream_error_event_raises():
    with pytest.raises(ProviderError, match="Overloaded"):
        list(A.stream_events(lines("anthropic", "error_stream.sse"), StreamState()))


def test_error_body_and_unsupported():
    err = A.error(400, fixture("anthropic", "error_400.json").decode(), "anthropic")
    assert isinstance(err, UpstreamRejected) and err.message == "max_tokens: Field required"
    for param, value in [("logprobs", True), ("seed", 1), ("presence_penalty", 0.5)]:
        with pytest.raises(UnsupportedParameter) as exc:
            A.check(chat([{"role": "user", "content": "x"}], **{param: value}))
        assert exc.value.param == param and exc.value.status == 400
    with pytest.raises(InvalidRequest):  # neither a data URL nor an https URL
        A.check(chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]))


def _native(body: dict, stream: bool = False, **headers):
    plain = chat(body["messages"], stream=stream)
    return PassThrough(plain.model, body["messages"], {}, stream, False, "r", body=body, headers=headers,
                       cap_field="max_tokens")


NATIVE = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}],
          "context_management": {"edits": []}, "thinking": {"type": "adaptive"}, "next_year": [1]}


def test_native_request_is_the_body_as_sent_with_model_and_cap():
    c = _native(NATIVE, stream=True, **{"anthropic-beta": "b1"})
    A.check(c)  # nothing refused: Anthropic judges its own body
    assert A.request(c) == {**NATIVE, "model": "up-model", "stream": True}
    assert A.call_headers(c, "k")["anthropic-beta"] == "b1" and A.call_headers(c, "k")["x-api-key"] == "k"
    uncapped = _native({k: v for k, v in NATIVE.items() if k != "max_tokens"})
    assert A.request(uncapped)["max_tokens"] == 1024  # the row's max_output_tokens
    assert "anthropic-beta" not in A.call_headers(chat([]), "k")


def test_native_response_is_whole_and_counted():
    payload = json.loads(fixture("anthropic", "cache.json"))
    done = A.response(payload, _native(NATIVE))
    assert done.raw == payload
    assert (done.prompt_tokens, done.completion_tokens) == (50 + 1800 + 2400, 210)
    assert done.detail == {"cached": 2400, "cache_write_5m": 1200, "cache_write_1h": 600, "reasoning": 0}


def test_native_stream_events_are_passed_whole_and_counted():
    state = StreamState()
    deltas = list(A.passed_events(lines("anthropic", "cache.sse"), state))
    recorded = [json.loads(line[6:]) for line in lines("anthropic", "cache.sse") if line.startswith(b"data: ")]
    assert [d.chunk for d in deltas] == recorded  # ping included
    assert "".join(d.content or "" for d in deltas) == "Paris."
    assert state.done and (state.prompt_tokens, state.completion_tokens) == (4250, 210)
