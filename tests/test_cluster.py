"""REDIS_URL naming a Redis Cluster (SPEC §15): rate limits, caps on calls in flight, token
budgets and deployment counters stay exact on a real three-node cluster (scripts/services.sh
starts it on loopback; REDIS_CLUSTER_URL_TEST names it)."""
from __future__ import annotations

import json
import os
import threading

import pytest
import redis
from werkzeug import Response

from tests.conftest import auth
from tests.fakes import openai as fake_openai
from tests.helpers import invariant, wait_for

CLUSTER_URL = os.environ.get("REDIS_CLUSTER_URL_TEST", "redis+cluster://127.0.0.1:7001")
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def cluster_url():
    """The test cluster, every primary flushed before and after."""
    try:
        client = redis.RedisCluster.from_url(CLUSTER_URL.replace("+cluster", "", 1), socket_connect_timeout=1)
        client.ping()
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no Redis Cluster at {CLUSTER_URL} (make services starts one)")
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    yield CLUSTER_URL
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    client.close()


@pytest.fixture
def two(make_app, cluster_url, upstream, admin_headers):
    """Two apps (two processes' worth of state) sharing the database and the cluster; `m` is a plain
    model, `pool` (id 60) a model with deployments a (rpm 5) and b (rpm 4); alice has 100 credits."""
    def build(**extra):
        apps = [make_app(REDIS_URL=cluster_url, **extra) for _ in range(2)]
        client = apps[0].test_client()
        upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 5))
        for name in ("a", "b"):
            upstream.expect_request(f"/{name}/v1/chat/completions").respond_with_json(
                fake_openai.completion("ok", 10, 5))
        for row in ({"id": 1, "name": "m"}, {"id": 60, "name": "pool", "deployments": [
                {"name": "a", "rpm": 5, "base_url": upstream.url_for("/a/v1")},
                {"name": "b", "rpm": 4, "base_url": upstream.url_for("/b/v1")}]}):
            r = client.post("/api/admin/models", headers=admin_headers, json={
                **row, "api": "openai", "base_url": upstream.url_for("/v1"), "cost_per_1k_tokens": "1"})
            assert r.status_code == 201, r.json
        client.post("/api/admin/accounts/alice/credits", json={"amount": 100}, headers=admin_headers)
        return apps, [app.test_client() for app in apps]
    return build


def chat(client, model: str = "m"):
    return client.post("/api/v1/chat/completions", headers=auth("alice"), json={"model": model, "messages": HI})


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_rate_limits_are_exact_across_processes_on_the_cluster(two):
    apps, clients = two(RATE_LIMIT_DEFAULT="7/minute")
    codes = [chat(clients[i % 2]).status_code for i in range(12)]
    assert codes == [200] * 7 + [429] * 5
    assert all(app.extensions["tollgate"].cache.up for app in apps)  # no fallback to in-process counts
    assert clients[1].get("/readyz").status_code == 200
    invariant("alice")


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_deployment_caps_and_counters_are_exact_on_the_cluster(two, admin_headers):
    apps, clients = two(DEPLOYMENT_STATS_SECONDS=0)  # each call's counts sent as it ends
    answers = [chat(clients[i % 2], "pool") for i in range(12)]
    assert [r.status_code for r in answers] == [200] * 9 + [429] * 3
    assert {r.json["error"]["code"] for r in answers[9:]} == {"capacity_exceeded"}
    for client in clients:  # both processes see the same counts
        got = {d["name"]: d for d in client.get("/api/admin/models/60/deployments", headers=admin_headers).json["data"]}
        assert (got["a"]["requests"], got["b"]["requests"]) == (5, 4)
        assert got["a"]["in_flight"] == got["b"]["in_flight"] == 0
    assert all(app.extensions["tollgate"].cache.up for app in apps)
    invariant("alice")


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_caps_in_flight_and_token_budgets_hold_on_the_cluster(two, upstream, live_factory):
    apps, clients = two(MAX_CONCURRENT_PER_ACCOUNT=1, TOKEN_LIMIT_PER_MINUTE=30)
    release, arrived = threading.Event(), threading.Event()

    def hang(request):
        arrived.set()
        release.wait(30)
        return Response(json.dumps(fake_openai.completion("ok", 10, 5)), content_type="application/json")

    upstream.expect_request("/slow/v1/chat/completions").respond_with_handler(hang)
    clients[0].patch("/api/admin/models/1", headers=auth("root", True),
                     json={"base_url": upstream.url_for("/slow/v1")})
    live = live_factory(apps[0])
    import requests

    first = threading.Thread(target=lambda: requests.post(
        f"{live.url}/api/v1/chat/completions", headers=auth("alice"), json={"model": "m", "messages": HI},
        timeout=30), daemon=True)
    first.start()
    assert arrived.wait(10)
    apps[0].extensions["tollgate"].slots.renew()  # the lease renewal works on the cluster too
    refused = chat(clients[1])
    assert refused.status_code == 429 and refused.json["error"]["code"] == "concurrency_limit_exceeded"
    release.set()
    first.join(10)
    wait_for(lambda: chat(clients[1], "pool").status_code == 200)  # 15 + 15 tokens: the budget is spent
    refused = chat(clients[0], "pool")
    assert refused.status_code == 429 and refused.json["error"]["code"] == "rate_limit_exceeded"
    assert "tokens per minute" in refused.json["error"]["message"]
    assert all(app.extensions["tollgate"].cache.up for app in apps)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_cool_down_is_seen_by_every_process_on_the_cluster(two, upstream, admin_headers):
    apps, clients = two()
    refused = []

    def limited(request):
        refused.append(1)
        return Response("{}", status=429, headers={"Retry-After": "30"}, content_type="application/json")

    upstream.clear_all_handlers()
    upstream.expect_request("/a/v1/chat/completions").respond_with_handler(limited)
    upstream.expect_request("/b/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 5))
    clients[0].patch("/api/admin/models/60", headers=admin_headers, json={"deployments": [
        {"name": "a", "base_url": upstream.url_for("/a/v1")},
        {"name": "b", "base_url": upstream.url_for("/b/v1"), "priority": 1}]})
    assert chat(clients[0], "pool").status_code == 200 and refused == [1]  # a said 429: b answered
    for _ in range(5):  # the other process never tries `a` while it cools
        assert chat(clients[1], "pool").status_code == 200
    assert refused == [1]
    got = {d["name"]: d for d in clients[1].get("/api/admin/models/60/deployments", headers=admin_headers).json["data"]}
    assert got["a"]["state"] == "cooling" and got["a"]["cooldown_until"] is not None
    assert all(app.extensions["tollgate"].cache.up for app in apps)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_flask_limiters_own_limits_are_exact_on_the_cluster(two, upstream, admin_headers):
    apps, clients = two(RATE_LIMIT_DEFAULT="3/minute")
    assert apps[0].config["RATELIMIT_STORAGE_URI"].startswith("redis+cluster://")  # limits' cluster storage
    upstream.expect_request("/e/v1/embeddings").respond_with_json({
        "object": "list", "model": "e", "usage": {"prompt_tokens": 2, "total_tokens": 2},
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}]})
    clients[0].post("/api/admin/models", headers=admin_headers, json={
        "id": 70, "name": "e", "api": "openai", "kind": "embedding", "base_url": upstream.url_for("/e/v1"),
        "cost_per_1k_input_tokens": "1"})
    codes = [clients[i % 2].post("/v1/embeddings", headers=auth("alice"), json={"model": "e", "input": "hi"}).status_code
             for i in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    invariant("alice")
