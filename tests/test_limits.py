"""Rate limits and caches (SPEC §10) on the real Redis; shared across processes; Redis outages."""
from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from tests import schemas
from tests.conftest import SECRET, auth, token
from tests.fakes import openai as fake_openai
from tests.process import Gateway
from tests.helpers import wait_for

MSGS = [{"role": "user", "content": "hi"}]
BOTH_STORES = pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)


def chat(client, model="m2", headers=None, **extra):
    return client.post("/api/v1/chat/completions", json={"model": model, "messages": MSGS, **extra},
                       headers=headers or auth())


def assert_429(r):
    assert r.status_code == 429, r.get_data(as_text=True)
    schemas.check("ErrorResponse", r.json)
    assert r.json["error"]["type"] == "rate_limit_error" and r.json["success"] is False
    assert int(r.headers["Retry-After"]) >= 1


@BOTH_STORES
def test_default_limit_with_headers_and_retry_after(limited):
    app, client = limited(RATE_LIMIT_DEFAULT="3/minute")
    first = chat(client)
    assert first.headers["X-RateLimit-Limit"] == "3" and first.headers["X-RateLimit-Remaining"] == "2"
    assert int(first.headers["X-RateLimit-Reset"]) > 0
    chat(client)
    streamed = chat(client, stream=True)
    assert streamed.headers["X-RateLimit-Remaining"] == "0"
    streamed.get_data()
    r = chat(client)
    assert_429(r)
    assert r.json["error"]["code"] == "rate_limit_exceeded" and 50 <= int(r.headers["Retry-After"]) <= 60
    assert chat(client, headers=auth("other")).status_code == 200  # per account
    if app.config["REDIS_URL"]:
        keys = redis.Redis.from_url(app.config["REDIS_URL"]).keys("*")
        assert [k for k in keys if k.startswith(b"LIMITS:") and b"tollgate" in k], keys


@BOTH_STORES
def test_model_rpm_is_per_account_per_model(limited):
    _, client = limited()
    assert chat(client, "m1").status_code == 200 and chat(client, "m1").status_code == 200
    assert_429(chat(client, "m1"))
    assert chat(client, "m2").status_code == 200
    assert chat(client, "m1", headers=auth("bob")).status_code == 200


@BOTH_STORES
def test_api_key_rpm(limited):
    _, client = limited()
    key = client.post("/api/admin/keys", json={"account": "kay", "rpm": 1}, headers=auth("root", True)).json
    headers = {"Authorization": f"Bearer {key['key']}"}
    assert chat(client, headers=headers).status_code == 200
    assert_429(chat(client, headers=headers))


@BOTH_STORES
def test_an_answers_rate_headers_show_the_limit_with_the_fewest_calls_left(limited):
    """A key's rpm of 2 under the account's 10000/minute: its answers show the key's limit (they
    showed the account's, 9999 left, and the next call was a 429); a model's rpm when it is the
    tighter one; the account's while it is."""
    _, client = limited()
    key = client.post("/api/admin/keys", json={"account": "kay", "rpm": 2}, headers=auth("root", True)).json
    headers = {"Authorization": f"Bearer {key['key']}"}
    r = chat(client, "m2", headers=headers)
    assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("2", "1")
    r = chat(client, "m1", headers=headers)  # m1's rpm is 2 too: one left under each
    assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("2", "0")
    r = chat(client, "m2", headers=headers)
    assert_429(r)
    assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("2", "0")
    r = chat(client, "m1")  # another account (a JWT's): m1's rpm, one left, is the tighter
    assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("2", "1")
    r = chat(client, "m2")  # no model limit: the account's own
    assert r.headers["X-RateLimit-Limit"] == "10000" and int(r.headers["X-RateLimit-Remaining"]) == 10000 - 2


def test_a_window_drops_its_aged_entries_and_counts_the_rest(limited):
    """limits keeps a window's entries until the list holds the limit's amount, so a long list was
    searched on every call; the admission drops the entries older than the window (a few one by
    one, many at once) and the headers count what is left."""
    app, client = limited(RATE_LIMIT_DEFAULT="20/minute")
    store = redis.Redis.from_url(app.config["REDIS_URL"])
    assert chat(client).headers["X-RateLimit-Remaining"] == "19"
    [key] = [k for k in store.keys("LIMITS:*") if b"acct:alice" in k]
    aged = float(store.lindex(key, 0)) - 120
    for many, remaining in ((3, "18"), (10, "17")):
        store.rpush(key, *[aged - i for i in range(many)])  # the tail holds the oldest
        r = chat(client)
        assert r.headers["X-RateLimit-Remaining"] == remaining
        assert store.llen(key) == 20 - int(remaining)
        assert float(store.lindex(key, -1)) > aged + 60
        assert 0 < int(r.headers["X-RateLimit-Reset"]) - float(store.lindex(key, -1)) <= 62


@BOTH_STORES
def test_tokens_per_minute_limit(limited):
    _, client = limited(TOKEN_LIMIT_PER_MINUTE=20)
    assert chat(client).status_code == 200  # spends 25 tokens (10 + 15)
    r = chat(client)
    assert_429(r)
    assert "Token limit" in r.json["error"]["message"]


def test_model_lists_cached_in_redis_and_dropped_on_change(limited):
    app, client = limited()
    r = redis.Redis.from_url(app.config["REDIS_URL"])
    assert [m["id"] for m in client.get("/api/v1/models", headers=auth()).json["data"]] == ["m1", "m2"]
    assert r.keys("tollgate:models:openai:*")
    client.patch("/api/admin/models/1", json={"enabled": False}, headers=auth("root", True))
    assert [m["id"] for m in client.get("/api/v1/models", headers=auth()).json["data"]] == ["m2"]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_two_processes_share_limits_and_catalogue(make_app, db_url, redis_url, upstream, tmp_path):
    client = make_app().test_client()
    client.post("/api/admin/models", headers=auth("root", True),
                json={"id": 1, "name": "m1", "api": "openai", "base_url": upstream.url_for("/v1")})
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion())
    env = {"DATABASE_URL": db_url, "REDIS_URL": redis_url, "JWT_SECRET_KEY": SECRET,
           "DATA_DIR": str(tmp_path), "RATE_LIMIT_DEFAULT": "20/minute"}
    gateways = [Gateway(env, tmp_path / f"gw{i}.log") for i in range(2)]
    try:
        headers = {"Authorization": f"Bearer {token('shared')}"}

        def call(i):
            return requests.post(f"{gateways[i % 2].url}/api/v1/chat/completions", headers=headers,
                                 json={"model": "m1", "messages": MSGS}, timeout=10)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, range(60)))
        statuses = [a.status_code for a in answers]
        assert statuses.count(200) == 20 and statuses.count(429) == 40
        assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 429)
        admin = {"Authorization": f"Bearer {token('root', True)}"}
        before = requests.get(f"{gateways[1].url}/api/v1/models", headers=admin).json()["data"]
        assert [m["id"] for m in before] == ["m1"]
        requests.post(f"{gateways[0].url}/api/admin/models", headers=admin, timeout=10,
                      json={"id": 2, "name": "m-new", "api": "openai"})
        after = requests.get(f"{gateways[1].url}/api/v1/models", headers=admin).json()["data"]
        assert [m["id"] for m in after] == ["m1", "m-new"]
    finally:
        for gw in gateways:
            gw.stop()


def test_redis_outage_keeps_serving_and_recovers(make_app, redis_url, redis_proxy, upstream):
    app = make_app(REDIS_URL=redis_proxy.url, RATE_LIMIT_DEFAULT="1000/minute")
    client = app.test_client()
    client.post("/api/admin/models", headers=auth("root", True),
                json={"id": 1, "name": "m1", "api": "openai", "base_url": upstream.url_for("/v1")})
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion())
    assert chat(client, "m1").status_code == 200
    assert client.get("/readyz").json["status"] == "ok"
    redis_proxy.cut()
    for _ in range(5):
        r = chat(client, "m1")
        assert r.status_code == 200 and "X-RateLimit-Limit" in r.headers
    assert client.get("/api/v1/models", headers=auth()).status_code == 200
    ready = client.get("/readyz").json
    assert ready["status"] == "degraded" and ready["checks"]["redis"] == "down"
    redis_proxy.restore()
    wait_for(lambda: client.get("/readyz").json["status"] == "ok", timeout=10)
    real = redis.Redis.from_url(redis_url)
    real.flushdb()
    assert chat(client, "m1").status_code == 200
    assert [k for k in real.keys("*") if b"tollgate" in k], "limits are not back in Redis"


def test_a_redis_that_stops_answering_delays_a_call_by_its_timeout_not_for_ever(make_app, upstream):
    """Redis accepts connections but never answers: every command ends at its deadline (the
    kernel's, service/store/cache.py), the call is served with in-process limits, /readyz degrades."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # connections complete in the kernel's backlog; nothing is ever read or sent
    try:
        app = make_app(REDIS_URL=f"redis://127.0.0.1:{hung.getsockname()[1]}/0",
                       RATE_LIMIT_DEFAULT="1000/minute", MAX_CONCURRENT_PER_ACCOUNT=4)
        client = app.test_client()
        upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion())
        answers = []

        def call():
            client.post("/api/admin/models", headers=auth("root", True),
                        json={"id": 1, "name": "m1", "api": "openai", "base_url": upstream.url_for("/v1")})
            answers.append(chat(client, "m1"))
            answers.append(client.get("/readyz").json)

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "a call waited on a silent Redis without a deadline"
        assert answers[0].status_code == 200 and "X-RateLimit-Limit" in answers[0].headers
        assert answers[1]["checks"]["redis"] == "down"
    finally:
        hung.close()
