"""A call's rate limits, token budget and caps taken by one Redis script (service/limits/admission.py),
with flask-limiter's keys and order; embeddings take theirs through the same admission."""
from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest
import redis
from werkzeug import Response

import service.web.calls
from service.limits.rates import EMBEDDINGS_SCOPE, Limits

from tests.conftest import auth
from tests.fakes import openai as fake_openai
from tests.test_limits import assert_429, chat


def window(r: redis.Redis, caller: str, amount: int, scope: str = "chat.completions") -> int:
    """Entries in flask-limiter's moving-window list for this caller and limit."""
    return r.llen(f"LIMITS:LIMITER/tollgate/{caller}/{scope}/{amount}/1/minute")


@pytest.fixture
def store(redis_proxy):
    """This module's apps reach Redis through a proxy that counts their round trips (Redis's own
    counters would count every other client's too)."""
    return redis_proxy.url



def test_a_chat_calls_limits_budget_and_caps_take_one_script_call(limited, redis_proxy, monkeypatch):
    # the catalogue's version check (a GET at most once a second) out of the round trips counted
    monkeypatch.setattr(service.web.calls, "CHAT_MAX_AGE", 3600)
    app, client = limited(RATE_LIMIT_DEFAULT="5/minute", TOKEN_LIMIT_PER_MINUTE=1000,
                          MAX_CONCURRENT_PER_ACCOUNT=4, MAX_CONCURRENT_PER_KEY=2)
    made = client.post("/api/admin/keys", json={"account": "kay", "rpm": 3}, headers=auth("root", True)).json
    key = {"Authorization": f"Bearer {made['key']}"}
    r = redis.Redis.from_url(app.config["REDIS_URL"])
    assert chat(client, "m1", headers=key).status_code == 200  # warm: catalogue cached, script loaded
    reads = redis_proxy.reads
    second = chat(client, "m1", headers=key)
    assert second.status_code == 200
    trips = redis_proxy.reads - reads
    # one script to admit it (default, model and key rpm, the token budget, both caps) and one
    # round trip after it: its slots given back and its tokens counted together
    assert redis_proxy.said(b"EVALSHA", reads) == 1  # this gateway's own (Redis's stats are server-wide)
    assert trips == 2
    # the headers show the limit with the fewest calls left: m1's rpm (2, none left), not the
    # default (5, three left) nor the key's (3, one left)
    assert (second.headers["X-RateLimit-Limit"], second.headers["X-RateLimit-Remaining"]) == ("2", "0")
    caller = "{acct:kay}"
    assert (window(r, caller, 5), window(r, f"{caller}:model:1", 2), window(r, f"{caller}:key:{made['id']}", 3)) \
        == (2, 2, 2)
    assert int(r.get("LIMITS:LIMITER/tpm:{acct:kay}/1000/1/minute")) == 50  # 25 tokens a call
    assert r.zcard("tollgate:inflight:{acct:kay}") == 0 and r.zcard(f"tollgate:inflight:{{acct:kay}}:key:{made['id']}") == 0

    third = chat(client, "m1", headers=key)  # m1's rpm (2) is spent
    assert_429(third)
    assert third.json["error"]["message"] == "Rate limit exceeded: 2 per 1 minute"
    assert (third.headers["X-RateLimit-Limit"], third.headers["X-RateLimit-Remaining"]) == ("2", "0")
    assert 50 <= int(third.headers["Retry-After"]) <= 60
    # flask-limiter's order: the default's entry was taken before the breach, the key's was not
    assert (window(r, caller, 5), window(r, f"{caller}:model:1", 2), window(r, f"{caller}:key:{made['id']}", 3)) \
        == (3, 2, 2)
    assert r.zcard("tollgate:inflight:{acct:kay}") == 0


def gated_stream(upstream, gate: threading.Event):
    """The upstream streams its first chunk, then the rest (7 + 2 tokens) once `gate` is set."""
    def handler(request):
        def events():
            yield fake_openai.chunk({"role": "assistant", "content": ""})
            gate.wait(10)
            yield fake_openai.chunk({"content": "hi there"}, finish="stop")
            yield fake_openai.chunk({}, usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
                                    choices=False)
            yield b"data: [DONE]\n\n"
        return Response(events(), mimetype="text/event-stream")

    upstream.clear_all_handlers()
    upstream.expect_request("/v1/chat/completions").respond_with_handler(handler)


def streamed(client, then=None):
    """A streamed chat read to its end and closed (its slots given back on close), then()
    called once its first chunk is in."""
    r = client.post("/api/v1/chat/completions", headers=auth(), buffered=False,
                    json={"model": "m2", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert r.status_code == 200
    pieces = iter(r.response)
    body = next(pieces)
    if then is not None:
        then()
    body += b"".join(pieces)
    r.close()
    assert body.endswith(b"data: [DONE]\n\n")


def test_a_streamed_call_counts_its_tokens_in_the_give_back_round_trip(limited, upstream, redis_proxy,
                                                                      monkeypatch):
    monkeypatch.setattr(service.web.calls, "CHAT_MAX_AGE", 3600)  # no version check among the round trips
    app, client = limited(TOKEN_LIMIT_PER_MINUTE=1000, MAX_CONCURRENT_PER_ACCOUNT=4)
    r = redis.Redis.from_url(app.config["REDIS_URL"])
    gate = threading.Event()
    gate.set()
    gated_stream(upstream, gate)
    streamed(client)  # warm
    reads = redis_proxy.reads
    streamed(client)
    assert redis_proxy.reads - reads == 2  # the admission's script, then slots and tokens together
    assert int(r.get("LIMITS:LIMITER/tpm:{acct:alice}/1000/1/minute")) == 18
    assert r.zcard("tollgate:inflight:{acct:alice}") == 0


def test_tokens_whose_give_back_finds_redis_gone_are_counted_in_process(limited, upstream, redis_proxy):
    """Redis goes away during a streamed call: the round trip that would give its slots back and
    count its tokens fails, so the tokens count in process, where the next call is refused."""
    _, client = limited(TOKEN_LIMIT_PER_MINUTE=5, MAX_CONCURRENT_PER_ACCOUNT=4, RATE_LIMIT_DEFAULT="1000/minute")
    gate = threading.Event()
    gated_stream(upstream, gate)

    def cut():
        redis_proxy.cut()
        gate.set()

    streamed(client, then=cut)  # admitted through Redis; 9 tokens, counted in process
    refused = chat(client)
    assert_429(refused)
    assert refused.json["error"]["message"] == "Token limit exceeded: 5 tokens per minute"


def test_a_spent_token_budget_is_refused_after_the_rate_limits_and_takes_no_slot(limited):
    app, client = limited(RATE_LIMIT_DEFAULT="5/minute", TOKEN_LIMIT_PER_MINUTE=20, MAX_CONCURRENT_PER_ACCOUNT=4)
    r = redis.Redis.from_url(app.config["REDIS_URL"])
    assert chat(client).status_code == 200  # 25 tokens: this minute's 20 are spent
    refused = chat(client)
    assert_429(refused)
    assert refused.json["error"]["message"] == "Token limit exceeded: 20 tokens per minute"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert (refused.headers["X-RateLimit-Limit"], refused.headers["X-RateLimit-Remaining"]) == ("5", "3")
    assert window(r, "{acct:alice}", 5) == 2 and r.zcard("tollgate:inflight:{acct:alice}") == 0


def test_chat_messages_and_responses_share_one_per_account_limit(limited):
    """Each door had its own window: with 2/minute one account made 6 calls through the three."""
    app, client = limited(RATE_LIMIT_DEFAULT="3/minute")
    body = {"model": "m2", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    r = client.post("/v1/messages", json=body, headers=auth())
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "2"
    r = client.post("/v1/responses", json={"model": "m2", "input": "hi"}, headers=auth())
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "1"
    r = chat(client)
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "0"
    refused = client.post("/v1/messages", json=body, headers=auth())
    assert refused.status_code == 429 and refused.json["type"] == "error"  # Anthropic's error shape
    assert int(refused.headers["Retry-After"]) >= 1
    assert_429(chat(client))
    refused = client.post("/v1/responses", json={"model": "m2", "input": "hi"}, headers=auth())
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert window(redis.Redis.from_url(app.config["REDIS_URL"]), "{acct:alice}", 3) == 3


def test_embeddings_take_their_rate_limits_through_the_admission_in_their_own_windows(limited, upstream):
    app, client = limited(RATE_LIMIT_DEFAULT="1/minute", MAX_CONCURRENT_PER_ACCOUNT=4)
    client.post("/api/admin/models", headers=auth("root", True), json={
        "id": 3, "name": "e1", "api": "openai", "kind": "embedding", "base_url": upstream.url_for("/v1")})
    upstream.expect_request("/v1/embeddings").respond_with_data(json.dumps({
        "object": "list", "model": "e", "usage": {"prompt_tokens": 2, "total_tokens": 2},
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}]}), content_type="application/json")
    first = client.post("/v1/embeddings", json={"model": "e1", "input": "hi"}, headers=auth())
    assert first.status_code == 200 and first.headers["X-RateLimit-Remaining"] == "0"
    assert_429(client.post("/v1/embeddings", json={"model": "e1", "input": "hi"}, headers=auth()))
    r = redis.Redis.from_url(app.config["REDIS_URL"])
    assert window(r, "{acct:alice}", 1, "embeddings.create") == 1
    assert window(r, "{acct:alice}", 1) == 0  # the chat call's window is not theirs
    assert r.zcard("tollgate:inflight:{acct:alice}") == 0


def test_a_callers_limits_are_plain_values_in_flask_limiters_order():
    """service/limits takes no request: the view hands it the account, the key lineage and the
    settings; embeddings' own windows, a minted key's ancestors in the chat call's."""
    key = SimpleNamespace(id=7, rpm=3, max_concurrent=None, prefix="sk-abc")
    parent = SimpleNamespace(id=5, rpm=9, max_concurrent=2, prefix="sk-par")
    limits = Limits("kay", (key, parent), "5/minute;100/hour", "tollgate", 4, 8, EMBEDDINGS_SCOPE)
    assert [r.key for r in limits.rates(SimpleNamespace(id=1, rpm=2))] == [
        "LIMITER/tollgate/{acct:kay}/embeddings.create/5/1/minute",
        "LIMITER/tollgate/{acct:kay}:model:1/embeddings.create/2/1/minute",
        "LIMITER/tollgate/{acct:kay}:key:7/embeddings.create/3/1/minute",
        "LIMITER/tollgate/{acct:kay}:key:5/chat.completions/9/1/minute",
        "LIMITER/tollgate/{acct:kay}/embeddings.create/100/1/hour"]
    assert [(c.key, c.limit) for c in limits.caps()] == [
        ("{acct:kay}", 4), ("{acct:kay}:key:7", 8), ("{acct:kay}:key:5", 2)]
    assert [r.key for r in Limits("kay", default="5/minute").rates(SimpleNamespace(id=1, rpm=None))] == [
        "LIMITER/tollgate/{acct:kay}/chat.completions/5/1/minute"]
