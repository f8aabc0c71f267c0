"""Credits (SPEC §9): holds, settles, the reaper, concurrency, and the invariant under random play."""
from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from hypothesis import HealthCheck, given, settings, strategies as st

from service.money import billing
from core.chat import ChatRequest
from service.store.db import Hold, LedgerEntry, utcnow
from service.web.errors import InsufficientCredits, InvalidRequest
from tests.conftest import auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import account, charges, holds, invariant

MSGS = [{"role": "user", "content": "count to ten"}]


@pytest.fixture
def priced(add_model, upstream):
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              max_output_tokens=100)
    add_model(id=11, name="free", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="0")
    return upstream


def hold_tokens(max_tokens: int) -> int:
    model = type("M", (), {"max_output_tokens": 100})()
    return ChatRequest(model, MSGS, {"max_tokens": max_tokens}).prompt_bound(0) + max_tokens


def test_concurrent_calls_never_overdraw(priced, live, topup):
    tokens = hold_tokens(20)  # price 1 credit / 1k tokens = 1000 micro-credits a token
    priced.expect_request("/v1/chat/completions").respond_with_json(
        fake_openai.completion("x", tokens - 20, 20))
    topup("zoe", tokens * 10 / 1000)
    headers = {"Authorization": f"Bearer {token('zoe')}"}

    def call(_):
        return requests.post(f"{live.url}/api/v1/chat/completions", headers=headers, timeout=30,
                             json={"model": "paid", "messages": MSGS, "max_tokens": 20}).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(call, range(50)))
    assert statuses.count(200) == 10 and statuses.count(402) == 40
    acct = account("zoe")
    assert acct.balance == 0 and acct.held == 0 and holds() == 0
    assert len(charges("zoe")) == 10
    invariant("zoe")


def test_insufficient_credits_before_any_upstream_call(client, priced):
    r = client.post("/api/v1/chat/completions", json={"model": "paid", "messages": MSGS},
                    headers={**auth("poor"), "Accept-Language": "zh"})
    assert r.status_code == 402
    assert r.json["message"] == "积分余额不足，请充值" and r.json["error"]["code"] == "insufficient_credits"
    assert r.json["error"]["type"] == "insufficient_credits"
    assert not priced.log and holds() == 0


def test_free_model_needs_no_balance(client, priced):
    priced.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 5, 5))
    r = client.post("/api/v1/chat/completions", json={"model": "free", "messages": MSGS}, headers=auth("poor"))
    assert r.status_code == 200 and r.json["usage"]["cost"] == 0
    assert account("poor").balance == 0 and len(charges("poor")) == 1


def test_failed_call_costs_nothing(client, priced, topup):
    topup("amy", 5)
    priced.expect_request("/v1/chat/completions").respond_with_json({"error": {"message": "x"}}, status=500)
    r = client.post("/api/v1/chat/completions", json={"model": "paid", "messages": MSGS}, headers=auth("amy"))
    assert r.status_code == 502
    assert account("amy").balance == 5_000_000 and account("amy").held == 0 and not charges("amy")


def test_settle_twice_charges_once(app, topup):
    topup("bea", 1)
    acct = account("bea")
    billing.hold(acct.id, "req-1", 500_000, 60)
    assert billing.settle(acct.id, "req-1", "paid", 10, 10, 300_000) is True
    assert billing.settle(acct.id, "req-1", "paid", 10, 10, 300_000) is False
    assert account("bea").balance == 700_000 and account("bea").held == 0
    assert LedgerEntry.select().where(LedgerEntry.request_id == "req-1").count() == 1
    invariant("bea")


def test_reaper_releases_expired_holds_only(app, topup):
    topup("cal", 1)
    acct = account("cal")
    billing.hold(acct.id, "old", 300_000, 60)
    billing.hold(acct.id, "new", 200_000, 3600)
    assert account("cal").held == 500_000
    assert billing.reap(utcnow() + dt.timedelta(seconds=120)) == 1
    assert account("cal").held == 200_000 and Hold.select().count() == 1
    invariant("cal")


def test_holds_reap_command(app, topup):
    topup("dan", 1)
    billing.hold(account("dan").id, "stale", 100_000, 60)
    Hold.update(expires_at=utcnow() - dt.timedelta(seconds=1)).execute()
    result = app.test_cli_runner().invoke(args=["holds", "reap"])
    assert "released 1" in result.output and account("dan").held == 0


def test_topup_correction_and_usage_pages(client, admin_headers, priced):
    r = client.post("/api/admin/accounts/eve/credits", json={"amount": 3, "note": "gift"},
                    headers=admin_headers)
    assert r.json == {"account": "eve", "balance": 3.0, "held": 0.0, "currency": "credits"}
    r = client.post("/api/admin/accounts/eve/credits", json={"amount": -5}, headers=admin_headers)
    assert r.status_code == 400 and r.json["error"]["param"] == "amount"
    r = client.post("/api/admin/accounts/eve/credits", json={"amount": "-0.5"}, headers=admin_headers)
    assert r.json["balance"] == 2.5
    for amount in ("x", 0.0000001, True, None):
        r = client.post("/api/admin/accounts/eve/credits", json={"amount": amount}, headers=admin_headers)
        assert r.status_code == 400
    priced.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 5))
    client.post("/api/v1/chat/completions", json={"model": "paid", "messages": MSGS}, headers=auth("eve"))
    page = client.get("/api/v1/usage?limit=2", headers=auth("eve")).json
    assert page["has_more"] is True
    assert [row["kind"] for row in page["data"]] == ["charge", "adjust"]
    assert page["data"][0]["cost"] == 0.015 and page["data"][0]["prompt_tokens"] == 10
    rest = client.get(f"/api/v1/usage?before={page['data'][-1]['cursor']}", headers=auth("eve")).json
    assert [row["kind"] for row in rest["data"]] == ["topup"] and rest["has_more"] is False
    view = client.get("/api/admin/accounts/eve", headers=admin_headers).json
    assert view["balance"] == 2.485 and view["holds"] == [] and len(view["ledger"]) == 3
    invariant("eve")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["topup", "hold", "settle", "release", "reap", "adjust"]),
                          st.integers(min_value=0, max_value=3_000_000)), max_size=30))
def test_invariant_holds_under_random_sequences(app, ops):
    acct = billing.account(f"h{id(ops)}")
    open_ids: list[tuple[str, int]] = []
    for i, (op, amount) in enumerate(ops):
        rid = f"{acct.name}-{i}"
        if op == "topup" and amount:
            billing.credit(acct.id, amount)
        elif op == "adjust" and amount:
            before = account(acct.name)
            try:
                billing.credit(acct.id, -amount)
            except InvalidRequest:  # refused: below zero, or below what is held
                assert amount > before.balance - before.held
        elif op == "hold":
            try:
                billing.hold(acct.id, rid, amount, 60)
                open_ids.append((rid, amount))
            except InsufficientCredits:
                pass
        elif op in ("settle", "release") and open_ids:
            held_id, held = open_ids.pop(0)
            if op == "settle":
                billing.settle(acct.id, held_id, "m", 1, 1, min(amount, held))
            else:
                billing.release(held_id)
        elif op == "reap":
            billing.reap(utcnow() - dt.timedelta(days=1))
        invariant(acct.name)


PLAY = st.lists(st.tuples(
    st.sampled_from(["topup", "start", "finish", "overrun", "disconnect", "fail", "crash", "journal",
                     "replay", "tick"]),
    st.integers(min_value=0, max_value=3_000_000), st.integers(min_value=0, max_value=6_000_000)),
    max_size=30)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(PLAY)
def test_money_invariant_with_overruns_crashes_and_journal(app, tmp_path, ops):
    """Random top-ups, calls (answered, failed, overrun, disconnected), crashed processes and
    journal replays: the balance always equals top-ups - charges, never below zero, held is
    exactly the open holds, and after a keeper tick no hold of a dead process is left while
    every call in flight keeps its own."""
    import uuid

    from service.app import keep_money
    from service.money.journal import Journal

    tag = uuid.uuid4().hex[:8]
    acct = billing.account(f"p-{tag}")
    ext = type("Ext", (), {"journal": Journal(tmp_path / tag, "live"), "owner": f"live-{tag}",
                           "slots": type("NoSlots", (), {"renew": lambda self: None})()})()
    expected, flying, journalled = 0, [], []
    for i, (op, amount, cost) in enumerate(ops):
        rid = f"{tag}-{i}"
        if op == "topup" and amount:
            billing.credit(acct.id, amount)
            expected += amount
        elif op == "start":
            try:
                billing.hold(acct.id, rid, amount, 60, ext.owner)
                flying.append((rid, amount))
            except InsufficientCredits:
                pass
        elif op == "crash":  # a call whose process died: its hold is no longer extended
            try:
                billing.hold(acct.id, rid, amount, 0, f"dead-{tag}")
            except InsufficientCredits:
                pass
        elif op in ("finish", "overrun", "disconnect", "fail", "journal") and flying:
            held_id, held = flying.pop(0)
            charge = {"finish": cost, "overrun": held + cost + 1, "disconnect": cost // 2}.get(op, cost)
            if op == "fail":
                billing.release(held_id)
            elif op == "journal":  # the database was away when this call settled
                ext.journal.append({"op": "settle", "rid": held_id, "args": {
                    "account_id": acct.id, "request_id": held_id, "model": "m", "prompt_tokens": 1,
                    "completion_tokens": 1, "charge": charge, "cap": held}})
                journalled.append(min(charge, held))
            else:
                billing.settle(acct.id, held_id, "m", 1, 1, charge, op == "disconnect", cap=held)
                expected -= min(charge, held)
        elif op == "replay":
            if ext.journal.replay(billing.apply_journalled):
                expected -= sum(journalled)
                journalled.clear()
        elif op == "tick":
            keep_money(ext, 60)
            expected -= sum(journalled)
            journalled.clear()
            assert not Hold.select().where(Hold.owner == f"dead-{tag}").exists()
        live = {h.request_id for h in Hold.select().where(Hold.owner == ext.owner)}
        assert {rid for rid, held in flying if held} <= live  # a call in flight never loses its hold
        assert account(acct.name).balance == expected >= 0
        invariant(acct.name)
