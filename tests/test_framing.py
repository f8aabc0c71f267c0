"""Every upstream framing is relayed as it arrives (issue 16): chunked, Content-Length, and a body
that ends when the connection closes; a client that hangs up pays for what it got."""
from __future__ import annotations

import json
import re
import socket
import threading

import pytest
from hypothesis import given, strategies as st

from service.pipeline.upstream import Stream
from tests.conftest import token
from tests.fakes.framed import FramedUpstream
from tests.helpers import account, charges, holds, invariant, wait_for

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def openai_pieces(words):
    def event(body):
        return b"data: " + json.dumps(body).encode() + b"\n\n"
    base = {"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    out = [event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                       "finish_reason": None}]})]
    out += [event({**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]})
            for w in words]
    out += [event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            event({**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(words),
                                                     "total_tokens": 5 + len(words)}}),
            b"data: [DONE]\n\n"]
    return out, set(range(1, len(words) + 1))


def ollama_pieces(words):
    out = [json.dumps({"model": "up", "message": {"role": "assistant", "content": w}, "done": False}).encode()
           + b"\n" for w in words]
    out.append(json.dumps({"model": "up", "message": {"role": "assistant", "content": ""}, "done": True,
                           "done_reason": "stop", "prompt_eval_count": 5, "eval_count": len(words)}).encode() + b"\n")
    return out, set(range(len(words)))


APIS = {"openai": (openai_pieces, "/v1", "text/event-stream"),
        "ollama": (ollama_pieces, "", "application/x-ndjson")}


@pytest.fixture
def framed(add_model, topup):
    made = []

    def start(api, framing, **kwargs):
        build, suffix, content_type = APIS[api]
        pieces, awaited = build(WORDS)
        fake = FramedUpstream(pieces, framing, content_type, awaited=awaited, **kwargs)
        made.append(fake)
        add_model(id=10, name="framed", api=api, base_url=fake.url + suffix, cost_per_1k_tokens="1")
        topup("alice", 100)
        return fake

    yield start
    for fake in made:
        fake.close()


def open_stream(live) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=15)
    body = json.dumps({"model": "framed", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {token()}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def words_in(buf: bytes) -> list[str]:
    return [w.decode() for w in re.findall(rb'"content":"([a-z]+)"', buf)]


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
@pytest.mark.parametrize("api", list(APIS))
def test_each_piece_is_relayed_as_it_arrives(framed, live, api, framing):
    """Lockstep: the fake sends the next piece only once the client has the one before; a gateway
    that waited for the end of the body would never see the second piece."""
    fake = framed(api, framing)
    sock = open_stream(live)
    buf, seen = b"", 0
    while b"[DONE]" not in buf:
        data = sock.recv(65536)
        assert data, "stream ended early"
        buf += data
        while len(words_in(buf)) > seen:
            seen += 1
            fake.go.release()  # the client has this piece: send the next
    sock.close()
    assert words_in(buf) == WORDS
    wait_for(lambda: len(charges("alice")) == 1 and holds() == 0)
    row = charges("alice")[0]
    assert (row.prompt_tokens, row.completion_tokens, row.estimated) == (5, len(WORDS), False)
    invariant("alice")


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
@pytest.mark.parametrize("api", list(APIS))
def test_hang_up_after_three_pieces_pays_for_three(framed, live, api, framing):
    fake = framed(api, framing, delay=0.1)
    sock = open_stream(live)
    buf = b""
    while len(words_in(buf)) < 3:
        data = sock.recv(65536)
        assert data, "stream ended early"
        buf += data
    sock.close()
    assert fake.closed.wait(10), "the upstream call was not closed"
    assert fake.sent < len(fake.pieces)
    wait_for(lambda: len(charges("alice")) == 1 and holds() == 0)
    row = charges("alice")[0]
    assert row.completion_tokens <= 3 and row.estimated
    assert account("alice").held == 0
    invariant("alice")


def whole_response(live) -> bytes:
    """One streamed call read to the end of the gateway's chunked body."""
    sock = open_stream(live)
    buf = b""
    while not (b"[DONE]" in buf and buf.endswith(b"\r\n0\r\n\r\n")):
        data = sock.recv(65536)
        assert data, "the gateway closed the connection before the end of the body"
        buf += data
    sock.close()
    return buf


@pytest.mark.parametrize("framing", ["chunked", "length"])
@pytest.mark.parametrize("api", list(APIS))
def test_finished_streams_reuse_the_upstream_connection(framed, live, api, framing):
    """A stream that ended reads the end of the body (a chunked body's closing chunk comes after
    the last event) so its connection serves the next call: with an HTTPS provider, no new TLS
    handshake per streamed call."""
    fake = framed(api, framing, delay=0.0, keep_alive=True)
    for _ in range(3):
        assert words_in(whole_response(live)) == WORDS
    assert fake.connections == 1
    wait_for(lambda: len(charges("alice")) == 3 and holds() == 0)
    invariant("alice")


def test_a_late_closing_chunk_is_not_waited_for(framed, live):
    """An upstream that holds its closing chunk back: the client gets its whole answer without
    it, and the connection is dropped (the next call opens another)."""
    hold_end = threading.Event()
    fake = framed("openai", "chunked", delay=0.0, keep_alive=True, hold_end=hold_end)
    try:
        assert words_in(whole_response(live)) == WORDS  # the fake still holds its closing chunk
    finally:
        hold_end.set()
    assert words_in(whole_response(live)) == WORDS
    assert fake.connections == 2
    wait_for(lambda: len(charges("alice")) == 2 and holds() == 0)
    invariant("alice")


LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@given(lines=st.lists(LINE, max_size=20), tail=LINE, cuts=st.lists(st.integers(0, 4000), max_size=30))
def test_lines_come_whole_however_the_reads_split_them(lines, tail, cuts):
    """A line split over any number of reads is yielded once, whole; what follows the last
    line break comes when the body ends."""
    body = b"".join(line + b"\n" for line in lines) + tail
    points = sorted({cut % (len(body) + 1) for cut in cuts})
    reads = [body[a:b] for a, b in zip([0, *points], [*points, len(body)]) if b > a]
    stream = Stream.__new__(Stream)  # what lines() reads: the network reads, no socket
    stream.provider, stream.max_bytes, stream._pieces = "up", 1 << 20, iter(reads)
    assert list(stream.lines()) == lines + ([tail] if tail else [])
