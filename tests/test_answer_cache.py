"""The response cache (issue 36, SPEC §16): what is kept, what hits, what a hit costs."""
from __future__ import annotations

import json

import pytest
import requests
from werkzeug import Response

from core.usage import CLASSES
from service.money import billing, budgets, free_charges
from service.pipeline.answer_cache import Memory, policy
from service.store.db import AlertOutbox, KeySpend, LedgerEntry
from tests import schemas
from tests.conftest import SECRET, auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import account, charges, events, holds, invariant, ledger
from tests.process import Gateway

MSGS = [{"role": "user", "content": "What is 2 + 2?"}]
WORDS = ["Two ", "plus ", "two ", "is ", "four."]


@pytest.fixture
def cached(add_model, upstream, topup):
    """Row 20 `cached` (ttl 60 s, account scope, 1 credit per 1k, hits free), row 21 `global`
    (global scope, hits at 0.5 credits per 1k), row 22 `plain` (no cache); alice and bob have
    100 credits."""
    base = upstream.url_for("/v1")
    add_model(id=20, name="cached", api="openai", base_url=base, cost_per_1k_tokens="1", cache_ttl=60)
    add_model(id=21, name="global", api="openai", base_url=base, cost_per_1k_tokens="1", cache_ttl=60,
              cache_scope="global", cost_per_1k_cache_hit_tokens="0.5")
    add_model(id=22, name="plain", api="openai", base_url=base, cost_per_1k_tokens="1")
    topup("alice", 100)
    topup("bob", 100)
    return upstream


def answer_with(upstream, content: str, prompt: int = 9, completion: int = 3):
    upstream.clear()
    upstream.expect_request("/v1/chat/completions").respond_with_json(
        fake_openai.completion(content, prompt, completion))


def ask(client, who: str = "alice", headers: dict | None = None, **body):
    return client.post("/v1/chat/completions", headers={**auth(who), **(headers or {})},
                       json={"model": "cached", "messages": MSGS, **body})



def test_hit_by_content_answers_the_original_with_a_new_id_and_no_upstream_call(client, cached):
    answer_with(cached, "Four.")
    first = ask(client)
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    again = ask(client, user="someone-else", metadata={"trace": "x"})  # cannot change the answer
    assert again.status_code == 200 and again.headers["X-Cache"] == "HIT"
    assert len(cached.log) == 1
    body = again.json
    schemas.check("CreateChatCompletionResponse", body)
    assert body["id"] != first.json["id"] and body["id"] == again.headers["X-Request-ID"]
    assert body["choices"] == first.json["choices"] and body["model"] == "cached"
    assert body["usage"]["prompt_tokens"] == 9 and body["usage"]["completion_tokens"] == 3
    assert body["usage"]["cost"] == 0 and first.json["usage"]["cost"] == 0.012


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("on_redis", [False, True])
def test_a_row_with_deployments_keeps_and_serves_its_answers(client, cached, add_model, stream, on_redis, make_app,
                                                             request):
    """An answer from one of the row's deployments is the row's answer: kept, then a hit (on a
    lone Redis the admission script takes the deployment and reads the entry together)."""
    if on_redis:
        client = make_app(REDIS_URL=request.getfixturevalue("redis_url")).test_client()
    add_model(id=23, name="pooled", api="openai", base_url=cached.url_for("/v1"), cost_per_1k_tokens="1",
              cache_ttl=60, deployments=[{"name": "a"}, {"name": "b"}])
    cached.expect_request("/v1/chat/completions").respond_with_handler(
        fake_openai.Stream(["Four", "."]).handler if stream else
        lambda request: Response(json.dumps(fake_openai.completion("Four.", 9, 3)), content_type="application/json"))
    first = ask(client, model="pooled", stream=stream, stream_options={"include_usage": True})
    first.get_data()
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    cached.clear()  # a second upstream call would fail
    second = ask(client, model="pooled")
    assert second.status_code == 200 and second.headers["X-Cache"] == "HIT", second.json
    assert second.json["choices"][0]["message"]["content"] == "Four."
    if on_redis:
        import redis

        assert len(redis.Redis.from_url(request.getfixturevalue("redis_url")).keys("tollgate:answer:*")) == 1


@pytest.mark.parametrize("change", [
    {"messages": [{"role": "user", "content": "What is 2 + 3?"}]},
    {"temperature": 0.5},
    {"max_tokens": 10},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
])
def test_another_request_misses(client, cached, change):
    answer_with(cached, "Four.")
    assert ask(client).headers["X-Cache"] == "MISS"
    assert ask(client, **change).headers["X-Cache"] == "MISS"
    assert len(cached.log) == 2


def test_account_scope_keeps_answers_apart_and_global_shares_them(client, cached):
    answer_with(cached, "Four.")
    assert ask(client).headers["X-Cache"] == "MISS"
    assert ask(client, "bob").headers["X-Cache"] == "MISS"  # alice's answer never reaches bob
    assert ask(client, model="global").headers["X-Cache"] == "MISS"
    shared = ask(client, "bob", model="global")
    assert shared.headers["X-Cache"] == "HIT" and shared.json["choices"][0]["message"]["content"] == "Four."
    assert len(cached.log) == 3


def test_no_cache_skips_the_lookup_but_stores(client, cached):
    answer_with(cached, "Four.")
    ask(client)
    answer_with(cached, "4")
    fresh = ask(client, headers={"Cache-Control": "no-cache"})
    assert fresh.headers["X-Cache"] == "BYPASS" and fresh.json["choices"][0]["message"]["content"] == "4"
    later = ask(client)
    assert later.headers["X-Cache"] == "HIT" and later.json["choices"][0]["message"]["content"] == "4"


def test_no_store_skips_lookup_and_store(client, cached):
    answer_with(cached, "Four.")
    skipped = ask(client, headers={"Cache-Control": "max-age=0, no-store"})
    assert skipped.headers["X-Cache"] == "BYPASS"
    assert ask(client).headers["X-Cache"] == "MISS"  # nothing was kept
    assert len(cached.log) == 2


def test_a_row_without_cache_says_nothing(client, cached):
    answer_with(cached, "Four.")
    assert "X-Cache" not in ask(client, model="plain").headers
    assert "X-Cache" not in ask(client, model="plain").headers
    assert len(cached.log) == 2


@pytest.mark.parametrize("header, expected", [
    (None, (True, True)), ("no-cache", (False, True)), ("no-store", (False, False)),
    ("No-Cache, max-age=0", (False, True)), ("max-age=60", (True, True)),
])
def test_cache_control_policy(header, expected):
    assert policy(header) == expected


def test_stream_replayed_from_a_plain_answer(client, cached):
    answer_with(cached, "Four.")
    original = ask(client).json
    replay = ask(client, stream=True, stream_options={"include_usage": True})
    assert replay.headers["X-Cache"] == "HIT" and replay.mimetype == "text/event-stream"
    chunks = events(replay)
    assert chunks[-1] == "[DONE]"
    for c in chunks[:-1]:
        schemas.check("CreateChatCompletionStreamResponse", c)
        assert c["id"] == replay.headers["X-Request-ID"] != original["id"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1] if c["choices"])
    assert text == "Four."
    usage = chunks[-2]["usage"]
    assert chunks[-2]["choices"] == [] and (usage["prompt_tokens"], usage["completion_tokens"]) == (9, 3)
    assert usage["cost"] == 0
    assert not any("usage" in c for c in events(ask(client, stream=True))[:-1])  # not asked for
    assert len(cached.log) == 1


def test_plain_answer_replayed_from_a_stream(client, cached):
    cached.expect_request("/v1/chat/completions").respond_with_handler(
        fake_openai.Stream(WORDS, prompt_tokens=7).handler)
    streamed = ask(client, stream=True)  # without include_usage: none reaches the client
    assert streamed.headers["X-Cache"] == "MISS"
    chunks = events(streamed)
    assert chunks[-1] == "[DONE]" and not any("usage" in c for c in chunks[:-1])
    hit = ask(client)
    assert hit.headers["X-Cache"] == "HIT"
    body = hit.json
    schemas.check("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == "".join(WORDS)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (7, 5)
    assert len(cached.log) == 1


def test_a_cut_stream_is_never_stored(client, cached):
    cut = fake_openai.Stream(WORDS, drop_after=2)
    cached.expect_request("/v1/chat/completions").respond_with_handler(cut.handler)
    chunks = events(ask(client, stream=True))
    assert "error" in chunks[-1]
    answer_with(cached, "Four.")
    assert ask(client).headers["X-Cache"] == "MISS"
    assert ask(client, stream=True).headers["X-Cache"] == "HIT"  # the complete one was kept


def test_an_upstream_error_is_never_stored(client, cached):
    cached.expect_request("/v1/chat/completions").respond_with_json(
        {"error": {"message": "bad", "type": "invalid_request_error"}}, status=400)
    failed = ask(client)
    assert failed.status_code == 400 and failed.headers["X-Cache"] == "MISS"
    answer_with(cached, "Four.")
    assert ask(client).headers["X-Cache"] == "MISS"


def test_a_hit_costs_exactly_the_hit_price(client, cached):
    answer_with(cached, "Four.", prompt=1000, completion=500)
    first = ask(client, model="global")
    assert first.json["usage"]["cost"] == 1.5
    hit = ask(client, model="global")
    assert hit.headers["X-Cache"] == "HIT"
    assert hit.json["usage"]["cost"] == 0.75  # 1500 tokens at 0.5 credits per 1k
    assert sum(hit.json["usage"]["cost_details"].values()) == 0.75
    assert account("alice").balance == 100_000_000 - 1_500_000 - 750_000 and account("alice").held == 0
    rows = charges("alice")
    assert [r.cache_hit for r in rows] == [False, True]
    assert (rows[1].prompt_tokens, rows[1].completion_tokens, rows[1].delta) == (1000, 500, -750_000)
    usage = client.get("/api/v1/usage", headers=auth()).json["data"]
    assert usage[0]["cache_hit"] is True and usage[0]["cost"] == 0.75 and usage[1]["cache_hit"] is False
    invariant("alice")


def test_a_free_hit_writes_a_zero_charge_row(client, cached):
    answer_with(cached, "Four.")
    ask(client)
    ask(client)
    rows = charges("alice")
    assert [(r.delta, r.cache_hit) for r in rows] == [(-12_000, False), (0, True)]
    invariant("alice")


def test_a_free_hit_answers_before_its_row_is_written(make_app, cached):
    """A free hit's row moves nothing, so its answer does not wait for it: the writer
    (service/money/free_charges.py) writes it after. Held here, the hit still answers."""
    app = make_app()
    ext = app.extensions["tollgate"]
    ext.free_charges.close()
    ext.free_charges = held = free_charges.FreeCharges(interval=3600)  # writes only when flushed
    held.start()
    client = app.test_client()
    answer_with(cached, "Four.")
    ask(client)
    hit = ask(client)
    assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT" and hit.json["usage"]["cost"] == 0
    assert [r.cache_hit for r in LedgerEntry.select().where(LedgerEntry.kind == "charge")] == [False]  # the miss's
    assert held.flush()
    [row] = LedgerEntry.select().where(LedgerEntry.cache_hit == True)  # noqa: E712 - peewee's comparison
    assert (row.request_id, row.delta, row.kind, row.prompt_tokens, row.completion_tokens, row.key_id) == \
        (hit.json["id"], 0, "charge", 9, 3, None)
    assert row.prices == {c: 0 for c in CLASSES}
    held.close()
    invariant("alice")


def test_a_free_hit_is_charged_on_its_own_path_when_the_writer_is_full(make_app, cached):
    app = make_app()
    ext = app.extensions["tollgate"]
    ext.free_charges.close()
    ext.free_charges = full = free_charges.FreeCharges(size=0)  # full: takes no row
    full.start()
    client = app.test_client()
    answer_with(cached, "Four.")
    ask(client)
    hit = ask(client)
    assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT"
    [row] = LedgerEntry.select().where(LedgerEntry.cache_hit == True)  # noqa: E712 - written before it answered
    assert (row.request_id, row.delta) == (hit.json["id"], 0)


def test_a_free_hit_pays_on_its_own_path_when_no_writer_runs(make_app, cached):
    """A writer whose thread is not running here (a forked child's inherited one) takes no row."""
    app = make_app()
    ext = app.extensions["tollgate"]
    ext.free_charges.close()
    ext.free_charges = free_charges.FreeCharges()  # never started
    client = app.test_client()
    answer_with(cached, "Four.")
    ask(client)
    hit = ask(client)
    [row] = LedgerEntry.select().where(LedgerEntry.cache_hit == True)  # noqa: E712 - written before it answered
    assert row.request_id == hit.json["id"] and not ext.free_charges.pending


def test_a_row_the_database_refuses_leaves_the_rest_of_its_batch_written(app, topup):
    from core.usage import Usage

    topup("alice", 1)
    alice = account("alice").id
    good = [free_charges.row(alice, f"chatcmpl-free-{i}", "cached", Usage(9, 3), None, None) for i in range(3)]
    bad = (None, *good[0][1:])  # no request id: NOT NULL
    free_charges.FreeCharges().write([good[0], bad, good[1], good[2]])
    assert sorted(e.request_id for e in charges("alice")) == [f"chatcmpl-free-{i}" for i in range(3)]
    invariant("alice")


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_streamed_hit_holds_its_slot_while_it_is_replayed(make_app, cached, redis_url):
    import redis

    client = make_app(REDIS_URL=redis_url, MAX_CONCURRENT_PER_ACCOUNT=1).test_client()
    real = redis.Redis.from_url(redis_url)
    answer_with(cached, "Four.")
    ask(client)
    replay = ask(client, stream=True)
    assert replay.headers["X-Cache"] == "HIT"
    first = next(replay.response)  # the replay has begun, not ended
    assert first and real.zrange(CAP, 0, -1) == [replay.headers["X-Request-ID"].encode()]
    b"".join(replay.response)
    replay.close()
    assert real.zcard(CAP) == 0


def test_free_hits_are_answered_while_the_database_is_away_and_their_rows_written_once_back(
        make_app, cached, outage):
    app = make_app(DATABASE_URL=outage.url, LOG_RETRY_SECONDS=0.02)
    client = app.test_client()
    answer_with(cached, "Four.")
    ask(client)
    writer = app.extensions["tollgate"].free_charges
    outage.cut()
    try:
        hits = [ask(client) for _ in range(3)]
        assert [(h.status_code, h.headers["X-Cache"]) for h in hits] == [(200, "HIT")] * 3
        assert not writer.flush(0.3)  # waiting: the database is away
    finally:
        outage.restore()
    assert writer.flush()
    assert sorted(r.request_id for r in charges("alice") if r.cache_hit) == sorted(h.json["id"] for h in hits)
    invariant("alice")


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_worker_that_stops_writes_the_free_hits_rows_it_holds(make_app, cached, db_url, redis_url, tmp_path):
    """Free hits' rows wait in a process up to LOG_WRITE_SECONDS (here longer than the test); a
    forked worker, which ends without running atexit, writes them when SIGTERM stops it."""
    answer_with(cached, "Four.")
    gw = Gateway({"DATABASE_URL": db_url, "REDIS_URL": redis_url, "JWT_SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path),
                  "WORKERS": "2", "PIN_WORKERS": "false", "LOG_WRITE_SECONDS": "3600",
                  "SHUTDOWN_GRACE_SECONDS": "0.5"}, tmp_path / "gw.log")
    try:
        answers = [requests.post(f"{gw.url}/v1/chat/completions", json={"model": "cached", "messages": MSGS},
                                 headers={"Authorization": f"Bearer {token()}"}, timeout=30) for _ in range(6)]
        assert [a.headers["X-Cache"] for a in answers] == ["MISS"] + ["HIT"] * 5
        assert LedgerEntry.select().where(LedgerEntry.cache_hit == True).count() == 0  # noqa: E712 - held
    finally:
        gw.stop()
    assert gw.proc.returncode == 0
    hits = LedgerEntry.select().where(LedgerEntry.cache_hit == True)  # noqa: E712 - peewee's comparison
    assert sorted(r.request_id for r in hits) == sorted(a.json()["id"] for a in answers[1:])
    invariant("alice")


def test_a_hit_needs_the_balance_for_its_price(client, cached, topup):
    answer_with(cached, "Four.", prompt=1000, completion=1000)
    ask(client, "bob", model="global")
    topup("carol", "0.5")
    refused = ask(client, "carol", model="global")  # the hit costs 1 credit
    assert refused.status_code == 402 and refused.headers["X-Cache"] == "HIT"
    assert refused.json["error"]["code"] == "insufficient_credits"
    assert ledger("carol")[-1].kind == "topup" and charges("carol") == []
    assert (account("carol").balance, account("carol").held, holds()) == (500_000, 0, 0)
    invariant("carol")


def test_a_hit_is_one_charge_with_its_mark_and_no_hold(client, cached, admin_headers):
    """The hit's price is known before it is answered: one guarded statement debits it and writes
    its row, `cache_hit` and the key included (no hold, no settle, no UPDATE after)."""
    answer_with(cached, "Four.", prompt=700, completion=300)
    ask(client, "bob", model="global")
    made = client.post("/api/admin/keys", headers=admin_headers, json={"account": "alice", "budget": "2",
                                                                        "budget_period": "day"}).json
    hit = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {made['key']}"},
                      json={"model": "global", "messages": MSGS})
    assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT" and hit.json["usage"]["cost"] == 0.5
    [row] = charges("alice")
    assert (row.delta, row.cache_hit, row.key_id, row.prompt_tokens, row.completion_tokens) == (
        -500_000, True, made["id"], 700, 300)
    assert row.prices == {c: 500_000 for c in row.prices}  # 0.5 credits per 1k tokens, every class
    assert (account("alice").balance, account("alice").held, holds()) == (99_500_000, 0, 0)
    spend = KeySpend.get(KeySpend.key_id == made["id"])
    assert (spend.spent, spend.held) == (500_000, 0)
    invariant("alice")


def test_the_charge_writes_cache_hit_itself_and_charges_a_request_once(client, cached):
    alice = account("alice").id
    assert billing.charge(alice, "chatcmpl-hit-1", "global", 10, 5, 1234, unit_prices={"input": 1}) is True
    [row] = LedgerEntry.select().where(LedgerEntry.request_id == "chatcmpl-hit-1")
    assert (row.kind, row.delta, row.cache_hit, row.estimated) == ("charge", -1234, True, False)
    assert billing.charge(alice, "chatcmpl-hit-1", "global", 10, 5, 1234) is False  # a retry: nothing more
    assert account("alice").balance == 100_000_000 - 1234 and account("alice").held == 0
    assert billing.charge(alice, "chatcmpl-hit-2", "global", 10, 5, 0) is True  # free: a row all the same
    assert [e.delta for e in charges("alice")] == [-1234, 0]
    with pytest.raises(billing.InsufficientCredits):
        billing.charge(alice, "chatcmpl-hit-3", "global", 10, 5, 100_000_000)  # more than is left
    assert len(charges("alice")) == 2 and account("alice").balance == 100_000_000 - 1234
    invariant("alice")


def test_a_charge_leaves_what_other_calls_hold(client, cached):
    alice = account("alice").id
    billing.hold(alice, "chatcmpl-in-flight", 99_600_000, 60)
    with pytest.raises(billing.InsufficientCredits):
        billing.charge(alice, "chatcmpl-hit-x", "global", 10, 5, 400_001)
    assert billing.charge(alice, "chatcmpl-hit-y", "global", 10, 5, 400_000) is True  # exactly what is free
    assert (account("alice").balance, account("alice").held) == (99_600_000, 99_600_000)
    billing.release("chatcmpl-in-flight")
    assert [e.request_id for e in charges("alice")] == ["chatcmpl-hit-y"]
    invariant("alice")


def test_a_charge_that_crosses_the_low_balance_line_writes_its_alert_with_it(client, cached):
    alice = account("alice").id
    billing.charge(alice, "chatcmpl-hit-a", "global", 10, 5, 60_000_000, threshold=50_000_000)
    billing.charge(alice, "chatcmpl-hit-b", "global", 10, 5, 1, threshold=50_000_000)  # already below
    alerts = list(AlertOutbox.select().where(AlertOutbox.account == alice))
    assert [(a.request_id, a.balance, a.threshold) for a in alerts] == [("chatcmpl-hit-a", 40_000_000, 50_000_000)]
    invariant("alice")


def test_a_hit_the_keys_budget_cannot_pay_is_refused_and_changes_nothing(client, cached, admin_headers):
    answer_with(cached, "Four.", prompt=1000, completion=1000)
    ask(client, "bob", model="global")  # the hit costs 1 credit
    made = client.post("/api/admin/keys", headers=admin_headers, json={"account": "alice", "budget": "0.5",
                                                                        "budget_period": "day"}).json
    refused = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {made['key']}"},
                          json={"model": "global", "messages": MSGS})
    assert refused.status_code == 402 and refused.headers["X-Cache"] == "HIT"
    assert refused.json["error"]["code"] == "key_budget_exceeded"
    assert charges("alice") == [] and (account("alice").balance, account("alice").held, holds()) == (
        100_000_000, 0, 0)
    spend = KeySpend.get_or_none(KeySpend.key_id == made["id"])
    assert spend is None or (spend.spent, spend.held) == (0, 0)
    invariant("alice")


def test_a_void_gives_an_unconfirmed_hit_back_once(client, cached, admin_headers):
    """The journal's `void`: a hit whose charge the database never confirmed (the call failed) is
    given back if it was charged after all, once, key spend included."""
    answer_with(cached, "Four.", prompt=1000, completion=1000)
    ask(client, "bob", model="global")
    made = client.post("/api/admin/keys", headers=admin_headers, json={"account": "alice", "budget": "5",
                                                                        "budget_period": "day"}).json
    hit = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {made['key']}"},
                      json={"model": "global", "messages": MSGS})
    period = budgets.iso(budgets.period_start("day"))
    entry = {"op": "void", "rid": hit.json["id"], "period": period}
    billing.apply_journalled(entry)
    billing.apply_journalled(entry)  # replayed twice after a crash: given back once
    billing.apply_journalled({"op": "void", "rid": "chatcmpl-never-charged", "period": None})
    assert [(e.kind, e.delta) for e in ledger("alice")[-2:]] == [("charge", -1_000_000), ("adjust", 1_000_000)]
    assert account("alice").balance == 100_000_000
    assert KeySpend.get(KeySpend.key_id == made["id"]).spent == 0
    invariant("alice")


def test_a_hit_is_idempotent(client, cached):
    answer_with(cached, "Four.")
    ask(client, model="global")
    key = {"Idempotency-Key": "k-1"}
    hit = ask(client, "bob", headers=key, model="global")
    again = ask(client, "bob", headers=key, model="global")
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json["id"] == hit.json["id"]
    assert len(charges("bob")) == 1


def test_messages_and_embeddings_doors_hit_too(client, cached, add_model):
    answer_with(cached, "Four.")
    body = {"model": "cached", "max_tokens": 50, "messages": [{"role": "user", "content": "What?"}]}
    first = client.post("/v1/messages", json=body, headers=auth())
    second = client.post("/v1/messages", json=body, headers=auth())
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert second.json["content"] == first.json["content"] and second.json["type"] == "message"
    add_model(id=23, name="vectors", api="openai", kind="embedding", base_url=cached.url_for("/v1"),
              cost_per_1k_tokens="1", cache_ttl=60)
    cached.expect_request("/v1/embeddings").respond_with_json(
        {"object": "list", "model": "up", "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 1.0]}],
         "usage": {"prompt_tokens": 4, "total_tokens": 4}})
    made = [client.post("/v1/embeddings", json={"model": "vectors", "input": "hi"}, headers=auth())
            for _ in range(2)]
    assert [m.headers["X-Cache"] for m in made] == ["MISS", "HIT"]
    assert made[1].json["data"] == made[0].json["data"] and made[1].json["usage"]["cost"] == 0
    assert len([e for e in cached.log if e[0].path == "/v1/embeddings"]) == 1


def test_an_answer_over_the_entry_bound_is_not_kept(make_app, cached, upstream):
    client = make_app(CACHE_MAX_ENTRY_BYTES=200).test_client()
    answer_with(cached, "x" * 300)
    assert ask(client).headers["X-Cache"] == "MISS"
    assert ask(client).headers["X-Cache"] == "MISS"


def test_metrics_count_hits_misses_and_credits_saved(client, cached):
    answer_with(cached, "Four.")
    ask(client)
    ask(client)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'tollgate_cache_hits_total{model="cached"}' in text
    assert 'tollgate_cache_misses_total{model="cached"}' in text
    assert 'tollgate_cache_saved_micro_total{model="cached"}' in text


def test_memory_cache_is_bounded_and_least_recently_used_goes_first():
    memory = Memory(limit=30)
    memory.put("a", b"x" * 10, 60)
    memory.put("b", b"y" * 10, 60)
    assert memory.get("a") == b"x" * 10  # a is now the most recent
    memory.put("c", b"z" * 15, 60)
    assert memory.get("b") is None and memory.get("a") and memory.get("c") and memory.size == 25
    memory.put("d", b"w", -1)  # expired at once
    assert memory.get("d") is None


@pytest.mark.parametrize("field, value", [("cache_ttl", -1), ("cache_ttl", "60"), ("cache_scope", "world"),
                                          ("cost_per_1k_cache_hit_tokens", "-1")])
def test_the_admin_api_validates_cache_settings(client, admin_headers, field, value):
    r = client.post("/api/admin/models", headers=admin_headers,
                    json={"name": "bad", "api": "openai", field: value})
    assert r.status_code == 400 and r.json["error"]["param"] == field


def test_seed_file_takes_cache_settings(app, tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nid = 7\nname = "c"\napi = "openai"\ncache_ttl = 300\n'
                    'cache_scope = "global"\ncost_per_1k_cache_hit_tokens = "0.001"\n')
    result = app.test_cli_runner().invoke(args=["seed-models", "--file", str(path)])
    assert result.exit_code == 0, result.output
    from service.store.db import AIModel

    row = AIModel.get_by_id(7)
    assert (row.cache_ttl, row.cache_scope, row.cost_per_1k_cache_hit_tokens) == (300, "global", 1000)


def test_two_processes_share_one_redis_cache(make_app, db_url, tmp_path, cached, redis_url):
    env = {"DATABASE_URL": db_url, "JWT_SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path), "WAITRESS_THREADS": "8",
           "REDIS_URL": redis_url}
    answer_with(cached, "Four.")
    first = Gateway(env, tmp_path / "first.log")
    try:
        second = Gateway(env, tmp_path / "second.log")
        try:
            calls = [requests.post(f"{g.url}/v1/chat/completions", timeout=20,
                                   headers={"Authorization": f"Bearer {token()}"},
                                   json={"model": "cached", "messages": MSGS}) for g in (first, second)]
        finally:
            second.stop()
    finally:
        first.stop()
    assert [c.headers["X-Cache"] for c in calls] == ["MISS", "HIT"]
    assert calls[1].json()["choices"] == calls[0].json()["choices"]
    assert len(cached.log) == 1


def test_entries_live_in_redis_with_the_rows_ttl_and_an_outage_is_a_miss(make_app, cached, redis_url,
                                                                      redis_proxy):
    import redis

    client = make_app(REDIS_URL=redis_proxy.url).test_client()
    answer_with(cached, "Four.")
    assert ask(client).headers["X-Cache"] == "MISS"
    keys = redis.Redis.from_url(redis_url).keys("tollgate:answer:*")
    assert len(keys) == 1 and 0 < redis.Redis.from_url(redis_url).ttl(keys[0]) <= 60
    redis_proxy.cut()
    down = ask(client)  # Redis gone: answered by the provider, not refused
    assert down.status_code == 200 and down.headers["X-Cache"] == "MISS" and len(cached.log) == 2
    redis_proxy.restore()


def test_the_responses_door_hits_too(client, cached):
    answer_with(cached, "Four.")
    body = {"model": "cached", "input": "What is 2 + 2?", "store": False}
    first = client.post("/v1/responses", json=body, headers=auth())
    second = client.post("/v1/responses", json=body, headers=auth())
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert second.json["output"][0]["content"][0]["text"] == "Four." and second.json["id"] != first.json["id"]
    assert len(cached.log) == 1


def test_an_entry_that_is_not_one_is_a_miss(make_app, cached, redis_url):
    import redis

    client = make_app(REDIS_URL=redis_url).test_client()
    answer_with(cached, "Four.")
    ask(client)
    real = redis.Redis.from_url(redis_url)
    for key in real.keys("tollgate:answer:*"):
        real.set(key, b"not json", ex=60)
    again = ask(client)
    assert again.status_code == 200 and again.headers["X-Cache"] == "MISS"


CAP = "tollgate:inflight:{acct:alice}"  # the account's cap on calls in flight (service/limits/rates.py)


def test_a_hit_is_held_to_the_caps_in_flight_but_takes_no_slot(make_app, cached, redis_url):
    """A hit ends as it starts: the admission script checks its caps and takes no slot, so it
    gives nothing back (one round trip: test_on_a_lone_redis_…); a full cap refuses it all the same."""
    import redis

    client = make_app(REDIS_URL=redis_url, MAX_CONCURRENT_PER_ACCOUNT=1).test_client()
    real = redis.Redis.from_url(redis_url)
    seen = []
    cached.expect_request("/v1/chat/completions").respond_with_handler(
        lambda request: seen.append(real.zrange(CAP, 0, -1)) or Response(
            json.dumps(fake_openai.completion("Four.", 9, 3)), content_type="application/json"))
    assert ask(client).headers["X-Cache"] == "MISS" and len(seen[0]) == 1  # the miss held its slot
    hit = ask(client)
    assert hit.headers["X-Cache"] == "HIT" and real.zcard(CAP) == 0
    real.zadd(CAP, {"chatcmpl-another-call": real.time()[0] + 60})  # another call in flight fills the cap
    refused = ask(client)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "concurrency_limit_exceeded"
    assert real.zrange(CAP, 0, -1) == [b"chatcmpl-another-call"] and len(charges("alice")) == 2


@pytest.mark.parametrize("bad", [b"not json", b""])
def test_an_entry_that_is_not_one_takes_its_slots_before_it_calls(make_app, cached, redis_url, bad):
    import redis

    client = make_app(REDIS_URL=redis_url, MAX_CONCURRENT_PER_ACCOUNT=1).test_client()
    real = redis.Redis.from_url(redis_url)
    answer_with(cached, "Four.")
    ask(client)
    for key in real.keys("tollgate:answer:*"):
        real.set(key, bad, ex=60)
    seen = []
    cached.clear()
    cached.expect_request("/v1/chat/completions").respond_with_handler(
        lambda request: seen.append(real.zrange(CAP, 0, -1)) or Response(
            json.dumps(fake_openai.completion("Four.", 9, 3)), content_type="application/json"))
    again = ask(client)
    assert again.status_code == 200 and again.headers["X-Cache"] == "MISS"
    assert seen == [[again.json["id"].encode()]] and real.zcard(CAP) == 0  # held while it called, given back
    for key in real.keys("tollgate:answer:*"):
        real.set(key, bad, ex=60)
    real.zadd(CAP, {"chatcmpl-another-call": real.time()[0] + 60})  # filled meanwhile: refused, nothing taken
    refused = ask(client)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "concurrency_limit_exceeded"
    assert real.zrange(CAP, 0, -1) == [b"chatcmpl-another-call"] and len(cached.log) == 1  # since the clear


def test_a_hit_counts_against_the_rate_limit(make_app, cached):
    client = make_app(RATE_LIMIT_DEFAULT="2/minute").test_client()
    answer_with(cached, "Four.")
    assert ask(client).headers["X-Cache"] == "MISS"
    assert ask(client).headers["X-Cache"] == "HIT"
    refused = ask(client)
    assert refused.status_code == 429 and len(charges("alice")) == 2
    assert refused.headers["X-Cache"] == "MISS"  # every answer of a cached row says it: not from the cache
    bypassed = ask(client, headers={"Cache-Control": "no-store"})
    assert bypassed.status_code == 429 and bypassed.headers["X-Cache"] == "BYPASS"


def test_a_streamed_messages_call_is_kept_and_replayed(client, cached):
    cached.expect_request("/v1/chat/completions").respond_with_handler(
        fake_openai.Stream(WORDS, prompt_tokens=7).handler)
    body = {"model": "cached", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "What?"}]}

    def said(response):
        text, usage = "", None
        for block in response.get_data().split(b"\n\n"):
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    text += (event.get("delta") or {}).get("text", "")
                    usage = event.get("usage", usage)
        return response.headers["X-Cache"], text, usage["output_tokens"]

    assert said(client.post("/v1/messages", json=body, headers=auth())) == ("MISS", "".join(WORDS), 5)
    assert said(client.post("/v1/messages", json=body, headers=auth())) == ("HIT", "".join(WORDS), 5)
    assert len(cached.log) == 1


def test_the_key_leaves_out_what_cannot_change_the_answer():
    from types import SimpleNamespace

    from core.chat import ChatRequest
    from service.pipeline.answer_cache import key_of

    row = SimpleNamespace(id=1, api="openai", upstream_model="m", base_url=None, cache_scope="account",
                          max_output_tokens=64)
    base = ChatRequest(row, MSGS, {"temperature": 0}, False, False, "r1")
    same = ChatRequest(row, MSGS, {"temperature": 0, "user": "u", "metadata": {"a": 1}}, True, True, "r2",
                       {"include_usage": True})
    assert key_of(base, row, 1) == key_of(same, row, 1)
    assert key_of(base, row, 1) != key_of(base, row, 2)  # account scope
    assert key_of(base, SimpleNamespace(**{**vars(row), "cache_scope": "global"}), 1) == \
        key_of(base, SimpleNamespace(**{**vars(row), "cache_scope": "global"}), 2)
    assert key_of(base, SimpleNamespace(**{**vars(row), "upstream_model": "n"}), 1) != key_of(base, row, 1)
    native = SimpleNamespace(model=row, body={"messages": MSGS}, request_id="r3", stream=False)
    assert key_of(native, row, 1) == key_of(SimpleNamespace(**{**vars(native), "request_id": "r4"}), row, 1)


def test_on_a_lone_redis_the_cache_takes_no_round_trip_of_its_own(make_app, cached, redis_url, redis_proxy,
                                                                   monkeypatch):
    """The admission script reads the entry, and a miss's answer is stored by the lease's
    give-back: a cached row's miss and hit take the round trips of an uncached row's call."""
    import redis

    import service.web.calls

    monkeypatch.setattr(service.web.calls, "CHAT_MAX_AGE", 3600)  # the catalogue's version check
    client = make_app(REDIS_URL=redis_proxy.url).test_client()
    answer_with(cached, "Four.")
    assert ask(client, model="plain").status_code == 200  # warm: catalogue cached, script loaded

    def trips(**body):
        before = redis_proxy.reads
        response = ask(client, **body)
        return response.headers.get("X-Cache"), redis_proxy.reads - before

    uncached = trips(model="plain")
    assert uncached == (None, 2)  # the admission script, the lease given back
    assert trips() == ("MISS", 2)
    assert len(redis.Redis.from_url(redis_url).keys("tollgate:answer:*")) == 1  # stored before it answered
    assert trips() == ("HIT", 1)  # the admission script alone: a free hit takes no slot to give back
    assert trips(model="global") == ("MISS", 2)
    assert trips(model="global") == ("HIT", 2)  # a priced hit holds its slot while it pays
    assert trips(messages=[{"role": "user", "content": "And 3 + 3?"}]) == ("MISS", 2)
    assert len(cached.log) == 5
