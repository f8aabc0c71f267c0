"""An upstream that sends more than any answer holds (UPSTREAM_MAX_BYTES): a stream line that never
ends, a body without end. The gateway stops reading at the bound, drops the connection, answers
with the contract's error, and charges nothing for what it did not deliver."""
from __future__ import annotations

import gzip
import json

import pytest
import requests

from tests.conftest import token
from tests.fakes import openai as fake_openai
from tests.fakes.framed import FramedUpstream
from tests.helpers import account, charges, holds, invariant, wait_for

LIMIT = 1 << 20
FILL = b"a" * 65536
MANY = 512  # pieces of FILL: 32 MiB, far past the bound and the loopback's socket buffers


@pytest.fixture
def gateway(make_app, live_factory):
    app = make_app(UPSTREAM_MAX_BYTES=LIMIT)
    live = live_factory(app)
    admin = {"Authorization": f"Bearer {token('root', True)}"}
    requests.post(f"{live.url}/api/admin/accounts/alice/credits", json={"amount": 100}, headers=admin,
                  timeout=10).raise_for_status()

    def serve(pieces: list[bytes], framing: str, content_type: str = "application/json", **kwargs) -> FramedUpstream:
        fake = FramedUpstream(pieces, framing, content_type, awaited=set(), **kwargs)
        requests.post(f"{live.url}/api/admin/models", headers=admin, timeout=10, json={
            "id": 10, "name": "big", "api": "openai", "base_url": fake.url + "/v1",
            "cost_per_1k_tokens": "1"}).raise_for_status()
        made.append(fake)
        return fake

    made: list[FramedUpstream] = []
    serve.url = live.url
    yield serve
    for fake in made:
        fake.close()


def call(url: str, stream: bool) -> requests.Response:
    return requests.post(f"{url}/api/v1/chat/completions", headers={"Authorization": f"Bearer {token()}"},
                         json={"model": "big", "stream": stream, "messages": [{"role": "user", "content": "hi"}]},
                         timeout=60)


def nothing_charged() -> None:
    wait_for(lambda: holds() == 0)
    assert charges("alice") == [] and account("alice").held == 0
    invariant("alice")


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
def test_a_stream_line_that_never_ends_is_cut_at_the_bound(gateway, framing):
    start = b'data: {"id":"up","object":"chat.completion.chunk","created":1,"model":"up","choices":[{"index":0,"delta":{"content":"'
    fake = gateway([start] + [FILL] * MANY, framing, "text/event-stream")
    answer = call(gateway.url, stream=True)
    assert answer.status_code == 200  # the stream had begun: the error is its last event
    events = [json.loads(line[6:]) for line in answer.content.split(b"\n") if line.startswith(b"data: {")]
    assert events[-1]["error"]["code"] == "generation_failed"
    assert events[-1]["error"]["message"] == f"openai sent a stream line over {LIMIT} bytes; the stream was cut"
    assert fake.closed.wait(10), "the upstream connection was not dropped"
    assert fake.sent < MANY // 2, f"the gateway read on: {fake.sent} of {MANY} pieces sent"
    nothing_charged()


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
def test_an_answer_over_the_bound_is_502_and_read_no_further(gateway, framing):
    fake = gateway([b'{"id": "up", "pad": "'] + [FILL] * MANY + [b'"}'], framing)
    answer = call(gateway.url, stream=False)
    assert answer.status_code == 502
    assert answer.json()["error"] == {"message": f"openai answered with more than {LIMIT} bytes",
                                      "type": "api_error", "param": None, "code": "generation_failed"}
    assert fake.closed.wait(10), "the upstream connection was not dropped"
    assert fake.sent < MANY // 2, f"the gateway read on: {fake.sent} of {MANY} pieces sent"
    assert len(fake.requests) == 1  # not retried: another try would send as much again
    nothing_charged()


def test_the_bound_counts_the_answer_decompressed(gateway):
    """A gzip body of 32 KiB that inflates to 32 MiB: the bound is on what it inflates to."""
    bomb = gzip.compress(b'{"id": "up", "pad": "' + FILL * MANY + b'"}')
    assert len(bomb) < LIMIT // 8
    gateway([bomb], "length", headers={"Content-Encoding": "gzip"})
    answer = call(gateway.url, stream=False)
    assert answer.status_code == 502
    assert answer.json()["error"]["message"] == f"openai answered with more than {LIMIT} bytes"
    nothing_charged()


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_an_answer_of_exactly_the_bound_is_served(gateway, framing):
    body = json.dumps(fake_openai.completion("fits")).encode()
    fake = gateway([body, b" " * (LIMIT - len(body))], framing)  # JSON padded to the byte
    answer = call(gateway.url, stream=False)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "fits"
    wait_for(lambda: len(charges("alice")) == 1 and holds() == 0)
    invariant("alice")
    assert fake.sent == 2
