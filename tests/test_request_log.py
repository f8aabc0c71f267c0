"""The request log (SPEC §17, issue 35): one row per call on the four doors, answered, failed or
refused; written off the call's path; read back by its account and by admins only."""
from __future__ import annotations

import datetime as dt

import pytest
import requests
from peewee import OperationalError

from service.store.db import LedgerEntry, RequestBody, RequestLog, utcnow
from service.web import request_log
from tests.conftest import PROVIDER_KEY, SECRET, auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import invariant
from tests.process import Gateway

HI = [{"role": "user", "content": "hi"}]


def writer(client) -> request_log.Writer:
    return client.application.extensions["tollgate_log"]


def rows(client) -> list[RequestLog]:
    """Every log row once the writer has written what is queued."""
    assert writer(client).flush(10)
    return list(RequestLog.select().order_by(RequestLog.id))


def chat(client, headers=None, **body):
    return client.post("/api/v1/chat/completions", headers=headers or auth(),
                       json={"model": "m-openai", "messages": HI, **body})


def answered(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    return chat(gateway, {**auth(), "X-Request-ID": "client-id-1"})


def streamed(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_handler(fake_openai.Stream(["a", "b"]).handler)
    r = chat(gateway, stream=True)
    r.get_data()
    r.close()  # the body is done: its row is queued now
    return r


def stream_broken(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_handler(
        fake_openai.Stream(["a", "b", "c"], drop_after=2).handler)
    r = chat(gateway, stream=True)
    assert b"generation_failed" in r.get_data()
    r.close()
    return r


def no_credits(gateway, upstream):
    return chat(gateway, auth("bob"))


def bad_parameter(gateway, upstream):
    return chat(gateway, temperature=9)


def unknown_model(gateway, upstream):
    return chat(gateway, model="nope")


def provider_failed(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_json({"error": {"message": "x"}}, status=500)
    return chat(gateway)


def rate_limited(gateway, upstream):
    key = gateway.post("/api/admin/keys", headers=auth("root", True), json={"account": "alice", "rpm": 1}).json
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    headers = {"Authorization": f"Bearer {key['key']}"}
    assert chat(gateway, headers).status_code == 200
    return chat(gateway, headers)


def key_budget(gateway, upstream):
    key = gateway.post("/api/admin/keys", headers=auth("root", True), json={"account": "alice", "budget": 0}).json
    return chat(gateway, {"Authorization": f"Bearer {key['key']}"})


def messages(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    return gateway.post("/v1/messages", headers=auth(), json={"model": "m-openai", "max_tokens": 16,
                                                               "messages": HI})


def responses(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    return gateway.post("/v1/responses", headers=auth(), json={"model": "m-openai", "input": "hi"})


def embeddings(gateway, upstream):
    r = gateway.post("/api/admin/models", headers=auth("root", True), json={
        "id": 11, "name": "e-openai", "api": "openai", "kind": "embedding", "upstream_model": "up",
        "base_url": upstream.url_for("/v1"), "api_key_env": "FAKE_API_KEY", "cost_per_1k_input_tokens": "1"})
    assert r.status_code == 201
    upstream.expect_request("/v1/embeddings").respond_with_json({
        "object": "list", "model": "up", "usage": {"prompt_tokens": 7, "total_tokens": 7},
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]})
    return gateway.post("/v1/embeddings", headers=auth(), json={"model": "e-openai", "input": "hi"})


# the call, then what its row says: endpoint, model, status, error code, tokens, cost (micro-credits)
CASES = {
    "answered": (answered, "chat", "m-openai", 200, None, (10, 15), 25_000),
    "streamed": (streamed, "chat", "m-openai", 200, None, (9, 2), 11_000),
    "stream broken": (stream_broken, "chat", "m-openai", 200, "generation_failed", (14, 2), 1),  # estimated
    "no credits": (no_credits, "chat", "m-openai", 402, "insufficient_credits", (0, 0), 0),
    "bad parameter": (bad_parameter, "chat", "m-openai", 400, "invalid_parameter", (0, 0), 0),
    "unknown model": (unknown_model, "chat", None, 404, "model_not_found", (0, 0), 0),
    "provider failed": (provider_failed, "chat", "m-openai", 502, "generation_failed", (0, 0), 0),
    "rate limited": (rate_limited, "chat", "m-openai", 429, "rate_limit_exceeded", (0, 0), 0),
    "key budget": (key_budget, "chat", "m-openai", 402, "key_budget_exceeded", (0, 0), 0),
    "messages": (messages, "messages", "m-openai", 200, None, (10, 15), 25_000),
    "responses": (responses, "responses", "m-openai", 200, None, (10, 15), 25_000),
    "embeddings": (embeddings, "embeddings", "e-openai", 200, None, (7, 0), 7_000),
}


@pytest.mark.parametrize("case", CASES)
def test_every_kind_of_call_leaves_exactly_one_row(gateway, upstream, case):
    make, endpoint, model, status, code, tokens, cost = CASES[case]
    before = {r.request_id for r in rows(gateway)}
    r = make(gateway, upstream)
    assert r.status_code == status, r.get_data(as_text=True)
    new = [row for row in rows(gateway) if row.request_id not in before]
    assert len(new) == (2 if case == "rate limited" else 1), [(n.request_id, n.status) for n in new]
    row = new[-1]  # a rate-limited call's row follows the one its limit allowed
    assert (row.endpoint, row.model, row.status, row.error_code) == (endpoint, model, status, code)
    assert (row.prompt_tokens, row.completion_tokens) == tokens
    charged = LedgerEntry.get_or_none((LedgerEntry.request_id == row.request_id) & (LedgerEntry.kind == "charge"))
    assert row.cost == (-charged.delta if charged else 0) and (row.cost > 0) == bool(cost)
    assert row.latency_ms >= 0 and row.created <= utcnow() and row.estimated is (case == "stream broken")
    if status == 200:
        assert row.upstream_ms is not None and r.headers["X-Request-ID"] in (row.request_id, "client-id-1")
    if case == "answered":
        assert row.client_request_id == "client-id-1" and row.request_id == r.json["id"] and row.key_id is None
    if case == "streamed":
        assert row.stream is True and row.ttft_ms is not None and row.ttft_ms <= row.latency_ms
    if case in ("rate limited", "key budget"):
        assert row.key_id is not None
    invariant("alice")


def test_a_call_without_a_known_account_leaves_no_row(gateway):
    assert gateway.post("/api/v1/chat/completions", json={"model": "m-openai", "messages": HI}).status_code == 401
    assert chat(gateway, {"Authorization": "Bearer sk-nope"}).status_code == 401
    assert rows(gateway) == []


def test_accounts_see_only_their_own_rows_and_admins_any(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    mine = chat(gateway).json["id"]
    assert chat(gateway, auth("bob")).status_code == 402
    assert writer(gateway).flush(10)
    alice = gateway.get("/api/v1/logs", headers=auth()).json["data"]
    bob = gateway.get("/api/v1/logs", headers=auth("bob")).json["data"]
    assert [r["request_id"] for r in alice] == [mine] and [r["status"] for r in bob] == [402]
    assert gateway.get(f"/api/v1/logs/{mine}", headers=auth()).json["cost"] == 0.025
    assert gateway.get(f"/api/v1/logs/{mine}", headers=auth("bob")).status_code == 404
    assert gateway.get(f"/api/v1/logs/{mine}", headers=auth("root", True)).status_code == 200
    admin = gateway.get("/api/admin/logs?account=alice", headers=auth("root", True)).json["data"]
    assert [r["request_id"] for r in admin] == [mine]
    assert gateway.get("/api/admin/logs?account=alice", headers=auth()).status_code == 403
    assert gateway.get("/api/admin/logs?account=nobody", headers=auth("root", True)).status_code == 404
    assert gateway.get("/api/v1/logs").status_code == 401


def test_paging_and_filters(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    key = gateway.post("/api/admin/keys", headers=auth("root", True), json={"account": "alice"}).json
    for i in range(23):
        headers = {"Authorization": f"Bearer {key['key']}"} if i % 5 == 0 else auth()
        assert chat(gateway, headers, model="m-openai" if i % 2 else "nope").status_code in (200, 404)
    assert writer(gateway).flush(10)
    seen, before = [], ""
    while True:
        page = gateway.get(f"/api/v1/logs?limit=10{before}", headers=auth()).json
        seen += page["data"]
        if not page["has_more"]:
            break
        before = f"&before={page['data'][-1]['cursor']}"
    assert len(seen) == 23 and len({r["request_id"] for r in seen}) == 23
    assert [r["cursor"] for r in seen] == sorted((r["cursor"] for r in seen), reverse=True)  # newest first

    def count(query):
        return len(gateway.get(f"/api/v1/logs?limit=100&{query}", headers=auth()).json["data"])

    assert count("status=404") == 12 and count("status=200") == 11 and count("model=m-openai") == 11
    assert count(f"key_id={key['id']}") == 5
    soon = int((utcnow() + dt.timedelta(minutes=1)).replace(tzinfo=dt.timezone.utc).timestamp())
    assert count(f"from={soon}") == 0 and count(f"to={soon}") == 23
    assert gateway.get("/api/v1/logs?limit=0", headers=auth()).json["error"]["param"] == "limit"
    assert gateway.get("/api/v1/logs?status=abc", headers=auth()).status_code == 400


def test_a_batch_whose_commit_is_not_acknowledged_is_not_written_twice(gateway, upstream, monkeypatch):
    """The first write commits and then the link breaks before its answer: the retry adds nothing."""
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    log = writer(gateway)
    log.retry = 0.01
    real, tries = log.write, []

    def commit_then_lose_the_link(items):
        tries.append(len(items))
        real(items)
        if len(tries) == 1:
            raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(log, "write", commit_then_lose_the_link)
    ids = [chat(gateway).json["id"] for _ in range(3)]
    found = rows(gateway)
    assert len(tries) >= 2 and sorted(r.request_id for r in found) == sorted(ids)


def test_a_batch_keeps_text_as_it_was_and_leaves_out_a_row_already_there(gateway):
    """The writer's batch (one COPY on PostgreSQL, whose text format escapes tabs, line ends and
    backslashes): text comes back as it was sent; a batch holding a row that is there already
    (its first commit went through unacknowledged) adds only the others."""
    odd = "a\tb\nc\\d\re \\N é"
    fields = {"account_id": 1, "key_id": None, "created": utcnow(), "endpoint": "chat", "deployment": None,
              "status": 200, "error_code": odd, "latency_ms": 5, "upstream_ms": None, "ttft_ms": 3,
              "prompt_tokens": 1, "completion_tokens": 2, "cached_tokens": 0, "cache_write_5m_tokens": 0,
              "cache_write_1h_tokens": 0, "reasoning_tokens": 0, "cost": 3, "cache_hit": False, "estimated": True,
              "stream": False, "client_request_id": None}

    def row(request_id, model):
        values = {**fields, "request_id": request_id, "model": model}
        return tuple(values[c] for c in request_log.COLUMNS), None

    writer(gateway).write([row("r-1", odd)])
    writer(gateway).write([row("r-1", "again"), row("r-2", odd)])
    found = {r.request_id: r for r in RequestLog.select()}
    assert sorted(found) == ["r-1", "r-2"]
    for r in found.values():
        assert (r.model, r.error_code, r.upstream_ms, r.ttft_ms, r.estimated, r.cache_hit) == (odd, odd, None, 3,
                                                                                               True, False)
        assert r.created == fields["created"]


def test_a_database_outage_never_fails_a_call_because_of_the_log(make_app, outage, add_model, upstream):
    """Free calls (no hold) are answered while the database is away; their rows wait in the queue
    and are written once it is back, each once."""
    app = make_app(DATABASE_URL=outage.url, LOG_RETRY_SECONDS=0.02)
    client = app.test_client()
    add_model(id=10, name="free", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="0")
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    first = chat(client, model="free")
    assert first.status_code == 200 and writer(client).flush(10)
    outage.cut()
    try:
        during = [chat(client, model="free") for _ in range(3)]
        assert [r.status_code for r in during] == [200, 200, 200]
        assert not writer(client).flush(0.3)  # waiting: the database is away
    finally:
        outage.restore()
    found = rows(client)
    assert sorted(r.request_id for r in found) == sorted([first.json["id"]] + [r.json["id"] for r in during])


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_worker_that_stops_writes_the_rows_it_holds(make_app, add_model, db_url, redis_url, upstream, tmp_path):
    """Rows wait in a process up to LOG_WRITE_SECONDS (here longer than the test); a forked worker,
    which ends without running atexit, writes them when SIGTERM stops it."""
    make_app()
    add_model(id=10, name="free", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="0")
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    gw = Gateway({"DATABASE_URL": db_url, "REDIS_URL": redis_url, "JWT_SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path),
                  "WORKERS": "2", "PIN_WORKERS": "false", "LOG_WRITE_SECONDS": "3600",
                  "SHUTDOWN_GRACE_SECONDS": "0.5"}, tmp_path / "gw.log")
    try:
        answers = [requests.post(f"{gw.url}/api/v1/chat/completions", timeout=30, json={"model": "free", "messages": HI},
                                 headers={"Authorization": f"Bearer {token()}"}) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 6
        assert RequestLog.select().count() == 0  # held in the workers
    finally:
        gw.stop()
    assert gw.proc.returncode == 0
    assert sorted(r.request_id for r in RequestLog.select()) == sorted(a.json()["id"] for a in answers)


def test_a_full_queue_drops_rows_and_counts_them(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    full = request_log.Writer(size=1)  # not started: nothing takes rows off it
    gateway.application.extensions["tollgate_log"] = full
    dropped = request_log.DROPPED._value.get()
    assert [chat(gateway).status_code for _ in range(3)] == [200, 200, 200]
    assert request_log.DROPPED._value.get() == dropped + 2 and len(full.pending) == 1


def test_retention_prunes_rows_and_bodies_sooner(gateway, upstream):
    now = utcnow()
    for i, days in enumerate((1, 10, 40)):
        created = now - dt.timedelta(days=days)
        RequestLog.create(request_id=f"r{i}", account_id=1, created=created, endpoint="chat", status=200,
                          latency_ms=1)
        RequestBody.create(request_id=f"r{i}", created=created, request="{}", response="{}")
    assert request_log.prune(30, 7, now) == 1
    assert [r.request_id for r in RequestLog.select().order_by(RequestLog.id)] == ["r0", "r1"]
    assert [b.request_id for b in RequestBody.select()] == ["r0"]


# -- bodies ---------------------------------------------------------------------------------------

SECRETS = ("Use sk-live1234567890abcdef and Bearer abcdef123456789 to pay card 4111 1111 1111 1111, "
           "mail jane.doe@example.com")


def test_bodies_are_kept_redacted_for_accounts_that_ask_and_shown_to_them_and_admins(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_json(
        fake_openai.completion(f"sure: {PROVIDER_KEY} reach me at bob@example.org", 10, 15))
    before = chat(gateway, messages=[{"role": "user", "content": SECRETS}]).json["id"]
    r = gateway.patch("/api/admin/accounts/alice", headers=auth("root", True), json={"log_bodies": True})
    assert r.status_code == 200 and r.json["log_bodies"] is True
    assert gateway.get("/api/admin/accounts/alice", headers=auth("root", True)).json["log_bodies"] is True
    after = chat(gateway, messages=[{"role": "user", "content": SECRETS}]).json["id"]
    assert writer(gateway).flush(10)
    assert "request_body" not in gateway.get(f"/api/v1/logs/{before}", headers=auth()).json  # off by default
    shown = gateway.get(f"/api/v1/logs/{after}", headers=auth()).json
    request, response = shown["request_body"], shown["response_body"]
    for secret in ("sk-live1234567890abcdef", "abcdef123456789", "4111 1111 1111 1111", "jane.doe@example.com"):
        assert secret not in request
    assert "[CARD]" in request and "[EMAIL]" in request and "sk-[REDACTED]" in request
    assert PROVIDER_KEY not in response and "bob@example.org" not in response and "sure" in response
    assert gateway.get(f"/api/v1/logs/{after}", headers=auth("bob")).status_code == 404
    assert "request_body" in gateway.get(f"/api/v1/logs/{after}", headers=auth("root", True)).json
    assert "request_body" not in gateway.get("/api/v1/logs", headers=auth()).json["data"][0]  # lists stay slim


def test_bodies_per_key_are_cut_at_the_bound(make_app, add_model, upstream, topup):
    client = make_app(LOG_BODY_MAX_BYTES=200).test_client()
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    topup("alice", 10)
    key = client.post("/api/admin/keys", headers=auth("root", True), json={"account": "alice",
                                                                          "log_bodies": True}).json
    plain = client.post("/api/admin/keys", headers=auth("root", True), json={"account": "alice"}).json
    long = "é" * 1000
    logged = chat(client, {"Authorization": f"Bearer {key['key']}"}, model="paid",
                  messages=[{"role": "user", "content": long}]).json["id"]
    quiet = chat(client, {"Authorization": f"Bearer {plain['key']}"}, model="paid").json["id"]
    assert writer(client).flush(10)
    body = RequestBody.get(RequestBody.request_id == logged)
    assert len(body.request.encode()) <= 200 and body.request.startswith('{"model"')
    assert RequestBody.get_or_none(RequestBody.request_id == quiet) is None


@pytest.mark.parametrize("text, expected", [
    ("key sk-abcdefgh12345678 here", "key sk-[REDACTED] here"),
    ("Authorization: Bearer eyJhbGciOi.eyJzdWIiOi.sig", "Authorization: Bearer [REDACTED]"),
    ('{"api_key": "AIzaSyA-1234567890abcdefghijklmnopqrstu"}', '{"api_key": "[REDACTED]"}'),
    ("aws AKIAIOSFODNN7EXAMPLE", "aws [REDACTED]"),
    ("write to a.b+c@mail.example.co.uk now", "write to [EMAIL] now"),
    ("card 5500-0000-0000-0004 ok", "card [CARD] ok"),
    ("order 1234567890123 and time 1765000000", "order 1234567890123 and time 1765000000"),  # not Luhn
    ("plain words stay", "plain words stay"),
])
def test_redaction(text, expected):
    from service.store import redact

    assert redact.scrub(text) == expected


def test_a_stream_served_by_waitress_is_logged_when_its_body_ends(gateway, upstream, live_factory):
    import requests

    live = live_factory(gateway.application)
    upstream.expect_request("/v1/chat/completions").respond_with_handler(fake_openai.Stream(["a", "b"]).handler)
    with requests.post(f"{live.url}/v1/chat/completions", headers=auth(), stream=True, timeout=10,
                       json={"model": "m-openai", "messages": HI, "stream": True}) as r:
        assert r.status_code == 200 and b"[DONE]" in r.content
        rid = r.headers["X-Request-ID"]
    [row] = rows(gateway)
    assert (row.request_id, row.stream, row.completion_tokens, row.error_code) == (rid, True, 2, None)
    assert row.ttft_ms is not None and row.cost == 11_000


def test_an_embeddings_call_refused_by_its_rate_limit_is_logged(make_app, add_model, upstream):
    client = make_app(RATE_LIMIT_DEFAULT="1/minute").test_client()
    add_model(id=11, name="e-openai", api="openai", kind="embedding", base_url=upstream.url_for("/v1"),
              cost_per_1k_input_tokens="0")
    upstream.expect_request("/v1/embeddings").respond_with_json({
        "object": "list", "model": "up", "usage": {"prompt_tokens": 7, "total_tokens": 7},
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}]})
    answers = [client.post("/v1/embeddings", headers=auth(), json={"model": "e-openai", "input": "hi"})
               for _ in range(2)]
    assert [r.status_code for r in answers] == [200, 429]
    assert [(r.endpoint, r.status, r.error_code) for r in rows(client)] == [
        ("embeddings", 200, None), ("embeddings", 429, "rate_limit_exceeded")]


def test_a_routed_call_names_its_deployment(gateway, upstream):
    """The deployment that answered (SPEC §15) is on the call's row, as on its ledger row."""
    upstream.expect_request("/b/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    r = gateway.post("/api/admin/models", headers=auth("root", True), json={
        "id": 9, "name": "pool", "api": "openai", "upstream_model": "up", "api_key_env": "FAKE_API_KEY",
        "base_url": upstream.url_for("/v1"), "cost_per_1k_tokens": "1",
        "deployments": [{"name": "b", "base_url": upstream.url_for("/b/v1")}]})
    assert r.status_code == 201, r.json
    assert chat(gateway, model="pool").status_code == 200
    (row,) = rows(gateway)
    assert row.deployment == "b" and LedgerEntry.get(LedgerEntry.kind == "charge").deployment == "b"
