"""Spend per key and key budgets (SPEC §17, issue 35): a key's hold counts against its period
budget in the same guarded statement as the balance, exact under concurrency across processes."""
from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
import requests
from werkzeug import Response

from service.money import billing, budgets
from service.store.db import ApiKey, AuditEntry, Hold, KeySpend, LedgerEntry, db
from tests.conftest import SECRET, auth
from tests.fakes import openai as fake_openai
from tests.helpers import charges, invariant, wait_for
from tests.process import Gateway

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def paid(client, add_model, upstream, topup):
    """Model `paid` (1 credit per 1k tokens) answering 10 + 15 tokens; alice has 100 credits."""
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              max_output_tokens=64)
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    topup("alice", 100)
    return client


def make_key(client, admin_headers, **fields) -> dict:
    r = client.post("/api/admin/keys", headers=admin_headers, json={"account": "alice", **fields})
    assert r.status_code == 201, r.json
    return r.json


def call(client, key: str, **extra):
    return client.post("/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "paid", "messages": HI, **extra})


def spend_row(key_id: int) -> KeySpend:
    return KeySpend.get(KeySpend.key_id == key_id)


def test_a_call_past_the_keys_budget_is_402_and_the_account_still_pays_nothing_more(paid, admin_headers):
    made = make_key(paid, admin_headers, budget="0.2", budget_period="day")
    assert made["budget"] == 0.2 and made["budget_period"] == "day"
    answered = 0
    while True:
        r = call(paid, made["key"])
        if r.status_code != 200:
            break
        answered += 1
        assert spend_row(made["id"]).spent <= 200_000
    assert r.status_code == 402, r.json
    assert r.json["error"]["code"] == "key_budget_exceeded" and r.json["error"]["type"] == "insufficient_credits"
    assert "cannot cover this call" in r.json["error"]["message"]  # (it said "spent" of a budget partly left)
    assert r.headers["x-should-retry"] == "false"
    assert answered >= 1
    row = spend_row(made["id"])
    assert row.held == 0 and row.spent == answered * 25_000 <= 200_000
    assert [e.key_id for e in charges("alice")] == [made["id"]] * answered
    invariant("alice")
    shown = paid.get(f"/api/admin/keys/{made['id']}", headers=admin_headers).json
    assert shown["spent"] == billing.to_credits(answered * 25_000) and shown["budget"] == 0.2 and shown["held"] == 0
    assert shown["period_resets_at"].endswith("T00:00:00Z")
    other = make_key(paid, admin_headers)  # the account itself may still spend, with another key
    assert call(paid, other["key"]).status_code == 200


def test_a_failed_call_gives_the_keys_hold_back(client, add_model, upstream, topup, admin_headers):
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    upstream.expect_request("/v1/chat/completions").respond_with_json({"error": {"message": "boom"}}, status=500)
    topup("alice", 100)
    made = make_key(client, admin_headers, budget=50, budget_period="month")
    r = call(client, made["key"])
    assert r.status_code == 502
    row = spend_row(made["id"])
    assert (row.spent, row.held) == (0, 0)
    assert Hold.select().count() == 0
    invariant("alice")


def test_a_released_or_reaped_hold_frees_the_keys_budget(paid, admin_headers):
    made = make_key(paid, admin_headers, budget=1, budget_period="total")
    key = ApiKey.get_by_id(made["id"])
    found = budgets.reservation(key)
    acct = billing.account("alice")
    billing.hold(acct.id, "r1", 600_000, 60, key=found)
    with pytest.raises(budgets.KeyBudgetExceeded):
        billing.hold(acct.id, "r2", 400_001, 60, key=found)
    billing.hold(acct.id, "r2", 400_000, 60, key=found)
    assert (spend_row(key.id).spent, spend_row(key.id).held) == (0, 1_000_000)
    billing.release("r1")
    assert spend_row(key.id).held == 400_000
    Hold.update(expires_at=dt.datetime(2000, 1, 1)).where(Hold.request_id == "r2").execute()
    assert billing.reap() == 1
    assert (spend_row(key.id).spent, spend_row(key.id).held) == (0, 0)
    invariant("alice")


def test_settle_moves_held_to_spent_in_the_period_the_hold_was_taken(paid, admin_headers):
    """A call that began before midnight settles into the old period; the new one starts at 0."""
    made = make_key(paid, admin_headers, budget=1, budget_period="day")
    key = ApiKey.get_by_id(made["id"])
    yesterday = budgets.reservation(key, budgets.period_start("day") - dt.timedelta(hours=1))
    acct = billing.account("alice")
    billing.hold(acct.id, "late", 900_000, 60, key=yesterday)
    assert billing.settle(acct.id, "late", "paid", 1, 1, 300_000, cap=900_000, key_id=key.id,
                          period=budgets.iso(yesterday.period)) is True
    old = KeySpend.get((KeySpend.key_id == key.id) & (KeySpend.period_start == yesterday.period))
    assert (old.spent, old.held) == (300_000, 0)
    assert billing.settle(acct.id, "late", "paid", 1, 1, 300_000, key_id=key.id,
                          period=budgets.iso(yesterday.period)) is False  # settled once
    assert KeySpend.get_by_id(old.id).spent == 300_000
    today = budgets.reservation(key)
    billing.hold(acct.id, "now", 1_000_000, 60, key=today)  # the whole budget again: a new period
    billing.release("now")
    invariant("alice")


def test_the_period_resets_at_the_utc_boundary(paid, admin_headers):
    made = make_key(paid, admin_headers, budget="0.2", budget_period="day")
    while call(paid, made["key"]).status_code == 200:
        pass
    assert call(paid, made["key"]).json["error"]["code"] == "key_budget_exceeded"
    # the day passes: what was spent belongs to yesterday's period
    today = budgets.period_start("day")
    KeySpend.update(period_start=today - dt.timedelta(days=1)).where(KeySpend.period_start == today).execute()
    assert call(paid, made["key"]).status_code == 200
    row = KeySpend.get((KeySpend.key_id == made["id"]) & (KeySpend.period_start == today))
    assert (row.spent, row.held) == (25_000, 0)


@pytest.mark.parametrize("period, now, start, end", [
    ("day", dt.datetime(2026, 12, 31, 23, 59, 59), dt.datetime(2026, 12, 31), dt.datetime(2027, 1, 1)),
    ("week", dt.datetime(2026, 12, 6, 12), dt.datetime(2026, 11, 30), dt.datetime(2026, 12, 7)),  # Sunday
    ("week", dt.datetime(2026, 12, 7, 0), dt.datetime(2026, 12, 7), dt.datetime(2026, 12, 14)),  # Monday
    ("month", dt.datetime(2026, 12, 15), dt.datetime(2026, 12, 1), dt.datetime(2027, 1, 1)),
    ("month", dt.datetime(2027, 2, 28, 23), dt.datetime(2027, 2, 1), dt.datetime(2027, 3, 1)),
    ("total", dt.datetime(2026, 12, 15), budgets.EPOCH, None),
])
def test_periods_are_utc_calendar_periods(period, now, start, end):
    assert budgets.period_start(period, now) == start
    assert budgets.period_end(period, start) == end


def test_key_admin_shows_and_changes_limits_and_budget(paid, admin_headers):
    made = make_key(paid, admin_headers, name="team", rpm=5)
    assert call(paid, made["key"]).status_code == 200  # 25 micro-credits before any budget
    r = paid.patch(f"/api/admin/keys/{made['id']}", headers=admin_headers,
                   json={"budget": 2, "budget_period": "month", "rpm": 7, "max_concurrent": 3})
    assert r.status_code == 200, r.json
    body = r.json
    assert (body["budget"], body["budget_period"], body["rpm"], body["max_concurrent"]) == (2, "month", 7, 3)
    assert body["spent"] == 0.025  # the month's spend so far counts against the new budget
    assert body["period_resets_at"].endswith("-01T00:00:00Z") and "key" not in body
    assert paid.patch(f"/api/admin/keys/{made['id']}", headers=admin_headers,
                      json={"budget_period": "year"}).json["error"]["param"] == "budget_period"
    assert paid.patch(f"/api/admin/keys/{made['id']}", headers=admin_headers,
                      json={"budget": -1}).status_code == 400
    assert paid.patch(f"/api/admin/keys/{made['id']}", headers=admin_headers,
                      json={"key_hash": "x"}).json["error"]["param"] == "key_hash"
    assert paid.get("/api/admin/keys/999999", headers=admin_headers).status_code == 404
    assert paid.get(f"/api/admin/keys/{made['id']}", headers=auth("alice")).status_code == 403
    listed = paid.get("/api/admin/keys?account=alice", headers=admin_headers).json["data"]
    assert [k["id"] for k in listed] == [made["id"]]
    actions = [(a.action, a.target) for a in AuditEntry.select().order_by(AuditEntry.id)]
    assert ("key.create", f"key:{made['id']}") in actions and ("key.update", f"key:{made['id']}") in actions


def test_spend_per_key_in_usage_summary_and_csv(paid, admin_headers):
    first, second = make_key(paid, admin_headers), make_key(paid, admin_headers)
    for key in (first, first, second):
        assert call(paid, key["key"]).status_code == 200
    assert paid.post("/api/v1/chat/completions", headers=auth("alice"),
                     json={"model": "paid", "messages": HI}).status_code == 200
    rows = paid.get("/api/v1/usage", headers=auth("alice")).json["data"]
    assert [r["key_id"] for r in rows if r["kind"] == "charge"] == [None, second["id"], first["id"], first["id"]]
    summary = paid.get("/api/v1/usage/summary?group_by=key", headers=auth("alice")).json
    by_key = {d["key"]: (d["calls"], d["cost"]) for d in summary["data"]}
    assert by_key == {first["id"]: (2, 0.05), second["id"]: (1, 0.025), None: (1, 0.025)}
    csv = paid.get("/api/admin/accounts/alice/usage/export.csv", headers=admin_headers).get_data(as_text=True)
    lines = csv.splitlines()
    assert lines[0].endswith(",key_id")
    assert sum(1 for line in lines if line.endswith(f",{first['id']}")) == 2
    one_key = paid.get(f"/api/v1/usage/export.csv?key_id={second['id']}", headers=auth("alice")).get_data(as_text=True)
    assert len(one_key.splitlines()) == 2 and one_key.splitlines()[1].endswith(f",{second['id']}")


# -- exact under concurrency, across processes ---------------------------------------------------


def test_budget_is_exact_under_50_concurrent_calls_on_two_processes(client, db_url, tmp_path, add_model,
                                                                      upstream, topup, admin_headers):
    """50 calls at once through two gateway processes on one key: exactly as many are held as the
    budget covers, the rest are 402 key_budget_exceeded, and spent + held never passes it."""
    gate, arrived = threading.Event(), []

    def slow(request):
        arrived.append(1)
        gate.wait(60)
        return Response(json.dumps(fake_openai.completion("ok", 10, 15)), content_type="application/json")

    upstream.expect_request("/v1/chat/completions").respond_with_handler(slow)
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              max_output_tokens=64)
    topup("alice", 1000)
    hold = _one_hold(client, gate, arrived)
    fits = 7
    made = make_key(client, admin_headers, budget=billing.to_credits(fits * hold + hold // 2), budget_period="day")
    budget = fits * hold + hold // 2
    env = {"DATABASE_URL": db_url, "JWT_SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path),
           "RATE_LIMIT_DEFAULT": "100000/minute", "PIN_WORKERS": "false", "REQUEST_LOG": "false"}
    a, b = Gateway(env, tmp_path / "a.log"), Gateway(env, tmp_path / "b.log")
    watch = _Watch(made["id"], budget)
    results = []
    try:
        threads = [threading.Thread(target=lambda url=(a, b)[i % 2].url: results.append(
            _post(url, made["key"]))) for i in range(50)]
        for t in threads:
            t.start()
        wait_for(lambda: len(arrived) + sum(1 for r in results if r[0] == 402) == 50, timeout=60)
        held = Hold.select().where(Hold.key_id == made["id"])
        assert held.count() == len(arrived) == fits and sum(h.amount for h in held) <= budget
        gate.set()
        for t in threads:
            t.join(60)
    finally:
        gate.set()
        watch.stop()
        a.stop()
        b.stop()
    assert sorted(s for s, _ in results) == [200] * fits + [402] * (50 - fits)
    assert {code for s, code in results if s == 402} == {"key_budget_exceeded"}
    assert watch.worst <= budget and watch.samples > 0
    row = spend_row(made["id"])
    assert row.held == 0 and row.spent == fits * 25_000 == -sum(
        e.delta for e in LedgerEntry.select().where(LedgerEntry.key_id == made["id"]))
    invariant("alice")


def _one_hold(client, gate: threading.Event, arrived: list) -> int:
    """What one such call holds: a call with a JWT, read from its hold while the fake keeps it."""
    done = threading.Thread(target=lambda: client.post("/api/v1/chat/completions", headers=auth("alice"),
                                                       json={"model": "paid", "messages": HI}))
    done.start()
    wait_for(lambda: arrived, timeout=10)
    amount = Hold.get().amount
    gate.set()
    done.join(10)
    gate.clear()
    arrived.clear()
    return amount


def _post(url: str, key: str) -> tuple[int, str | None]:
    r = requests.post(f"{url}/api/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {key}"},
                      json={"model": "paid", "messages": HI})
    return r.status_code, (r.json().get("error") or {}).get("code") if r.status_code != 200 else None


class _Watch:
    """Reads the key's period row over and over on its own connection: the most it ever saw of
    spent + held."""

    def __init__(self, key_id: int, budget: int):
        self.key_id, self.worst, self.samples = key_id, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            with db.connection_context():
                for row in KeySpend.select().where(KeySpend.key_id == self.key_id):
                    self.worst = max(self.worst, row.spent + row.held)
                    self.samples += 1
            self._stop.wait(0.002)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


def test_a_journalled_settle_moves_the_keys_hold_to_spent_once(make_app, db_url, tmp_path, add_model, upstream,
                                                                topup, admin_headers):
    """The provider answers, the database is gone when the call settles: the settle waits in the
    journal and, applied (twice), counts the charge against the key's period once."""
    from service.app import keep_money
    from tests.helpers import Outage

    outage = Outage(db_url, tmp_path)
    try:
        app = make_app(DATABASE_URL=outage.url)
        client = app.test_client()
        add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
        topup("alice", 10)
        made = make_key(client, admin_headers, budget=5, budget_period="week")

        def answer_then_lose_the_database(request):
            outage.cut()
            return Response(json.dumps(fake_openai.completion("ok", 10, 20)), content_type="application/json")

        upstream.expect_request("/v1/chat/completions").respond_with_handler(answer_then_lose_the_database)
        try:
            assert call(client, made["key"]).status_code == 200
        finally:
            outage.restore()
        row = spend_row(made["id"])
        assert row.spent == 0 and row.held > 0  # not yet applied
        ext = app.extensions["tollgate"]
        keep_money(ext, 60)
        keep_money(ext, 60)
        row = spend_row(made["id"])
        assert (row.spent, row.held) == (30_000, 0)
        assert [e.key_id for e in charges("alice")] == [made["id"]]
        invariant("alice")
    finally:
        outage.close()


def test_a_provider_that_overstates_usage_spends_at_most_the_hold_of_the_keys_budget(
        client, add_model, upstream, topup, admin_headers):
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              max_output_tokens=64)
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 100_000))
    topup("alice", 100)
    made = make_key(client, admin_headers, budget=1, budget_period="total")
    assert call(client, made["key"]).status_code == 200
    [charge] = charges("alice")
    overrun = LedgerEntry.get(LedgerEntry.kind == "overrun")
    row = spend_row(made["id"])
    assert (row.spent, row.held) == (-charge.delta, 0) and row.spent < 1_000_000
    assert charge.key_id == overrun.key_id == made["id"] and overrun.absorbed > 0
    invariant("alice")


def test_each_model_of_a_parallel_call_counts_against_the_keys_budget(paid, add_model, upstream, admin_headers):
    """`models` ran each model's call without the key: its budget and its spend were bypassed."""
    add_model(id=11, name="paid2", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              max_output_tokens=64)
    made = make_key(paid, admin_headers, budget="5", budget_period="day")
    r = paid.post("/api/v1/chat/completions", headers={"Authorization": f"Bearer {made['key']}"},
                  json={"models": ["paid", "paid2"], "messages": HI})
    assert r.status_code == 200, r.json
    rows = [e for e in charges("alice")]
    assert len(rows) == 2 and all(e.key_id == made["id"] for e in rows)
    assert spend_row(made["id"]).spent == sum(-e.delta for e in rows) == 2 * 25_000
    assert spend_row(made["id"]).held == 0
    invariant("alice")


def test_a_cache_hit_counts_against_the_keys_budget(paid, add_model, upstream, admin_headers):
    """A hit held and settled its price without the key: a budget did not bound cached answers."""
    add_model(id=12, name="cached", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              max_output_tokens=64, cache_ttl=60, cost_per_1k_cache_hit_tokens="1")
    made = make_key(paid, admin_headers, budget="5", budget_period="day")
    for expected in ("MISS", "HIT"):
        r = paid.post("/api/v1/chat/completions", headers={"Authorization": f"Bearer {made['key']}"},
                      json={"model": "cached", "messages": HI})
        assert r.status_code == 200 and r.headers["X-Cache"] == expected, r.json
    rows = charges("alice")
    assert len(rows) == 2 and all(e.key_id == made["id"] for e in rows)
    assert spend_row(made["id"]).spent == sum(-e.delta for e in rows) == 2 * 25_000
    invariant("alice")
