"""Fault handling with fake upstreams: each failure gets its documented answer, money stays exact."""
from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from werkzeug import Response

from tests import schemas
from tests.conftest import auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import account, charges, holds, invariant
from tests.helpers import wait_for

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gw(make_app, upstream):
    def build(**extra):
        app = make_app(**{"UPSTREAM_READ_TIMEOUT": 0.5, **extra})
        client = app.test_client()
        admin = auth("root", True)
        for row in ({"id": 1, "name": "main", "cost_per_1k_tokens": "1", "fallbacks": ["backup"]},
                    {"id": 2, "name": "backup", "cost_per_1k_tokens": "2", "base_url": upstream.url_for("/b")},
                    {"id": 3, "name": "dead", "base_url": "http://127.0.0.1:9/v1"}):
            row = {"api": "openai", "base_url": upstream.url_for("/v1"), **row}
            assert client.post("/api/admin/models", json=row, headers=admin).status_code == 201
        client.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=admin)
        return app, client
    return build


def chat(client, model="main", **extra):
    return client.post("/api/v1/chat/completions", headers=auth(),
                       json={"model": model, "messages": MSGS, **extra})


def nothing_charged():
    assert not charges("alice") and holds() == 0 and account("alice").balance == 10_000_000
    invariant("alice")


def failing(status, body=None, headers=None):
    return lambda request: Response(json.dumps(body or {"error": {"message": "boom"}}), status,
                                    headers=headers, content_type="application/json")


def test_refused_connection_is_503(gw):
    _, client = gw()
    r = chat(client, "dead")
    assert r.status_code == 503 and r.json["error"]["type"] == "service_unavailable"
    nothing_charged()


def test_hanging_upstream_is_504_and_frees_the_thread(gw, upstream):
    _, client = gw()
    release = threading.Event()
    upstream.expect_request("/v1/chat/completions").respond_with_handler(
        lambda request: (release.wait(5), Response("{}"))[1])
    upstream.expect_request("/b/chat/completions").respond_with_handler(
        lambda request: (release.wait(5), Response("{}"))[1])
    started = time.monotonic()
    r = chat(client)
    release.set()
    assert r.status_code == 504 and r.json["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 5  # bounded by the read timeout, not by the upstream
    nothing_charged()


def test_500_then_200_is_retried(gw, upstream):
    _, client = gw()
    upstream.expect_ordered_request("/v1/chat/completions").respond_with_handler(failing(500))
    upstream.expect_ordered_request("/v1/chat/completions").respond_with_json(
        fake_openai.completion("second time lucky", 10, 10))
    r = chat(client)
    assert r.status_code == 200 and r.json["model"] == "main"
    assert r.json["choices"][0]["message"]["content"] == "second time lucky"
    assert len(upstream.log) == 2 and charges("alice")[0].delta == -20_000


def test_500_forever_falls_back_and_bills_the_fallback(gw, upstream):
    _, client = gw()
    upstream.expect_request("/v1/chat/completions").respond_with_handler(failing(500))
    upstream.expect_request("/b/chat/completions").respond_with_json(fake_openai.completion("backup", 10, 10))
    r = chat(client)
    assert r.status_code == 200 and r.json["model"] == "backup"
    assert r.json["usage"]["cost"] == 0.04  # 20 tokens at the fallback's price of 2 per 1k
    assert len(upstream.log) == 4  # 1 + 2 retries on main, then backup
    rows = charges("alice")
    assert len(rows) == 1 and rows[0].model == "backup" and rows[0].delta == -40_000 and holds() == 0


def test_a_fallback_that_cannot_take_a_parameter_leaves_the_first_rows_error(gw, upstream):
    """The main row fails (500s); its only fallback is an Anthropic row, which has no `logprobs`.
    The caller gets the main row's 502, which a retry may fix, not a 400 blaming its own
    parameter on a row it never chose."""
    _, client = gw()
    admin = auth("root", True)
    r = client.patch("/api/admin/models/2", json={"api": "anthropic", "base_url": upstream.url_for("/b")}, headers=admin)
    assert r.status_code == 200, r.json
    upstream.expect_request("/v1/chat/completions").respond_with_handler(failing(500))
    r = chat(client, logprobs=True)
    assert r.status_code == 502 and r.json["error"]["type"] != "invalid_request_error", r.json
    assert r.headers.get("x-should-retry") != "false"
    assert not [x for x in upstream.log if x[0].path.startswith("/b")]  # the fallback was never called
    nothing_charged()


def test_each_candidate_is_sent_its_own_cap_and_the_hold_covers_the_largest(gw, upstream):
    _, client = gw()
    admin = auth("root", True)
    assert client.patch("/api/admin/models/1", json={"max_output_tokens": 100}, headers=admin).status_code == 200
    held = []
    upstream.expect_request("/v1/chat/completions").respond_with_handler(failing(500))
    upstream.expect_request("/b/chat/completions").respond_with_handler(
        lambda request: (held.append(account("alice").held),
                         Response(json.dumps(fake_openai.completion("backup", 10, 10)),
                                  content_type="application/json"))[1])
    r = chat(client)
    assert r.status_code == 200 and r.json["model"] == "backup"
    sent = [json.loads(req.data)["max_tokens"] for req, _ in upstream.log]
    assert sent == [100, 100, 100, 4096]  # no cap from the client: each row's max_output_tokens
    assert held[0] >= 4096 * 2  # the backup's cap at its price (2 per 1k): 2 micro-credits a token
    nothing_lost = account("alice")
    assert nothing_lost.held == 0 and nothing_lost.balance == 10_000_000 - 40_000
    invariant("alice")


def test_fallback_also_serves_streams_before_the_first_byte(gw, upstream):
    _, client = gw()
    upstream.expect_request("/v1/chat/completions").respond_with_handler(failing(503))
    upstream.expect_request("/b/chat/completions").respond_with_handler(fake_openai.Stream(["a", "b"]).handler)
    r = chat(client, stream=True)
    events = [json.loads(x[6:]) for x in r.get_data().split(b"\n\n") if x.startswith(b"data: {")]
    assert {e["model"] for e in events} == {"backup"} and r.get_data().endswith(b"[DONE]\n\n")


def test_429_with_retry_after_is_honoured(gw, upstream):
    _, client = gw()
    seen = []

    def timed(handler):
        return lambda request: (seen.append(time.monotonic()), handler(request))[1]

    upstream.expect_ordered_request("/v1/chat/completions").respond_with_handler(
        timed(failing(429, headers={"Retry-After": "1"})))
    upstream.expect_ordered_request("/v1/chat/completions").respond_with_handler(
        timed(lambda request: Response(json.dumps(fake_openai.completion()), content_type="application/json")))
    r = chat(client)
    assert r.status_code == 200 and len(seen) == 2
    assert seen[1] - seen[0] >= 1.0  # waited as the provider asked, not the short backoff


def test_429_with_long_retry_after_is_passed_on(gw, upstream):
    _, client = gw()
    upstream.expect_request("/v1/chat/completions").respond_with_handler(
        failing(429, headers={"Retry-After": "120"}))
    upstream.expect_request("/b/chat/completions").respond_with_handler(
        failing(429, headers={"Retry-After": "120"}))
    r = chat(client)
    assert r.status_code == 429 and r.json["error"]["code"] == "upstream_rate_limited"
    assert r.headers["Retry-After"] == "120"
    assert len(upstream.log) == 2  # no retry against a long wait; the fallback was tried once
    nothing_charged()


def test_garbage_body_is_502(gw, upstream):
    _, client = gw()
    upstream.expect_request("/v1/chat/completions").respond_with_data("<html>proxy error</html>")
    r = chat(client, "main")
    assert r.status_code == 502 and r.json["error"]["code"] == "generation_failed"
    schemas.check("ErrorResponse", r.json)
    nothing_charged()


def test_stalled_stream_ends_with_timeout_event(gw, upstream, live_factory):
    app, _ = gw()
    stall = threading.Event()

    def stalled(request):
        def events():
            yield fake_openai.chunk({"role": "assistant", "content": ""})
            yield fake_openai.chunk({"content": "one"})
            stall.wait(5)
        return Response(events(), mimetype="text/event-stream")

    upstream.expect_request("/v1/chat/completions").respond_with_handler(stalled)
    live = live_factory(app)
    r = requests.post(f"{live.url}/api/v1/chat/completions", timeout=10, stream=True,
                      json={"model": "main", "messages": MSGS, "stream": True},
                      headers={"Authorization": f"Bearer {token()}"})
    lines = [x for x in r.iter_lines() if x]
    stall.set()
    last = json.loads(lines[-1][6:])
    assert last["error"]["code"] == "upstream_timeout" and b"data: [DONE]" not in lines
    wait_for(lambda: holds() == 0)
    assert charges("alice")[0].completion_tokens == 1


def test_provider_429_is_its_limit_never_a_breaker_failure(gw, upstream):
    """Two 429s used to open the breaker, and every client then got 503 circuit_open for the
    cool-down; a 429 is the provider's limit: each call gets it with the provider's Retry-After."""
    app, client = gw(BREAKER_THRESHOLD=2, BREAKER_COOLDOWN=30, UPSTREAM_RETRIES=0)
    upstream.expect_request("/limited/chat/completions").respond_with_handler(
        failing(429, {"error": {"message": "slow down", "type": "rate_limit_error"}}, {"Retry-After": "7"}))
    client.patch("/api/admin/models/3", json={"base_url": upstream.url_for("/limited")},
                 headers=auth("root", True))
    for _ in range(5):
        r = chat(client, "dead")
        assert r.status_code == 429 and r.json["error"]["code"] == "upstream_rate_limited"
        assert r.headers["Retry-After"] == "7"
    assert len([x for x in upstream.log if x[0].path == "/limited/chat/completions"]) == 5
    assert client.get("/readyz").json["checks"]["breakers"] == {}
    nothing_charged()


def test_a_call_counts_once_against_the_breaker_however_many_tries(gw, upstream):
    """One call retried on 500s used to count each try as a failure: with two retries, one
    caller's single bad call opened a breaker of threshold 3 for everyone (llama.cpp's server
    answers its own request validation with a 500)."""
    app, client = gw(BREAKER_THRESHOLD=2, BREAKER_COOLDOWN=30, UPSTREAM_RETRIES=2)
    upstream.expect_request("/bad/chat/completions").respond_with_handler(failing(500))
    client.patch("/api/admin/models/3", json={"base_url": upstream.url_for("/bad")}, headers=auth("root", True))
    assert chat(client, "dead").status_code == 502
    assert len([x for x in upstream.log if x[0].path == "/bad/chat/completions"]) == 3  # tried three times
    assert client.get("/readyz").json["checks"]["breakers"] == {}  # counted once: still closed
    assert chat(client, "dead").status_code == 502
    assert list(client.get("/readyz").json["checks"]["breakers"].values()) == ["open"]  # the second call opens it
    r = chat(client, "dead")
    assert r.status_code == 503 and r.json["error"]["code"] == "circuit_open"
    nothing_charged()


def test_breaker_fails_fast_then_recovers(gw, upstream):
    app, client = gw(BREAKER_THRESHOLD=2, BREAKER_COOLDOWN=0.3, UPSTREAM_RETRIES=0)
    broken = threading.Event()
    broken.set()

    def flaky(request):
        if broken.is_set():
            return failing(500)(request)
        return Response(json.dumps(fake_openai.completion()), content_type="application/json")

    upstream.expect_request("/flaky/chat/completions").respond_with_handler(flaky)
    client.patch("/api/admin/models/3", json={"base_url": upstream.url_for("/flaky")},
                 headers=auth("root", True))
    assert chat(client, "dead").status_code == 502
    assert chat(client, "dead").status_code == 502
    ready = client.get("/readyz").json
    assert ready["status"] == "degraded" and list(ready["checks"]["breakers"].values()) == ["open"]
    calls = len(upstream.log)
    r = chat(client, "dead")
    assert len(upstream.log) == calls  # failed fast: no upstream call
    assert r.status_code == 503 and r.json["error"]["code"] == "circuit_open"
    broken.clear()  # the upstream heals; after the cool-down one probe closes the breaker
    wait_for(lambda: list(client.get("/readyz").json["checks"]["breakers"].values()) == ["half_open"])
    assert chat(client, "dead").status_code == 200
    ready = client.get("/readyz").json
    assert ready["checks"]["breakers"] == {} and ready["status"] == "ok"
