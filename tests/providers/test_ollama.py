from __future__ import annotations

import json

from providers.base import StreamState
from providers.ollama import OllamaAdapter
from service.web.errors import UpstreamRejected
from tests.providers import ROUND_TRIP, TOOLS, chat, fixture, lines

A = OllamaAdapter()


def test_request_maps_options_and_format():
    body = A.request(chat([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                          max_completion_tokens=9, top_p=0.5, stop="x", response_format={"type": "json_object"}))
    assert body == {"model": "up-model", "stream": False, "messages": [{"role": "user", "content": "Hi"}],
                    "options": {"num_predict": 9, "top_p": 0.5, "stop": ["x"]}, "format": "json"}


def test_tool_round_trip_request():
    body = A.request(chat(ROUND_TRIP, tools=TOOLS))
    assert body["tools"] == TOOLS
    assert body["messages"][1] == {"role": "assistant", "content": "",
                                   "tool_calls": [{"function": {"name": "get_weather",
                                                                "arguments": {"city": "Paris"}}}]}
    assert body["messages"][2] == {"role": "tool", "content": "{\"temp_c\": 18}"}


def test_response_and_tool_call():
    done = A.response(json.loads(fixture("ollama", "chat.json")), chat([]))
    assert (done.prompt_tokens, done.completion_tokens) == (26, 298)
    call = A.response(json.loads(fixture("ollama", "tool_call.json")), chat([]))
    assert call.choices[0]["finish_reason"] == "tool_calls"
    assert call.choices[0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'


def test_stream():
    state = StreamState()
    deltas = list(A.stream_events(lines("ollama", "stream.ndjson"), state))
    assert "".join(d.content or "" for d in deltas) == "The sky"
    assert state.done and (state.prompt_tokens, state.completion_tokens) == (26, 2)


def test_error():
    err = A.error(404, fixture("ollama", "error_404.json").decode(), "ollama")
    assert isinstance(err, UpstreamRejected) and "not found" in err.message
