from __future__ import annotations

import json

from providers.base import StreamState
from providers.openai import OpenAIAdapter
from service.web.errors import ProviderError, UpstreamRejected
from tests.providers import chat, fixture, lines

A = OpenAIAdapter()


def test_request_passes_through_and_asks_for_stream_usage():
    msgs = [{"role": "user", "content": "Hi"}]
    assert A.request(chat(msgs, temperature=0.1, max_tokens=7)) == {
        "model": "up-model", "messages": msgs, "temperature": 0.1, "max_tokens": 7}
    streamed = A.request(chat(msgs, stream=True))
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}
    assert A.headers("k")["Authorization"] == "Bearer k"


def test_request_without_a_cap_gets_the_rows_cap():
    msgs = [{"role": "user", "content": "Hi"}]
    assert A.request(chat(msgs, max_output=512)) == {"model": "up-model", "messages": msgs, "max_tokens": 512}
    assert A.request(chat(msgs, max_completion_tokens=9)) == {
        "model": "up-model", "messages": msgs, "max_completion_tokens": 9}
    # OpenAI's own API: its reasoning models refuse max_tokens
    for base in ("https://api.openai.com/v1", None):
        assert A.request(chat(msgs, max_output=512, base_url=base))["max_completion_tokens"] == 512
        assert "max_tokens" not in A.request(chat(msgs, base_url=base))


def test_response_and_tool_call():
    done = A.response(json.loads(fixture("openai", "completion.json")), chat([]))
    assert done.choices[0]["message"] == {"role": "assistant", "content": "Hello! How can I assist you today?",
                                          "refusal": None, "annotations": []}  # every field kept
    assert done.raw["system_fingerprint"] and done.usage["prompt_tokens_details"] == {
        "cached_tokens": 0, "audio_tokens": 0}
    assert (done.prompt_tokens, done.completion_tokens) == (19, 10)
    call = A.response(json.loads(fixture("openai", "tool_call.json")), chat([]))
    assert call.choices[0]["message"]["tool_calls"][0]["id"] == "call_abc123"


def test_stream():
    state = StreamState()
    deltas = list(A.stream_events(lines("openai", "stream.sse"), state))
    assert "".join(d.content or "" for d in deltas) == "Hello!"
    assert state.done and (state.prompt_tokens, state.completion_tokens) == (9, 2)


def test_errors():
    err = A.error(400, fixture("openai", "error_400.json").decode(), "openai")
    assert isinstance(err, UpstreamRejected) and "maximum context length" in err.message
    assert isinstance(A.error(503, "garbage", "openai"), ProviderError)
