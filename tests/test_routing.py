"""One model, many deployments (SPEC §15): choice by weight, priority and affinity, health (429
cool-downs, breakers, 401 disables), caps, the ledger's deployment and the admin view."""
from __future__ import annotations

import collections
import hashlib
import hmac
import json
import threading
import time

import pytest
import redis
from werkzeug import Response

from service.store.db import AlertOutbox, LedgerEntry
from tests.conftest import auth
from tests.fakes import openai as fake_openai
from tests.helpers import invariant, wait_for
from tests.process import free_port

HI = [{"role": "user", "content": "hi"}]


class Fleet:
    """Fake deployments behind one fake provider: /<name>/v1/chat/completions each. `answer[name]`
    says what a deployment answers (a status, or a function of the request); `calls[name]` lists
    when each call came (monotonic)."""

    def __init__(self, upstream, names):
        self.upstream = upstream
        self.calls = collections.defaultdict(list)
        self.answer = {name: 200 for name in names}
        self.lock = threading.Lock()
        for name in names:
            upstream.expect_request(f"/{name}/v1/chat/completions").respond_with_handler(self._handler(name))

    def _handler(self, name):
        def handle(request):
            with self.lock:
                self.calls[name].append(time.monotonic())
            answer = self.answer[name]
            if callable(answer):
                return answer(request)
            if answer == 200:
                return Response(json.dumps(fake_openai.completion("ok", 10, 5)), content_type="application/json")
            headers = {"Retry-After": "2"} if answer == 429 else {}
            return Response(json.dumps({"error": {"message": f"status {answer}"}}), status=answer,
                            headers=headers, content_type="application/json")
        return handle

    def base(self, name: str) -> str:
        return self.upstream.url_for(f"/{name}/v1")

    def counts(self) -> dict:
        return {name: len(self.calls[name]) for name in self.answer}


@pytest.fixture
def app(make_app, request):
    """The app on the real Redis where a test asks for `store` (then the admission's script takes
    the first deployment), else counting in process."""
    return make_app(REDIS_URL=request.getfixturevalue("store") if "store" in request.fixturenames else None)


def add_pool(add_model, fleet: Fleet, deployments: list[dict], **row) -> dict:
    """Model `pool` (id 60, 1 credit per 1k tokens) served by the given deployments."""
    for d in deployments:
        d.setdefault("base_url", fleet.base(d["name"]))
    return add_model(id=60, name="pool", api="openai", base_url=fleet.base(deployments[0]["name"]),
                     cost_per_1k_tokens="1", max_output_tokens=64, deployments=deployments, **row)


def call(client, name: str = "alice", **body):
    return client.post("/api/v1/chat/completions", headers=auth(name),
                       json={"model": "pool", "messages": HI, **body})


def view(client, admin_headers) -> dict:
    r = client.get("/api/admin/models/60/deployments", headers=admin_headers)
    assert r.status_code == 200, r.json
    return {d["name"]: d for d in r.json["data"]}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)  # redis: the admission's script draws
def test_weights_one_to_three_over_2000_calls(client, store, upstream, add_model, topup):
    fleet = Fleet(upstream, ["a", "b"])
    add_pool(add_model, fleet, [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}])
    topup("alice", 1000)
    for _ in range(2000):
        assert call(client).status_code == 200
    share = fleet.counts()["a"] / 2000
    assert 0.22 <= share <= 0.28, share
    invariant("alice")
    assert LedgerEntry.select().where(LedgerEntry.deployment == "a").count() == fleet.counts()["a"]
    assert LedgerEntry.select().where(LedgerEntry.deployment == "b").count() == fleet.counts()["b"]


@pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)
def test_dead_priority_zero_costs_no_client_a_failed_call(make_app, store, upstream, admin_headers):
    app = make_app(REDIS_URL=store, BREAKER_THRESHOLD=3, BREAKER_COOLDOWN=60)
    client = app.test_client()
    fleet = Fleet(upstream, ["backup"])
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    add_pool(lambda **row: client.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "primary", "base_url": dead}, {"name": "backup", "priority": 1}])
    client.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=admin_headers)
    answers = [call(client) for _ in range(20)]
    assert [r.status_code for r in answers] == [200] * 20
    assert fleet.counts()["backup"] == 20
    state = view(client, admin_headers)
    assert state["primary"]["state"] == "open" and state["primary"]["errors"] == 3  # then left out
    assert state["backup"]["state"] == "ok" and state["backup"]["requests"] == 20
    assert {e.deployment for e in LedgerEntry.select().where(LedgerEntry.kind == "charge")} == {"backup"}
    invariant("alice")


@pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)
def test_a_429_keeps_its_deployment_out_for_its_retry_after(make_app, store, upstream, admin_headers):
    app = make_app(REDIS_URL=store)
    client = app.test_client()
    fleet = Fleet(upstream, ["first", "second"])
    add_pool(lambda **row: client.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "first"}, {"name": "second", "priority": 1}])
    client.post("/api/admin/accounts/alice/credits", json={"amount": 100}, headers=admin_headers)
    fleet.answer["first"] = lambda request: (fleet.answer.update(first=200),
                                             Response("{}", status=429, headers={"Retry-After": "2"}))[1]
    assert call(client).status_code == 200  # moved on to `second` before any byte reached the client
    refused_at = fleet.calls["first"][0]
    assert view(client, admin_headers)["first"]["state"] == "cooling"
    served = 1
    deadline = refused_at + 6
    while len(fleet.calls["first"]) < 2:  # the clock: calls keep coming until `first` is back
        assert time.monotonic() < deadline, "the cool-down did not end"
        assert call(client).status_code == 200
        served += 1
    back = fleet.calls["first"][1] - refused_at
    assert 2.0 - 0.05 <= back < 3.0, back
    assert fleet.counts()["second"] == served - 1  # every call while `first` cooled; the last is first's
    invariant("alice")


def test_a_401_disables_its_deployment_after_one_call_and_alerts_once(make_app, upstream, admin_headers):
    hooks = []
    upstream.expect_request("/hook").respond_with_handler(
        lambda request: (hooks.append((request.get_data(), request.headers)), Response("ok"))[1])
    app = make_app(ALERT_WEBHOOK_URL=upstream.url_for("/hook"), ALERT_WEBHOOK_SECRET="s3cret",
                   ALERT_POLL_SECONDS=0)
    client = app.test_client()
    fleet = Fleet(upstream, ["revoked", "spare"])
    add_pool(lambda **row: client.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "revoked"}, {"name": "spare", "priority": 1}])
    client.post("/api/admin/accounts/alice/credits", json={"amount": 100}, headers=admin_headers)
    fleet.answer["revoked"] = 401
    assert [call(client).status_code for _ in range(10)] == [200] * 10
    assert fleet.counts() == {"revoked": 1, "spare": 10}
    assert view(client, admin_headers)["revoked"]["state"] == "disabled"
    assert client.get("/api/admin/models/60", headers=admin_headers).json["deployments"][0]["enabled"] is False
    alerts = list(AlertOutbox.select())
    assert [(a.kind, a.detail["deployment"], a.detail["status"]) for a in alerts] == [
        ("deployment_disabled", "revoked", 401)]
    assert app.extensions["tollgate_alerts"].run_once() == 1
    listed = client.get("/api/admin/alerts", headers=admin_headers).json["data"]
    assert [(a["type"], a["account"], a["detail"]["deployment"], a["delivered"] is not None) for a in listed] == [
        ("deployment_disabled", None, "revoked", True)]
    body, headers = hooks[0]
    assert json.loads(body)["type"] == "deployment_disabled" and json.loads(body)["model"] == "pool"
    assert headers["X-Tollgate-Signature"] == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    # an operator fixes the key and enables it again
    fleet.answer["revoked"] = 200
    r = client.patch("/api/admin/models/60/deployments/revoked", json={"enabled": True}, headers=admin_headers)
    assert r.status_code == 200 and r.json["state"] == "ok"
    assert call(client).status_code == 200 and fleet.counts()["revoked"] == 2
    assert AlertOutbox.select().count() == 1
    invariant("alice")


@pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)
def test_affinity_holds_for_one_key_and_spreads_over_many(client, store, upstream, add_model, topup):
    names = ["d1", "d2", "d3", "d4"]
    fleet = Fleet(upstream, names)
    add_pool(add_model, fleet, [{"name": n} for n in names])
    topup("alice", 100)
    for _ in range(100):
        assert call(client, prompt_cache_key="conversation-1").status_code == 200
    assert sorted(fleet.counts().values()) == [0, 0, 0, 100]
    before = fleet.counts()
    for i in range(200):
        assert call(client, user=f"user-{i}").status_code == 200
    spread = {n: fleet.counts()[n] - before[n] for n in names}
    assert all(20 <= v <= 80 for v in spread.values()), spread  # 50 each on average


@pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)
def test_rpm_cap_refuses_with_capacity_exceeded(client, store, upstream, add_model, topup):
    fleet = Fleet(upstream, ["a", "b"])
    add_pool(add_model, fleet, [{"name": "a", "rpm": 2}, {"name": "b", "rpm": 1}])
    topup("alice", 100)
    assert [call(client).status_code for _ in range(3)] == [200] * 3
    refused = call(client)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "capacity_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert fleet.counts() == {"a": 2, "b": 1}
    invariant("alice")


@pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)
def test_tpm_cap_counts_the_tokens_of_finished_calls(client, store, upstream, add_model, topup):
    fleet = Fleet(upstream, ["only"])
    add_pool(add_model, fleet, [{"name": "only", "tpm": 30}])  # each call: 15 tokens
    topup("alice", 100)
    assert [call(client).status_code for _ in range(2)] == [200, 200]
    refused = call(client)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "capacity_exceeded"


@pytest.mark.parametrize("store", ["redis"], indirect=True)
def test_a_call_refused_by_its_rate_limit_takes_no_deployment(make_app, store, upstream, admin_headers):
    app = make_app(REDIS_URL=store, RATE_LIMIT_DEFAULT="2/minute")
    client = app.test_client()
    fleet = Fleet(upstream, ["a", "b"])
    add_pool(lambda **row: client.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "a", "rpm": 10}, {"name": "b", "rpm": 10}])
    client.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=admin_headers)
    assert [call(client).status_code for _ in range(2)] == [200, 200]
    refused = call(client)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "rate_limit_exceeded"
    r = redis.Redis.from_url(store)
    assert sum(r.zcard(f"tollgate:dep:{{m60}}:rpm:{n}") for n in "ab") == 2  # the two calls answered
    assert sum(r.zcard(f"tollgate:dep:{{m60}}:live:{n}") for n in "ab") == 0
    assert sum(fleet.counts().values()) == 2


@pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)
def test_a_call_refused_before_its_provider_leaves_its_deployment_untouched(client, store, upstream, add_model,
                                                                           topup, admin_headers):
    """On Redis the admission's script took a deployment for a call that is then refused (no
    credits to hold): it is given back, and its rpm counts only the calls that reached it."""
    fleet = Fleet(upstream, ["only"])
    add_pool(add_model, fleet, [{"name": "only", "rpm": 2}])
    assert [call(client).status_code for _ in range(3)] == [402] * 3
    topup("alice", 100)
    assert [call(client).status_code for _ in range(2)] == [200, 200]
    refused = call(client)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "capacity_exceeded"
    assert fleet.counts() == {"only": 2}
    if store is not None:
        r = redis.Redis.from_url(store)
        assert r.zcard("tollgate:dep:{m60}:live:only") == 0 and r.zcard("tollgate:dep:{m60}:rpm:only") == 2
    state = view(client, admin_headers)
    assert state["only"]["in_flight"] == 0 and state["only"]["requests"] == 2


def test_deployments_are_validated_like_every_field(client, admin_headers, add_model):
    bad = [([{"weight": 1}], "deployments[0].name"), ([{"name": "a"}, {"name": "a"}], "deployments[1].name"),
           ([{"name": "a", "weight": 0}], "deployments[0].weight"), ([{"name": "a", "api": "x"}], "deployments[0].api"),
           ([{"name": "a", "colour": 1}], "deployments[0].colour"), ("east", "deployments")]
    for deployments, param in bad:
        r = client.post("/api/admin/models", headers=admin_headers, json={
            "name": "p", "api": "openai", "deployments": deployments})
        assert r.status_code == 400 and r.json["error"]["param"] == param, (deployments, r.json)
    r = client.post("/api/admin/models", headers=admin_headers, json={"name": "p", "api": "openai", "routing": "fastest"})
    assert r.status_code == 400 and r.json["error"]["param"] == "routing"
    row = add_model(name="p", api="openai", routing="least_busy", deployments=[{"name": "east", "weight": 2}])
    assert row["routing"] == "least_busy" and row["deployments"] == [{"name": "east", "weight": 2}]
    r = client.patch(f"/api/admin/models/{row['id']}", headers=admin_headers, json={
        "deployments": [{"name": "east"}, {"name": "west", "base_url": "http://127.0.0.1:1/v1"}]})
    assert r.status_code == 200 and [d["name"] for d in r.json["deployments"]] == ["east", "west"]
    assert client.get("/api/admin/models/999/deployments", headers=admin_headers).status_code == 404
    r = client.patch(f"/api/admin/models/{row['id']}/deployments/nowhere", json={"enabled": False}, headers=admin_headers)
    assert r.status_code == 404


def test_seed_file_takes_deployments(app, tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('''
[[models]]
id = 60
name = "pool"
api = "openai"
upstream_model = "gpt-4o-mini"
cost_per_1k_tokens = "0.01"
routing = "latency"
[[models.deployments]]
name = "east"
base_url = "https://east.example/v1"
[[models.deployments]]
name = "west"
base_url = "https://west.example/v1"
api_key_env = "OPENAI_WEST_API_KEY"
weight = 3
max_concurrent = 4
''')
    result = app.test_cli_runner().invoke(args=["seed-models", "--file", str(path)])
    assert result.exit_code == 0, result.output
    from service.store.db import AIModel

    row = AIModel.get_by_id(60)
    assert row.routing == "latency" and [d["name"] for d in row.deployments] == ["east", "west"]
    assert row.deployments[1] == {"name": "west", "base_url": "https://west.example/v1",
                                  "api_key_env": "OPENAI_WEST_API_KEY", "weight": 3, "max_concurrent": 4}
    path.write_text(path.read_text().replace("weight = 3", "weight = 0"))
    result = app.test_cli_runner().invoke(args=["seed-models", "--file", str(path)])
    assert result.exit_code != 0 and "deployments[1].weight" in result.output


def test_a_model_without_deployments_routes_as_before(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 5))
    r = gateway.post("/api/v1/chat/completions", headers=auth(), json={"model": "m-openai", "messages": HI})
    assert r.status_code == 200
    assert LedgerEntry.get(LedgerEntry.kind == "charge").deployment is None


def hanging_fleet(upstream, names) -> tuple[Fleet, threading.Event]:
    """A Fleet whose answers wait until the event is set."""
    fleet = Fleet(upstream, names)
    release = threading.Event()

    def hang(request):
        release.wait(30)
        return Response(json.dumps(fake_openai.completion("ok", 10, 5)), content_type="application/json")

    for name in names:
        fleet.answer[name] = hang
    return fleet, release


def post(url: str, name: str = "alice"):
    import requests

    try:
        return requests.post(f"{url}/api/v1/chat/completions", timeout=30, headers=auth(name),
                             json={"model": "pool", "messages": HI})
    except requests.ConnectionError:  # its gateway was killed under it
        return None


def in_flight(url: str) -> int:
    import requests

    r = requests.get(f"{url}/api/admin/models/60/deployments", headers=auth("root", True), timeout=10)
    return sum(d["in_flight"] for d in r.json()["data"])


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_caps_hold_across_two_processes_and_a_killed_ones_calls_expire(make_app, db_url, tmp_path, upstream,
                                                                       redis_url, admin_headers):
    import signal

    from tests.conftest import SECRET
    from tests.process import Gateway

    client = make_app().test_client()
    fleet, release = hanging_fleet(upstream, ["a", "b"])
    add_pool(lambda **row: client.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "a", "max_concurrent": 2}, {"name": "b", "max_concurrent": 1}])
    client.post("/api/admin/accounts/alice/credits", json={"amount": 100}, headers=admin_headers)
    env = {"DATABASE_URL": db_url, "JWT_SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path), "REDIS_URL": redis_url,
           "CONCURRENCY_LEASE_SECONDS": "2", "HOLD_TTL_SECONDS": "3", "HOLD_REAP_INTERVAL_SECONDS": "1",
           "RATE_LIMIT_DEFAULT": "100000/minute"}
    one, two = Gateway(env, tmp_path / "one.log"), Gateway(env, tmp_path / "two.log")
    try:
        for gw in (one, one, two):
            threading.Thread(target=post, args=(gw.url,), daemon=True).start()
        wait_for(lambda: sum(fleet.counts().values()) == 3, timeout=15)
        for gw in (one, two):  # three in flight across the two: every deployment is at its cap
            refused = post(gw.url)
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "capacity_exceeded"
            assert int(refused.headers["Retry-After"]) >= 1
        assert fleet.counts() == {"a": 2, "b": 1} and in_flight(two.url) == 3
        one.signal(signal.SIGKILL)  # its two calls stop counting when their leases end
        one.proc.wait(5)
        killed = time.monotonic()
        wait_for(lambda: in_flight(two.url) == 1, timeout=15)
        assert time.monotonic() - killed < 2 + 3
        threading.Thread(target=post, args=(two.url,), daemon=True).start()
        wait_for(lambda: sum(fleet.counts().values()) == 4, timeout=15)
    finally:
        release.set()
        one.stop()
        two.stop()


def test_least_busy_goes_where_fewest_calls_are_in_flight(make_app, upstream, redis_url, admin_headers,
                                                         live_factory):
    app = make_app(REDIS_URL=redis_url)
    client = app.test_client()
    fleet, release = hanging_fleet(upstream, ["x", "y", "z"])
    add_pool(lambda **row: client.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "x", "weight": 100}, {"name": "y"}, {"name": "z"}], routing="least_busy")
    client.post("/api/admin/accounts/alice/credits", json={"amount": 100}, headers=admin_headers)
    live = live_factory(app)
    try:
        for n in range(1, 4):
            threading.Thread(target=post, args=(live.url,), daemon=True).start()
            wait_for(lambda: sum(fleet.counts().values()) == n, timeout=10)
        assert fleet.counts() == {"x": 1, "y": 1, "z": 1}  # weight 100 notwithstanding
    finally:
        release.set()


@pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)
def test_a_stream_names_its_deployment_and_times_its_first_token(client, store, upstream, add_model, topup,
                                                                  admin_headers):
    fleet = Fleet(upstream, ["s"])
    body = (fake_openai.chunk({"role": "assistant", "content": ""}) + fake_openai.chunk({"content": "hi"})
            + fake_openai.chunk({}, finish="stop") + fake_openai.chunk(
                {}, usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, choices=False)
            + b"data: [DONE]\n\n")
    fleet.answer["s"] = lambda request: Response(body, content_type="text/event-stream")
    add_pool(add_model, fleet, [{"name": "s"}])
    topup("alice", 10)
    r = call(client, stream=True)
    assert r.status_code == 200 and b"[DONE]" in r.data
    r.close()
    assert LedgerEntry.get(LedgerEntry.kind == "charge").deployment == "s"
    state = view(client, admin_headers)["s"]
    assert state["requests"] == 1 and state["in_flight"] == 0 and state["p50_ttft_ms"] is not None
    invariant("alice")


@pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)
def test_messages_and_responses_keep_their_affinity(client, store, upstream, add_model, topup):
    names = ["d1", "d2", "d3", "d4"]
    fleet = Fleet(upstream, names)
    add_pool(add_model, fleet, [{"name": n} for n in names])
    topup("alice", 100)
    for _ in range(20):
        r = client.post("/v1/messages", headers=auth(), json={
            "model": "pool", "max_tokens": 16, "messages": HI, "metadata": {"user_id": "claude-user-7"}})
        assert r.status_code == 200, r.json
    assert sorted(fleet.counts().values()) == [0, 0, 0, 20]
    before = fleet.counts()
    first = client.post("/v1/responses", headers=auth(), json={"model": "pool", "input": "a long conversation"})
    assert first.status_code == 200, first.json
    previous = first.json["id"]
    for _ in range(10):  # every turn continues the same conversation: one deployment serves them all
        r = client.post("/v1/responses", headers=auth(), json={
            "model": "pool", "input": "and then?", "previous_response_id": previous})
        assert r.status_code == 200, r.json
        previous = r.json["id"]
    turns = {n: fleet.counts()[n] - before[n] for n in names}
    assert sum(turns.values()) == 11 and max(turns.values()) >= 10, turns


@pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)
def test_metrics_count_each_deployments_calls(client, store, upstream, add_model, topup):
    fleet = Fleet(upstream, ["m1", "m2"])
    add_pool(add_model, fleet, [{"name": "m1"}, {"name": "m2", "priority": 1}])
    topup("alice", 10)
    fleet.answer["m1"] = 429
    assert call(client).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert 'tollgate_deployment_calls_total{deployment="m1",model="pool",outcome="error"}' in text
    assert 'tollgate_deployment_calls_total{deployment="m2",model="pool",outcome="ok"}' in text
    assert 'tollgate_deployment_cooldowns_total{deployment="m1",model="pool"}' in text
    assert 'tollgate_deployment_state{deployment="m1",model="pool"} 1.0' in text  # cooling
    assert 'tollgate_deployment_state{deployment="m2",model="pool"} 0.0' in text
    assert 'tollgate_deployment_in_flight{deployment="m2",model="pool"} 0.0' in text


@pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)
def test_latency_routing_prefers_the_faster_deployment(client, store, upstream, add_model, topup):
    fleet = Fleet(upstream, ["slow", "fast"])

    def slow(request):
        # the fake provider's own latency, not a wait in the test: well above a loaded machine's
        # stall of a fast call (one 50 ms stall made 'fast' look the slower, and stay so)
        time.sleep(0.25)
        return Response(json.dumps(fake_openai.completion("ok", 10, 5)), content_type="application/json")

    fleet.answer["slow"] = slow
    add_pool(add_model, fleet, [{"name": "slow"}, {"name": "fast"}], routing="latency")
    topup("alice", 100)
    for _ in range(40):
        assert call(client).status_code == 200
    assert fleet.counts()["slow"] <= 8  # measured first (unknown), then only by the 5% that explore


def test_a_deployment_without_its_key_on_this_gateway_is_skipped(make_app, upstream, admin_headers):
    app = make_app(PROVIDER_KEYS={"SECOND_API_KEY": "k2"})
    client = app.test_client()
    fleet = Fleet(upstream, ["keyless", "keyed"])
    add_pool(lambda **row: client.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "keyless", "api_key_env": "FIRST_API_KEY"},
              {"name": "keyed", "api_key_env": "SECOND_API_KEY", "priority": 1}])
    client.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=admin_headers)
    assert [call(client).status_code for _ in range(3)] == [200] * 3
    assert fleet.counts() == {"keyless": 0, "keyed": 3}
    assert view(client, admin_headers)["keyless"]["errors"] == 3


def streamed_or_not(request):
    """A deployment's answer: streamed when asked (7 + 2 tokens), else a completion (10 + 5)."""
    if json.loads(request.data).get("stream"):
        return Response([fake_openai.chunk({"role": "assistant", "content": "ok"}),
                         fake_openai.chunk({}, finish="stop"),
                         fake_openai.chunk({}, usage={"prompt_tokens": 7, "completion_tokens": 2,
                                                      "total_tokens": 9}, choices=False),
                         b"data: [DONE]\n\n"], mimetype="text/event-stream")
    return Response(json.dumps(fake_openai.completion("ok", 10, 5)), content_type="application/json")


@pytest.mark.parametrize("settings", [{}, {"MAX_CONCURRENT_PER_ACCOUNT": 0, "TOKEN_LIMIT_PER_MINUTE": 1000}])
def test_deployments_cost_a_call_no_redis_round_trip(make_app, redis_proxy, upstream, admin_headers, monkeypatch,
                                                     settings):
    import service.web.calls

    monkeypatch.setattr(service.web.calls, "CHAT_MAX_AGE", 3600)  # no catalogue version check among the trips
    # no batch of the deployments' counts among the trips either: they are sent when shown (below)
    app = make_app(REDIS_URL=redis_proxy.url, DEPLOYMENT_STATS_SECONDS=3600, **settings)
    client = app.test_client()
    fleet = Fleet(upstream, ["a", "b", "c"])
    for name in fleet.answer:
        fleet.answer[name] = streamed_or_not
    add_pool(lambda **row: client.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "a"}, {"name": "b"}, {"name": "c"}])
    client.post("/api/admin/models", headers=admin_headers, json={
        "id": 61, "name": "single", "api": "openai", "base_url": fleet.base("a"), "cost_per_1k_tokens": "1"})
    client.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=admin_headers)
    r = redis.Redis.from_url(app.config["REDIS_URL"])

    def one(model: str, stream: bool) -> None:
        answer = client.post("/api/v1/chat/completions", headers=auth("alice"), buffered=False,
                             json={"model": model, "messages": HI, "stream": stream})
        assert answer.status_code == 200
        b"".join(answer.response)
        answer.close()

    def trips(model: str, stream: bool) -> int:
        one(model, stream)  # warm: catalogue cached, scripts loaded
        before = redis_proxy.reads
        one(model, stream)
        return redis_proxy.reads - before

    for stream in (False, True):
        # the deployment is taken by the admission's script and given back in the round trip that
        # gives the call's slots back and counts its tokens: the admission's trip, then that one
        assert trips("pool", stream) == trips("single", stream) == 2
    assert sum(fleet.counts().values()) == 8
    assert all(r.zcard(f"tollgate:dep:{{m60}}:live:{name}") == 0 for name in "abc")  # out of flight at once
    stats = [r.hgetall(f"tollgate:dep:{{m60}}:stats:{name}") for name in "abc"]
    assert sum(int(s.get(b"requests", 0)) for s in stats) == 0  # counted in process, not yet sent
    shown = client.get("/api/admin/models/60/deployments", headers=admin_headers).json["data"]
    assert sum(d["requests"] for d in shown) == 4  # sent in one batch before they are shown
    stats = [r.hgetall(f"tollgate:dep:{{m60}}:stats:{name}") for name in "abc"]
    assert sum(int(s.get(b"requests", 0)) for s in stats) == 4


def test_a_stream_closed_unread_gives_its_deployment_back_with_its_slots(make_app, redis_proxy, upstream,
                                                                         admin_headers, monkeypatch):
    import service.web.calls

    monkeypatch.setattr(service.web.calls, "CHAT_MAX_AGE", 3600)  # no catalogue version check among the trips
    app = make_app(REDIS_URL=redis_proxy.url, DEPLOYMENT_STATS_SECONDS=3600)  # no batch of counts among them
    client = app.test_client()
    gate = threading.Event()

    def slow_stream(request):
        def events():
            yield fake_openai.chunk({"role": "assistant", "content": ""})
            gate.wait(10)
            yield fake_openai.chunk({"content": "late"}, finish="stop")
            yield b"data: [DONE]\n\n"
        return Response(events(), mimetype="text/event-stream")

    fleet = Fleet(upstream, ["a", "b", "c"])
    for name in fleet.answer:
        fleet.answer[name] = slow_stream
    add_pool(lambda **row: client.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "a"}, {"name": "b"}, {"name": "c"}])
    client.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=admin_headers)

    def closed_unread() -> None:
        answer = client.post("/api/v1/chat/completions", headers=auth("alice"), buffered=False,
                             json={"model": "pool", "messages": HI, "stream": True})
        assert answer.status_code == 200
        next(iter(answer.response))
        answer.close()

    try:
        closed_unread()  # warm
        before = redis_proxy.reads
        closed_unread()
        assert redis_proxy.reads - before == 2  # the admission's script, then slots and deployment together
    finally:
        gate.set()
    r = redis.Redis.from_url(app.config["REDIS_URL"])
    assert all(r.zcard(f"tollgate:dep:{{m60}}:live:{name}") == 0 for name in "abc")
    assert r.zcard("tollgate:inflight:{acct:alice}") == 0


def test_a_model_is_ready_while_one_of_its_deployments_is(client, upstream, add_model, admin_headers):
    fleet = Fleet(upstream, ["up"])
    dead = f"http://127.0.0.1:{free_port()}/v1"
    add_pool(add_model, fleet, [{"name": "down", "base_url": dead}, {"name": "up"}])
    assert client.get("/v1/models/pool", headers=auth()).json["ready"] is True
    client.patch("/api/admin/models/60/deployments/up", json={"enabled": False}, headers=admin_headers)
    assert client.get("/v1/models/pool", headers=auth()).json["ready"] is False


def test_concurrent_401s_disable_once_and_alert_once(make_app, upstream, admin_headers, live_factory):
    import requests

    app = make_app()
    client = app.test_client()
    fleet = Fleet(upstream, ["revoked", "spare"])
    arrived, go = [], threading.Event()

    def refuse(request):  # four calls reach the revoked key before any of them is refused
        arrived.append(1)
        if len(arrived) == 4:
            go.set()
        go.wait(10)
        return Response('{"error": {"message": "bad key"}}', status=401, content_type="application/json")

    fleet.answer["revoked"] = refuse
    add_pool(lambda **row: client.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "revoked"}, {"name": "spare", "priority": 1}])
    client.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=admin_headers)
    live = live_factory(app)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(requests.post(
        f"{live.url}/api/v1/chat/completions", headers=auth(), json={"model": "pool", "messages": HI},
        timeout=30).status_code)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == [200] * 4 and fleet.counts() == {"revoked": 4, "spare": 4}
    assert [a.kind for a in AlertOutbox.select()] == ["deployment_disabled"]
    invariant("alice")


def test_a_failing_deployment_does_not_look_fast_to_latency_routing(client, upstream, add_model, topup,
                                                                   admin_headers):
    fleet = Fleet(upstream, ["alive"])
    dead = f"http://127.0.0.1:{free_port()}/v1"  # refused at once: the quickest answer there is
    add_pool(add_model, fleet, [{"name": "dead", "base_url": dead}, {"name": "alive"}], routing="latency")
    topup("alice", 100)
    assert [call(client).status_code for _ in range(40)] == [200] * 40  # no breaker in these tests
    assert view(client, admin_headers)["dead"]["errors"] <= 6  # tried first once, then by exploration


def test_routing_goes_on_in_process_while_redis_is_away(make_app, redis_proxy, upstream, admin_headers):
    app = make_app(REDIS_URL=redis_proxy.url)
    client = app.test_client()
    fleet = Fleet(upstream, ["a", "b"])
    add_pool(lambda **row: client.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "a", "max_concurrent": 5}, {"name": "b", "rpm": 100}])
    client.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=admin_headers)
    assert call(client).status_code == 200
    redis_proxy.cut()
    assert [call(client).status_code for _ in range(10)] == [200] * 10
    assert not app.extensions["tollgate"].cache.up
    assert sum(fleet.counts().values()) == 11
    invariant("alice")


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_process_sends_its_deployments_counts_a_batch_at_a_time(make_app, redis_url, upstream, admin_headers):
    """Requests, errors and latencies go to Redis a batch at a time (here only when sent: the
    setting is an hour); what limits depend on (calls in flight) is exact at once everywhere."""
    apps = [make_app(REDIS_URL=redis_url, DEPLOYMENT_STATS_SECONDS=3600) for _ in range(2)]
    first, second = (app.test_client() for app in apps)
    fleet = Fleet(upstream, ["a", "b"])
    add_pool(lambda **row: first.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "a"}, {"name": "b"}])
    first.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=admin_headers)
    assert [call(first).status_code for _ in range(5)] == [200] * 5
    seen = view(second, admin_headers)  # the other process: nothing sent yet, nothing in flight
    assert sum(d["requests"] for d in seen.values()) == 0 and all(d["in_flight"] == 0 for d in seen.values())
    apps[0].extensions["tollgate"].fleet.flush()  # what its maintenance tick does
    seen = view(second, admin_headers)
    assert sum(d["requests"] for d in seen.values()) == 5 and sum(d["errors"] for d in seen.values()) == 0
    assert all(d["p50_latency_ms"] is not None for d in seen.values() if d["requests"])
    assert view(first, admin_headers) == seen  # sent once: nothing left to add


def test_a_process_sends_its_deployments_counts_every_setting_seconds(make_app, redis_url, upstream,
                                                                      admin_headers):
    """With DEPLOYMENT_STATS_SECONDS 0 each call's counts are sent as it ends: another process
    sees them at once."""
    apps = [make_app(REDIS_URL=redis_url, DEPLOYMENT_STATS_SECONDS=0) for _ in range(2)]
    first, second = (app.test_client() for app in apps)
    fleet = Fleet(upstream, ["a"])
    add_pool(lambda **row: first.post("/api/admin/models", json=row, headers=admin_headers).json, fleet,
             [{"name": "a"}])
    first.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=admin_headers)
    for n in (1, 2, 3):
        assert call(first).status_code == 200
        assert view(second, admin_headers)["a"]["requests"] == n
