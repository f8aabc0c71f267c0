"""Several models at once (issue 36, SPEC §16): `models` with parallel "all" and "first"."""
from __future__ import annotations

import json
import re
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from werkzeug import Response

from tests import schemas
from tests.conftest import auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import account, charges, events, holds, invariant, wait_for

MSGS = [{"role": "user", "content": "Name a colour."}]
WORDS = ["Deep ", "sea ", "blue."]


@pytest.fixture
def rows(add_model, upstream, topup):
    """Rows `a` (1 credit per 1k), `b` (2 credits per 1k) and `c` (1 credit per 1k, its answers
    cached, hits at 0.5 per 1k), each behind its own path of the fake server; alice has 100
    credits."""
    for i, (name, price) in enumerate((("a", "1"), ("b", "2"), ("c", "1"))):
        cache = {"cache_ttl": 60, "cost_per_1k_cache_hit_tokens": "0.5"} if name == "c" else {}
        add_model(id=30 + i, name=name, api="openai", base_url=upstream.url_for(f"/{name}/v1"),
                  cost_per_1k_tokens=price, max_output_tokens=100, **cache)
    topup("alice", 100)
    return upstream


def answers(upstream, name: str, content: str, prompt: int = 10, completion: int = 5):
    upstream.expect_request(f"/{name}/v1/chat/completions").respond_with_json(
        fake_openai.completion(content, prompt, completion))


def fails(upstream, name: str, status: int = 500):
    upstream.expect_request(f"/{name}/v1/chat/completions").respond_with_json(
        {"error": {"message": f"{name} is down", "type": "server_error"}}, status=status)


def ask(client, **body):
    return client.post("/v1/chat/completions", headers=auth(),
                       json={"models": ["a", "b"], "messages": MSGS, **body})



def check_choices_schema(body: dict) -> None:
    """OpenAI's schema for the answer, on the choices that answered (an `error` finish is ours)."""
    schemas.check("CreateChatCompletionResponse",
                  {**body, "choices": [c for c in body["choices"] if c["finish_reason"] != "error"]})


def test_all_answers_with_each_models_choice_and_summed_usage(client, rows):
    answers(rows, "a", "Red.", 10, 5)
    answers(rows, "b", "Blue.", 12, 3)
    r = ask(client)
    assert r.status_code == 200
    body = r.json
    check_choices_schema(body)
    assert [(c["index"], c["model"], c["message"]["content"]) for c in body["choices"]] == [
        (0, "a", "Red."), (1, "b", "Blue.")]
    assert body["id"] == r.headers["X-Request-ID"]
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (22, 8, 30)
    assert usage["by_model"] == [
        {"model": "a", "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "cost": 0.015},
        {"model": "b", "prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "cost": 0.03}]
    assert usage["cost"] == 0.045
    rows_ = charges("alice")
    assert sorted(e.model for e in rows_) == ["a", "b"]
    assert {e.parallel_group for e in rows_} == {body["id"]}
    assert {e.request_id for e in rows_}.isdisjoint({body["id"]})
    assert account("alice").balance == 100_000_000 - 45_000
    listed = client.get("/api/v1/usage", headers=auth()).json["data"]
    assert all(row["parallel_group"] == body["id"] for row in listed if row["kind"] == "charge")
    invariant("alice")


def test_all_with_one_failing_model_still_answers(client, rows):
    answers(rows, "a", "Red.")
    fails(rows, "b", 400)
    r = ask(client)
    assert r.status_code == 200
    ok, failed = r.json["choices"]
    assert ok["message"]["content"] == "Red." and ok["finish_reason"] == "stop"
    assert failed["model"] == "b" and failed["finish_reason"] == "error"
    assert failed["error"]["code"] == "upstream_invalid_request" and "b is down" in failed["error"]["message"]
    assert r.json["usage"]["by_model"][1]["cost"] == 0
    assert [e.model for e in charges("alice")] == ["a"] and holds() == 0
    invariant("alice")


def test_all_failing_is_the_first_models_error(client, rows):
    fails(rows, "a", 400)
    fails(rows, "b", 400)
    r = ask(client)
    assert r.status_code == 400 and r.json["error"]["code"] == "upstream_invalid_request"
    assert charges("alice") == [] and holds() == 0


def test_all_streamed_interleaves_models_with_one_usage_chunk_and_one_done(client, rows):
    rows.expect_request("/a/v1/chat/completions").respond_with_handler(fake_openai.Stream(WORDS).handler)
    rows.expect_request("/b/v1/chat/completions").respond_with_handler(fake_openai.Stream(["Green."]).handler)
    r = ask(client, stream=True, stream_options={"include_usage": True})
    chunks = events(r)
    assert chunks[-1] == "[DONE]" and chunks.count("[DONE]") == 1
    usage = [c for c in chunks[:-1] if c["choices"] == []]
    assert len(usage) == 1 and chunks[-2] is usage[0]
    for c in chunks[:-1]:
        schemas.check("CreateChatCompletionStreamResponse", c)
        assert c["id"] == r.headers["X-Request-ID"]
    text = {0: "", 1: ""}
    for c in chunks[:-2]:
        choice = c["choices"][0]
        assert c["model"] == "ab"[choice["index"]]
        text[choice["index"]] += choice["delta"].get("content") or ""
    assert text == {0: "".join(WORDS), 1: "Green."}
    by_model = usage[0]["usage"]["by_model"]
    assert [(m["model"], m["completion_tokens"]) for m in by_model] == [("a", 3), ("b", 1)]
    assert usage[0]["usage"]["cost"] == round(sum(m["cost"] for m in by_model), 6)
    assert len(charges("alice")) == 2 and holds() == 0
    invariant("alice")


def test_all_streamed_with_a_failing_model_says_so_in_its_choice(client, rows):
    rows.expect_request("/a/v1/chat/completions").respond_with_handler(fake_openai.Stream(WORDS).handler)
    rows.expect_request("/b/v1/chat/completions").respond_with_handler(
        fake_openai.Stream(WORDS, drop_after=1).handler)
    chunks = events(ask(client, stream=True))
    errors = [c for c in chunks[:-1] if c["choices"] and c["choices"][0]["finish_reason"] == "error"]
    assert len(errors) == 1 and errors[0]["model"] == "b" and errors[0]["choices"][0]["index"] == 1
    assert errors[0]["choices"][0]["error"]["code"] == "generation_failed"
    assert not any(c != "[DONE]" and c["choices"] == [] for c in chunks)  # no usage asked for
    assert chunks[-1] == "[DONE]"
    billed = {e.model: e for e in charges("alice")}
    assert billed["b"].estimated and billed["b"].completion_tokens == 1  # what it sent
    invariant("alice")


class Slow:
    """An upstream that sends `first` tokens at once, then nothing until released."""

    def __init__(self, first: list[str]):
        self.first, self.release, self.closed = first, threading.Event(), threading.Event()
        self.sent = threading.Event()  # its first tokens are on the wire

    def handler(self, request):
        def events():
            try:
                yield fake_openai.chunk({"role": "assistant", "content": ""})
                for word in self.first:
                    yield fake_openai.chunk({"content": word})
                self.sent.set()  # (resumed: the last chunk was written)
                self.release.wait(30)  # longer than the answer waits for a closed call
                for word in ["late ", "words"]:
                    yield fake_openai.chunk({"content": word})
                yield fake_openai.chunk({}, finish="stop")
                yield b"data: [DONE]\n\n"
            finally:
                self.closed.set()
        return Response(events(), mimetype="text/event-stream")


def test_first_returns_the_first_complete_answer_and_bills_the_slow_model_for_what_it_sent(client, rows):
    slow = Slow(["Dark ", "red "])
    rows.expect_request("/a/v1/chat/completions").respond_with_handler(slow.handler)
    green = fake_openai.Stream(["Green."], prompt_tokens=10).handler

    def after_slow(request):  # the fast model answers once the slow one has sent its two
        slow.sent.wait(10)
        return green(request)
    rows.expect_request("/b/v1/chat/completions").respond_with_handler(after_slow)
    try:
        r = ask(client, parallel="first")
        assert not slow.release.is_set()  # answered while the slow model still had more to say
        body = r.json
        schemas.check("CreateChatCompletionResponse", body)
        assert body["model"] == "b" and body["choices"][0]["message"]["content"] == "Green."
        assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (10, 1)
        billed = {e.model: e for e in charges("alice")}
        assert billed["b"].delta == -22_000 and not billed["b"].estimated  # 11 tokens at 2 per 1k
        assert billed["a"].estimated and billed["a"].completion_tokens == 2  # the two it sent
        assert billed["a"].parallel_group == billed["b"].parallel_group == r.headers["X-Request-ID"]
        assert holds() == 0
        invariant("alice")
    finally:
        slow.release.set()


def test_first_streamed_is_the_first_to_send_content_and_the_other_is_closed(client, rows):
    slow = Slow([])
    rows.expect_request("/a/v1/chat/completions").respond_with_handler(slow.handler)
    rows.expect_request("/b/v1/chat/completions").respond_with_handler(fake_openai.Stream(WORDS).handler)
    try:
        r = ask(client, parallel="first", stream=True, stream_options={"include_usage": True})
        chunks = events(r)
        assert not slow.release.is_set()
        assert chunks[-1] == "[DONE]"
        for c in chunks[:-1]:
            schemas.check("CreateChatCompletionStreamResponse", c)
            assert c["model"] == "b"
        said = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1] if c["choices"])
        assert said == "".join(WORDS)
        assert chunks[-2]["usage"]["completion_tokens"] == 3
        assert [e.model for e in charges("alice")] == ["b"]  # a sent no content: no charge
        assert holds() == 0
        invariant("alice")
    finally:
        slow.release.set()


def test_hanging_up_closes_every_model_and_each_pays_for_what_it_sent(client, rows):
    first, second = Slow(["Dark "]), Slow(["Light "])
    rows.expect_request("/a/v1/chat/completions").respond_with_handler(first.handler)
    rows.expect_request("/b/v1/chat/completions").respond_with_handler(second.handler)
    try:
        r = client.post("/v1/chat/completions", headers=auth(), buffered=False,
                        json={"models": ["a", "b"], "messages": MSGS, "stream": True})
        seen = b""
        pieces = iter(r.response)
        while seen.count(b'"content":"') < 4:  # both roles, both first tokens
            seen += next(pieces)
        r.close()  # the client hangs up: both calls are closed and settled before this returns
        billed = {e.model: (e.completion_tokens, e.estimated) for e in charges("alice")}
        assert billed == {"a": (1, True), "b": (1, True)} and holds() == 0
        invariant("alice")
    finally:
        first.release.set()
        second.release.set()
    assert first.closed.wait(5) and second.closed.wait(5)  # their next write found no reader


@pytest.mark.parametrize("body, param", [
    ({"models": ["a"]}, "models"),
    ({"models": ["a"] * 9}, "models"),
    ({"models": "a,b"}, "models"),
    ({"models": ["a", "b"], "model": "a"}, "models"),
    ({"models": ["a", "b"], "parallel": "some"}, "parallel"),
    ({"models": ["a", "b"], "n": 2}, "n"),
])
def test_bad_models_requests_are_400(client, rows, body, param):
    r = client.post("/v1/chat/completions", headers=auth(), json={"messages": MSGS, **body})
    assert r.status_code == 400 and r.json["error"]["param"] == param
    assert rows.log == []


def test_an_unknown_model_is_404(client, rows):
    r = ask(client, models=["a", "nope"])
    assert r.status_code == 404 and rows.log == []


def test_each_model_is_one_call_against_the_limits(make_app, rows, add_model, upstream):
    client = make_app(RATE_LIMIT_DEFAULT="3/minute").test_client()
    answers(rows, "a", "Red.")
    answers(rows, "b", "Blue.")
    assert ask(client).status_code == 200  # two calls
    assert client.post("/v1/chat/completions", headers=auth(),
                       json={"model": "a", "messages": MSGS}).status_code == 200  # the third
    refused = ask(client)
    assert refused.status_code == 429 and len(charges("alice")) == 3 and holds() == 0


def test_a_parallel_request_is_idempotent(client, rows):
    answers(rows, "a", "Red.")
    answers(rows, "b", "Blue.")
    key = {"Idempotency-Key": "par-1"}
    first = client.post("/v1/chat/completions", headers={**auth(), **key},
                        json={"models": ["a", "b"], "messages": MSGS})
    again = client.post("/v1/chat/completions", headers={**auth(), **key},
                        json={"models": ["a", "b"], "messages": MSGS})
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"
    assert len(charges("alice")) == 2


def test_each_models_call_goes_through_its_rows_cache(client, rows, admin_headers):
    client.patch("/api/admin/models/30", json={"cache_ttl": 60}, headers=admin_headers)
    answers(rows, "a", "Red.")
    answers(rows, "b", "Blue.")
    ask(client)
    again = ask(client).json
    assert [c["message"]["content"] for c in again["choices"]] == ["Red.", "Blue."]
    assert [m["cost"] for m in again["usage"]["by_model"]] == [0, 0.03]  # a's answer was a free hit
    assert len([e for e in rows.log if e[0].path.startswith("/a/")]) == 1
    assert [(e.model, e.cache_hit) for e in charges("alice")][2:] in ([("a", True), ("b", False)],
                                                                    [("b", False), ("a", True)])


def test_each_model_takes_a_slot_under_the_caps(make_app, rows):
    client = make_app(MAX_CONCURRENT_PER_ACCOUNT=1).test_client()
    answers(rows, "a", "Red.")
    answers(rows, "b", "Blue.")
    refused = ask(client)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "concurrency_limit_exceeded"
    assert rows.log == [] and holds() == 0
    assert client.post("/v1/chat/completions", headers=auth(),
                       json={"model": "a", "messages": MSGS}).status_code == 200  # the slot was given back


def test_a_client_gone_from_a_live_server_closes_every_model(rows, live):
    """Through waitress: a raw client reads a few chunks and closes its socket; every model's
    upstream call is closed and each pays for the tokens it relayed, fewer than it had."""
    fakes = {name: fake_openai.Stream(WORDS * 4, delay=0.05) for name in "ab"}
    for name, fake in fakes.items():
        rows.expect_request(f"/{name}/v1/chat/completions").respond_with_handler(fake.handler)
    payload = json.dumps({"models": ["a", "b"], "messages": MSGS, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", live.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {token()}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    seen = b""
    while len(re.findall(rb'"content":"[^"]', seen)) < 3:
        data = sock.recv(65536)
        assert data, "stream ended early"
        seen += data
    sock.close()
    assert all(fake.closed.wait(5) for fake in fakes.values())
    wait_for(lambda: holds() == 0 and len(charges("alice")) == 2)
    billed = {e.model: e for e in charges("alice")}
    assert all(e.estimated and 1 <= e.completion_tokens < len(WORDS) * 4 for e in billed.values())
    assert not any(fake.finished.is_set() for fake in fakes.values())
    invariant("alice")


def _upstream_for(rows, name: str, kind: str):
    if kind in ("ok", "cut"):
        fake = fake_openai.Stream(WORDS, drop_after=1 if kind == "cut" else None)
        rows.expect_request(f"/{name}/v1/chat/completions").respond_with_handler(fake.handler)
    else:
        fails(rows, name, 500 if kind == "down" else 400)


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(["ok", "cut", "down", "bad"]), min_size=2, max_size=3),
       mode=st.sampled_from(["all", "first"]), stream=st.booleans(), hang_up=st.none() | st.integers(0, 4),
       cache=st.sampled_from(["warm", "use", "no-store"]))
def test_money_invariant_after_random_parallel_calls_hangups_and_failures(client, rows, kinds, mode, stream,
                                                                         hang_up, cache):
    """Random mixes of models that answer, are cut, are down or refuse, in either mode, streamed
    or not, with the client hanging up after a few events or not; model c (always one of them)
    caches its answers: `warm` caches one first, `use` takes whatever is cached, `no-store` skips
    the cache. Every hold is gone and the money adds up."""
    rows.clear()
    before = {e.id for e in charges("alice")}
    names = "cab"[:len(kinds)]
    if cache == "warm":
        rows.expect_oneshot_request("/c/v1/chat/completions").respond_with_json(fake_openai.completion("Cyan."))
        assert client.post("/v1/chat/completions", headers=auth(),
                           json={"model": "c", "messages": MSGS}).status_code == 200
        before = {e.id for e in charges("alice")}
    for name, kind in zip(names, kinds):
        _upstream_for(rows, name, kind)
    headers = {**auth(), **({"Cache-Control": "no-store"} if cache == "no-store" else {})}
    r = client.post("/v1/chat/completions", headers=headers, buffered=not (stream and hang_up is not None),
                    json={"models": list(names), "messages": MSGS, "stream": stream, "parallel": mode})
    if stream and hang_up is not None and r.status_code == 200:
        pieces = iter(r.response)
        for _ in range(hang_up):
            if next(pieces, None) is None:
                break
        r.close()
    else:
        r.get_data()
    assert holds() == 0
    invariant("alice")
    for e in charges("alice"):
        assert e.id in before or e.parallel_group == r.headers.get("X-Request-ID")
