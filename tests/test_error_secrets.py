"""Provider error text is scrubbed of secrets wherever it is relayed (SPEC §8): an upstream whose
error quotes an sk- key, a bearer token and a JWT (none of them the gateway's own keys) reaches the
client with each replaced, in a plain error, a streamed error event, the Messages door and
several models at once."""
from __future__ import annotations

import json

import pytest
from werkzeug import Response

from tests.conftest import auth
from tests.fakes import ollama as fake_ollama
from tests.fakes import openai as fake_openai
from tests.helpers import holds

SK = "sk-proj-abcdefghijklmnop1234"
BEARER_TOKEN = "abc123def456ghi789"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLXZhbHVl"
LEAK = f"boom {SK} sent with Authorization: Bearer {BEARER_TOKEN}, session {JWT}"
MSGS = [{"role": "user", "content": "Hi"}]
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
BODIES = {"openai": {"error": {"message": LEAK, "type": "server_error"}},
          "anthropic": {"type": "error", "error": {"type": "api_error", "message": LEAK}}}


def scrubbed(text: str) -> None:
    """None of the secrets is in `text`; each was replaced, the rest of the message kept."""
    for secret in (SK, BEARER_TOKEN, JWT, "eyJ"):
        assert secret not in text, text
    assert "boom sk-[REDACTED]" in text and "Bearer [REDACTED]" in text and "session [REDACTED]" in text


def data(text: str) -> list[dict]:
    """The JSON data events of a stream."""
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def fails(upstream, api: str) -> None:
    upstream.expect_request(PATHS[api]).respond_with_json(BODIES[api], status=500)


def streams_an_error(upstream, api: str) -> None:
    """A stream that starts, then carries the provider's error event."""
    if api == "openai":
        events = [fake_openai.chunk({"role": "assistant", "content": ""}), fake_openai.chunk({"content": "a"}),
                  b"data: " + json.dumps(BODIES["openai"]).encode() + b"\n\n"]
    else:
        start = {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "up", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}}
        events = [f"event: message_start\ndata: {json.dumps(start)}\n\n".encode(),
                  f"event: error\ndata: {json.dumps(BODIES['anthropic'])}\n\n".encode()]
    upstream.expect_request(PATHS[api]).respond_with_handler(
        lambda request: Response(iter(events), mimetype="text/event-stream"))


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_plain_error_hides_the_secrets_the_upstream_quoted(gateway, upstream, api):
    fails(upstream, api)
    r = gateway.post("/v1/chat/completions", headers=auth(), json={"model": f"m-{api}", "messages": MSGS})
    assert r.status_code == 502 and r.json["error"]["code"] == "generation_failed"
    scrubbed(r.json["error"]["message"])
    scrubbed(r.get_data(as_text=True))
    assert holds() == 0


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_streamed_error_event_hides_them(gateway, upstream, api):
    streams_an_error(upstream, api)
    r = gateway.post("/v1/chat/completions", headers=auth(),
                     json={"model": f"m-{api}", "messages": MSGS, "stream": True})
    text = r.get_data(as_text=True)
    errors = [e["error"] for e in data(text) if "error" in e]
    assert errors, text
    scrubbed(errors[-1]["message"])
    scrubbed(text)


@pytest.mark.parametrize("api", ["openai", "anthropic"])  # translated, pass-through
@pytest.mark.parametrize("stream", [False, True])
def test_the_messages_door_hides_them(gateway, upstream, api, stream):
    (streams_an_error if stream else fails)(upstream, api)
    r = gateway.post("/v1/messages", headers=auth(),
                     json={"model": f"m-{api}", "max_tokens": 20, "messages": MSGS, "stream": stream})
    text = r.get_data(as_text=True)
    if stream:
        errors = [e["error"] for e in data(text) if e.get("type") == "error"]
        assert errors, text
        scrubbed(errors[-1]["message"])
    else:
        assert r.status_code >= 500 and r.json["type"] == "error"
        scrubbed(r.json["error"]["message"])
    scrubbed(text)


def test_several_models_at_once_hide_them(gateway, upstream):
    fails(upstream, "openai")
    upstream.expect_request("/api/chat").respond_with_json(fake_ollama.chat("Hi"))
    r = gateway.post("/v1/chat/completions", headers=auth(),
                     json={"models": ["m-openai", "m-ollama"], "messages": MSGS})
    assert r.status_code == 200, r.get_data(as_text=True)
    [failed] = [c for c in r.json["choices"] if c["finish_reason"] == "error"]
    scrubbed(failed["error"]["message"])
    scrubbed(r.get_data(as_text=True))
