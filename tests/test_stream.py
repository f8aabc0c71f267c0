"""Streaming (SPEC §7): SSE chunks pass through at once, and billing matches what was delivered."""
from __future__ import annotations

import json
import re
import socket

import openai
import pytest
import requests

from core.chat import ChatRequest
from tests import schemas
from tests.conftest import token
from tests.fakes import ollama as fake_ollama
from tests.fakes import openai as fake_openai
from tests.helpers import basic, account, charges, holds, invariant, wait_for

MSGS = [{"role": "user", "content": "Tell me a story"}]
WORDS = ["Once", " upon", " a", " time", " there", " was", " a", " gateway", "."]


@pytest.fixture
def models(add_model, upstream, topup):
    add_model(id=10, name="fake-gpt", api="openai", base_url=upstream.url_for("/v1"),
              cost_per_1k_tokens="1")
    add_model(id=11, name="fake-llama", api="ollama", base_url=upstream.url_for("/"),
              cost_per_1k_tokens="1")
    topup("alice", 100)
    return upstream


def sdk(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/api/v1", api_key=token("alice"), max_retries=0)


@pytest.mark.parametrize("name,path,fake", [
    ("fake-gpt", "/v1/chat/completions", fake_openai.Stream(WORDS, prompt_tokens=7)),
    ("fake-llama", "/api/chat", fake_ollama.Stream(WORDS, prompt_eval_count=7)),
])
def test_sdk_reads_full_stream_with_usage(models, live, name, path, fake):
    models.expect_request(path).respond_with_handler(fake.handler)
    stream = sdk(live).chat.completions.create(model=name, messages=MSGS, stream=True,
                                               stream_options={"include_usage": True})
    chunks = [c.model_dump(exclude_unset=True) for c in stream]
    for c in chunks:
        schemas.check("CreateChatCompletionStreamResponse", c)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(WORDS)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    last = chunks[-1]
    assert last["choices"] == []
    assert basic(last["usage"]) == {"prompt_tokens": 7, "completion_tokens": len(WORDS),
                             "total_tokens": 7 + len(WORDS), "cost": 0.016}
    assert len({c["id"] for c in chunks}) == 1
    rows = charges("alice")
    assert len(rows) == 1 and rows[0].delta == -16_000 and not rows[0].estimated and holds() == 0
    sent = models.log[0][0].get_json()
    if name == "fake-gpt":
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    else:
        assert sent["stream"] is True


def test_stream_headers_and_done(models, live):
    models.expect_request("/v1/chat/completions").respond_with_handler(fake_openai.Stream(WORDS).handler)
    r = requests.post(f"{live.url}/api/chat/stream", json={"model": "fake-gpt", "messages": MSGS},
                      headers={"Authorization": f"Bearer {token()}"}, stream=True, timeout=10)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Cache-Control"] == "no-cache" and r.headers["X-Accel-Buffering"] == "no"
    events = [line for line in r.iter_lines() if line]
    assert events[-1] == b"data: [DONE]"
    assert not any(b'"usage"' in e for e in events)  # include_usage not asked


def test_each_token_reaches_the_client_before_the_next_is_sent(models, live):
    """The fake sends a token only once the client has the one before: a gateway that buffers
    (coalesces, waits for the end) leaves the fake waiting, and `missed` counts it."""
    fake = fake_openai.Stream(WORDS, lockstep=True)
    models.expect_request("/v1/chat/completions").respond_with_handler(fake.handler)
    arrived = []
    stream = sdk(live).chat.completions.create(model="fake-gpt", messages=MSGS, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrived.append(chunk.choices[0].delta.content)
            fake.ack()
    assert arrived == WORDS and fake.missed == 0


def read_tokens_then_hang_up(live, body: dict, count: int) -> None:
    """A raw HTTP client that reads `count` content chunks and closes its socket."""
    sock = socket.create_connection(("127.0.0.1", live.port))
    payload = json.dumps(body).encode()
    sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {token()}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                 + payload)
    seen, buf = 0, b""
    while seen < count:
        data = sock.recv(65536)
        assert data, "stream ended early"
        buf += data
        seen = len(re.findall(rb'"content":"[^"]', buf))
    sock.close()


@pytest.mark.parametrize("name,path,fake", [
    ("fake-gpt", "/v1/chat/completions", fake_openai.Stream(WORDS * 3, delay=0.1)),
    ("fake-llama", "/api/chat", fake_ollama.Stream(WORDS * 3, delay=0.1)),
])
def test_client_disconnect_closes_upstream_and_bills_delivered(models, live, name, path, fake):
    models.expect_request(path).respond_with_handler(fake.handler)
    read_tokens_then_hang_up(live, {"model": name, "messages": MSGS, "stream": True}, 3)
    assert fake.closed.wait(5), "upstream connection was not closed"
    assert len(fake.sent_at) < len(WORDS * 3)
    wait_for(lambda: len(charges("alice")) == 1 and holds() == 0)
    row = charges("alice")[0]
    model = type("M", (), {"max_output_tokens": 4096})()
    assert row.completion_tokens == 3 and row.estimated
    assert row.prompt_tokens == ChatRequest(model, MSGS).prompt_guess
    assert account("alice").held == 0
    invariant("alice")


@pytest.mark.parametrize("name,path,fake", [
    ("fake-gpt", "/v1/chat/completions", fake_openai.Stream(WORDS, drop_after=3)),
    ("fake-llama", "/api/chat", fake_ollama.Stream(WORDS, drop_after=3)),
])
def test_upstream_drop_mid_stream_is_error_event_and_partial_charge(models, live, name, path, fake):
    models.expect_request(path).respond_with_handler(fake.handler)
    r = requests.post(f"{live.url}/api/v1/chat/completions", stream=True, timeout=10,
                      json={"model": name, "messages": MSGS, "stream": True},
                      headers={"Authorization": f"Bearer {token()}"})
    lines = [line for line in r.iter_lines() if line]
    assert b"data: [DONE]" not in lines
    events = [json.loads(line[6:]) for line in lines]
    error = events[-1]
    schemas.check("ErrorResponse", error)
    assert error["error"]["code"] == "generation_failed" and error["success"] is False
    content = [e for e in events[:-1] if e["choices"][0]["delta"].get("content")]
    assert len(content) == 3
    rows = charges("alice")
    assert len(rows) == 1 and rows[0].completion_tokens == 3 and holds() == 0
    invariant("alice")


def test_error_before_first_byte_is_plain_json(models, live):
    models.expect_request("/v1/chat/completions").respond_with_json({"error": {"message": "no"}}, status=500)
    r = requests.post(f"{live.url}/api/v1/chat/completions", timeout=10,
                      json={"model": "fake-gpt", "messages": MSGS, "stream": True},
                      headers={"Authorization": f"Bearer {token()}"})
    assert r.status_code == 502 and r.headers["Content-Type"] == "application/json"
    schemas.check("ErrorResponse", r.json())
    assert holds() == 0 and not charges("alice")


def test_stream_n2_on_ollama_is_a_400_naming_n(client, models):
    r = client.post("/api/v1/chat/completions", headers={"Authorization": f"Bearer {token()}"},
                    json={"model": "fake-llama", "messages": MSGS, "stream": True, "n": 2})
    assert r.status_code == 400 and r.json["error"]["param"] == "n"
    assert r.json["error"]["code"] == "unsupported_parameter"
