"""Cache-write tokens a call was billed for are reported with its usage: the Responses door's
`input_tokens_details.cache_write_tokens` (docs/responses-fields.md) and the chat door's
`prompt_tokens_details.cache_write_tokens` (a property of OpenAI's CompletionUsage schema), from
an Anthropic upstream that wrote its cache (5-minute and 1-hour writes alike)."""
from __future__ import annotations

import json

import pytest
from werkzeug import Response

from tests import schemas
from tests.conftest import auth
from tests.schemas import check_responses

# Anthropic's usage: input excludes the cache; 3 tokens written (1 for 5 minutes, 2 for an hour)
COUNTS = {"input_tokens": 5, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 2,
          "cache_creation": {"ephemeral_5m_input_tokens": 1, "ephemeral_1h_input_tokens": 2}}
MSGS = [{"role": "user", "content": "Hi"}]


def _message() -> dict:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "up",
            "content": [{"type": "text", "text": "Paris."}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {**COUNTS, "output_tokens": 4}}


def _events() -> bytes:
    start = {**_message(), "content": [], "stop_reason": None, "usage": {**COUNTS, "output_tokens": 1}}
    events = [("message_start", {"message": start}),
              ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
              ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Paris."}}),
              ("content_block_stop", {"index": 0}),
              ("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                 "usage": {"output_tokens": 4}}),
              ("message_stop", {})]
    return b"".join(f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
                    for kind, data in events)


@pytest.fixture
def writes_cache(upstream):
    """The fake Anthropic upstream answers (streamed or not) reporting cache writes and reads."""
    def answer(request):
        if request.get_json().get("stream"):
            return Response(_events(), mimetype="text/event-stream")
        return Response(json.dumps(_message()), mimetype="application/json")

    upstream.expect_request("/v1/messages").respond_with_handler(answer)
    return upstream


def _data(r) -> list[dict]:
    return [json.loads(line[6:]) for line in r.get_data(as_text=True).splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize("stream", [False, True])
def test_responses_usage_reports_the_cache_writes_it_billed(gateway, writes_cache, stream):
    r = gateway.post("/v1/responses", headers=auth(), json={"model": "m-anthropic", "input": "Hi", "stream": stream})
    assert r.status_code == 200, r.get_data(as_text=True)
    body = [e for e in _data(r) if e["type"] == "response.completed"][0]["response"] if stream else r.json
    check_responses("Response", body)
    usage = body["usage"]
    assert usage["input_tokens"] == 10 and usage["output_tokens"] == 4
    assert usage["input_tokens_details"] == {"cached_tokens": 2, "cache_write_tokens": 3}
    assert usage["cost_details"]["cache_write_5m"] > 0 and usage["cost_details"]["cache_write_1h"] > 0


@pytest.mark.parametrize("stream", [False, True])
def test_chat_usage_reports_them_as_openais_schema_names_them(gateway, writes_cache, stream):
    r = gateway.post("/v1/chat/completions", headers=auth(), json={
        "model": "m-anthropic", "messages": MSGS, "stream": stream, "stream_options": {"include_usage": True}}
        if stream else {"model": "m-anthropic", "messages": MSGS})
    assert r.status_code == 200, r.get_data(as_text=True)
    if stream:
        chunks = _data(r)
        for chunk in chunks:
            schemas.check("CreateChatCompletionStreamResponse", chunk)
        usage = chunks[-1]["usage"]
    else:
        schemas.check("CreateChatCompletionResponse", r.json)
        usage = r.json["usage"]
    assert usage["prompt_tokens"] == 10
    assert usage["prompt_tokens_details"] == {"cached_tokens": 2, "cache_write_tokens": 3}
