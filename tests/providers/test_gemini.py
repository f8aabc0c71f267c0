from __future__ import annotations

import json

import pytest

from providers.base import StreamState
from providers.gemini import GeminiAdapter
from core.errors import UnsupportedParameter
from service.web.errors import UpstreamRejected
from tests.providers import ROUND_TRIP, TOOLS, chat, fixture, lines

A = GeminiAdapter()


def test_request_maps_roles_system_and_generation_config():
    c = chat([{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "No jokes."},
              {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]},
              {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Hello"},
              {"role": "user", "content": "Bye"}],
             temperature=0.2, top_p=0.9, max_tokens=50, stop="END", n=2, seed=1,
             presence_penalty=0.1, frequency_penalty=0.2, response_format={"type": "json_object"})
    assert A.request(c) == {
        # parts stay parts: one Gemini part per OpenAI part
        "contents": [{"role": "user", "parts": [{"text": "Hi"}, {"text": "!"}, {"text": "Again"}]},
                     {"role": "model", "parts": [{"text": "Hello"}]},
                     {"role": "user", "parts": [{"text": "Bye"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "No jokes."}]},
        "generationConfig": {"temperature": 0.2, "topP": 0.9, "maxOutputTokens": 50, "candidateCount": 2,
                             "seed": 1, "presencePenalty": 0.1, "frequencyPenalty": 0.2,
                             "stopSequences": ["END"], "responseMimeType": "application/json"}}


def test_urls_and_key_header():
    model = chat([]).model
    model.upstream_model = "gemini-2.0-flash:generateContent"
    assert A.url("https://g", model, False) == "https://g/v1beta/models/gemini-2.0-flash:generateContent"
    assert A.url("https://g", model, True) == ("https://g/v1beta/models/gemini-2.0-flash:"
                                               "streamGenerateContent?alt=sse")
    assert A.headers("k") == {"Content-Type": "application/json", "x-goog-api-key": "k"}


def test_tools_and_tool_results():
    body = A.request(chat(ROUND_TRIP, tools=TOOLS, tool_choice="required"))
    assert body["tools"] == [{"functionDeclarations": [TOOLS[0]["function"]]}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                         "response": {"temp_c": 18}}}]}]


def test_response_and_function_call():
    done = A.response(json.loads(fixture("gemini", "generate.json")), chat([]))
    assert done.choices[0]["message"]["content"] == "AI learns patterns from data."
    assert done.choices[0]["finish_reason"] == "stop"
    assert (done.prompt_tokens, done.completion_tokens) == (11, 7)
    call = A.response(json.loads(fixture("gemini", "function_call.json")), chat([]))
    assert call.choices[0]["finish_reason"] == "tool_calls"
    assert call.choices[0]["message"]["tool_calls"][0]["function"] == {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}


@pytest.mark.parametrize("reason,mapped", [("STOP", "stop"), ("MAX_TOKENS", "length"),
                                           ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
                                           ("BLOCKLIST", "content_filter")])
def test_finish_reasons(reason, mapped):
    payload = json.loads(fixture("gemini", "generate.json"))
    payload["candidates"][0]["finishReason"] = reason
    assert A.response(payload, chat([])).choices[0]["finish_reason"] == mapped


def test_stream():
    state = StreamState()
    deltas = list(A.stream_events(lines("gemini", "stream.sse"), state))
    assert "".join(d.content or "" for d in deltas) == "AI learns patterns from data."
    assert deltas[-1].finish_reason == "stop" and state.done
    assert (state.prompt_tokens, state.completion_tokens) == (11, 7)


def test_error_body_and_unsupported():
    err = A.error(400, fixture("gemini", "error_400.json").decode(), "Google")
    assert isinstance(err, UpstreamRejected) and err.message.startswith("API key not valid")
    with pytest.raises(UnsupportedParameter) as exc:
        A.check(chat([{"role": "user", "content": "x"}], logprobs=True))
    assert exc.value.param == "logprobs" and exc.value.status == 400
