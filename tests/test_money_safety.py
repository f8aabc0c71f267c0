"""Money stays exact when providers lie, calls run long, and the database goes away (issue 17)."""
from __future__ import annotations

import json
import threading

import peewee
import pytest
import requests
from werkzeug import Response

from service.app import keep_money
from service.money import billing
from service.store.db import Hold
from tests.conftest import auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import account, charges, holds, invariant, ledger, wait_for

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def paid(add_model, upstream, topup):
    """Model `paid` at 1 credit per 1k tokens (1000 micro-credits a token), alice with 100 credits."""
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              max_output_tokens=50)
    topup("alice", 100)
    return upstream


# --- the hold bounds the call -------------------------------------------------------------

def test_lying_provider_is_charged_the_hold_and_the_rest_is_an_overrun(client, paid):
    paid.expect_request("/v1/chat/completions").respond_with_json(
        fake_openai.completion("hi", 1_000_000, 1_000_000))
    r = client.post("/api/v1/chat/completions", json={"model": "paid", "messages": HI}, headers=auth())
    assert r.status_code == 200
    acct = account("alice")
    paid_micro = 100_000_000 - acct.balance
    assert 0 < paid_micro < 1_000_000  # the hold: a small prompt + 50 output tokens, not 2M tokens
    assert r.json["usage"]["cost"] == billing.to_credits(paid_micro)
    rows = ledger("alice")
    overrun = [e for e in rows if e.kind == "overrun"]
    assert len(overrun) == 1 and overrun[0].delta == 0
    assert overrun[0].absorbed == 2_000_000 * 1000 - paid_micro
    assert acct.held == 0 and holds() == 0
    invariant("alice")


def test_lying_stream_is_capped_too(live, paid):
    fake = fake_openai.Stream(["a", "b"], prompt_tokens=1_000_000)
    paid.expect_request("/v1/chat/completions").respond_with_handler(fake.handler)
    r = requests.post(f"{live.url}/api/v1/chat/completions", headers=auth(), timeout=10,
                      json={"model": "paid", "messages": HI, "stream": True,
                            "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and "data: [DONE]" in r.text
    usage = [json.loads(line[6:]) for line in r.text.splitlines()
             if line.startswith("data: {") and '"usage"' in line][-1]["usage"]
    acct = account("alice")
    assert acct.balance >= 0 and usage["cost"] == billing.to_credits(100_000_000 - acct.balance)
    assert [e.kind for e in ledger("alice")].count("overrun") == 1
    invariant("alice")


BIG = "x" * 200_000  # 200 KB: at least 200 credits' worth of prompt at 1 credit per 1k tokens


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "c1", "type": "function", "function": {"name": "f", "arguments": BIG}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "ok"}]},
    {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"type": "object", "description": BIG}}}},
    {"messages": [{"role": "user", "content": "hi", "name": BIG[:20_000] * 10}]},
], ids=["tool_call_arguments", "response_format", "name"])
def test_hold_sees_every_prompt_byte(client, paid, body):
    r = client.post("/api/v1/chat/completions", json={"model": "paid", **body}, headers=auth())
    assert r.status_code == 402 and not paid.log
    assert account("alice").held == 0


def test_images_are_held_at_the_rows_allowance(client, paid, add_model, upstream):
    add_model(id=11, name="vision", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              max_output_tokens=10, image_tokens=60_000)
    image = {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}
    two = {"role": "user", "content": image["content"] + image["content"][1:]}
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("a cat", 900, 3))
    r = client.post("/api/v1/chat/completions", json={"model": "vision", "messages": [image]}, headers=auth())
    assert r.status_code == 200  # one image: 60 credits held of 100
    r = client.post("/api/v1/chat/completions", json={"model": "vision", "messages": [two]}, headers=auth())
    assert r.status_code == 402  # two images: 120 credits
    invariant("alice")


def test_inline_image_data_is_not_counted_as_prompt_bytes(client, paid, add_model, upstream):
    add_model(id=11, name="vision", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              max_output_tokens=10, image_tokens=1000)
    data = "data:image/png;base64," + "A" * 400_000  # 400 KB of pixels is ~1000 tokens, not 400 000
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 1000, 3))
    r = client.post("/api/v1/chat/completions", headers=auth(), json={"model": "vision", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data}}]}]})
    assert r.status_code == 200


def test_database_refuses_a_negative_balance(app, topup):
    topup("bob", 1)
    acct = account("bob")
    with pytest.raises(peewee.IntegrityError, match="account_money_ok"):
        with billing.write_tx():
            type(acct).update(balance=-5).where(type(acct).id == acct.id).execute()
    billing.reconnect()
    with pytest.raises(peewee.IntegrityError, match="account_money_ok"):  # held ≤ balance
        with billing.write_tx():
            type(acct).update(held=acct.balance + 1).where(type(acct).id == acct.id).execute()
    billing.reconnect()
    assert account("bob").balance == 1_000_000 and account("bob").held == 0


# --- holds live as long as their call -----------------------------------------------------

def test_a_call_longer_than_the_ttl_keeps_its_hold(make_app, live_factory, add_model, upstream, topup):
    app = make_app(HOLD_TTL_SECONDS=1, HOLD_REAP_INTERVAL_SECONDS=0.3)
    live = live_factory(app)
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              max_output_tokens=50)
    topup("alice", 0.15)  # enough for one call's hold (about 0.1), not two
    release, entered = threading.Event(), threading.Event()

    def slow(request):
        entered.set()
        release.wait(10)
        return Response(json.dumps(fake_openai.completion("ok", 5, 5)), content_type="application/json")

    upstream.expect_request("/v1/chat/completions").respond_with_handler(slow)
    first = {}
    caller = threading.Thread(target=lambda: first.update(r=requests.post(
        f"{live.url}/api/v1/chat/completions", headers=auth(), timeout=20,
        json={"model": "paid", "messages": HI})))
    caller.start()
    assert entered.wait(10)
    held = account("alice").held
    expires = [Hold.get().expires_at]

    def extended_again() -> bool:  # the keeper pushes the expiry back while the call runs
        billing.reap()  # and a reaper running meanwhile leaves the live call's hold alone
        current = Hold.get().expires_at
        if current > expires[-1]:
            expires.append(current)
        return len(expires) >= 4

    wait_for(extended_again, timeout=10)  # three extensions: the call has outlived its 1 s TTL
    assert account("alice").held == held
    second = requests.post(f"{live.url}/api/v1/chat/completions", headers=auth(), timeout=20,
                           json={"model": "paid", "messages": HI})
    assert second.status_code == 402  # the first call's hold still stands
    release.set()
    caller.join(20)
    assert first["r"].status_code == 200
    acct = account("alice")
    assert acct.balance == 150_000 - 10_000 and acct.held == 0 and holds() == 0
    invariant("alice")


# --- the database going away ----------------------------------------------------------------

def test_calls_get_503_while_the_database_is_away(make_app, outage, add_model, upstream, topup):
    app = make_app(DATABASE_URL=outage.url)
    client = app.test_client()
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    topup("alice", 10)
    outage.cut()
    try:
        r = client.post("/api/v1/chat/completions", json={"model": "paid", "messages": HI},
                        headers={**auth(), "Accept-Language": "zh"})
        assert r.status_code == 503, r.json
        assert r.json["error"]["code"] == "database_unavailable" and r.json["success"] is False
        r = client.post("/api/v1/chat/completions", json={"model": "paid", "messages": HI},
                        headers=auth("newcomer"))
        assert r.status_code == 503 and r.json["error"]["type"] == "service_unavailable"
    finally:
        outage.restore()
    assert not upstream.log
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 5, 5))
    r = client.post("/api/v1/chat/completions", json={"model": "paid", "messages": HI}, headers=auth())
    assert r.status_code == 200
    invariant("alice")


def test_an_answered_call_is_journalled_and_charged_once(make_app, outage, add_model, upstream, topup):
    app = make_app(DATABASE_URL=outage.url)
    client = app.test_client()
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    topup("alice", 10)

    def answer_then_lose_the_database(request):
        outage.cut()  # the provider answers; the database is gone when the call settles
        return Response(json.dumps(fake_openai.completion("ok", 10, 20)), content_type="application/json")

    upstream.expect_request("/v1/chat/completions").respond_with_handler(answer_then_lose_the_database)
    try:
        r = client.post("/api/v1/chat/completions", json={"model": "paid", "messages": HI}, headers=auth())
        assert r.status_code == 200 and r.json["usage"]["cost"] == 0.03
        ext = app.extensions["tollgate"]
        assert ext.journal.depth() == 1
    finally:
        outage.restore()
    assert not charges("alice") and account("alice").held > 0  # not yet applied
    with app.app_context():
        assert app.test_client().get("/readyz").json["checks"]["journal"] == 1
    keep_money(ext, 60)
    keep_money(ext, 60)  # a second replay finds nothing
    assert ext.journal.depth() == 0
    [charge] = charges("alice")
    assert charge.delta == -30_000 and charge.request_id == r.json["id"]
    assert account("alice").balance == 10_000_000 - 30_000 and holds() == 0
    # the same line applied again (a crash after applying, before removing the file): still once
    billing.apply_journalled({"op": "settle", "rid": charge.request_id, "args": {
        "account_id": account("alice").id, "request_id": charge.request_id, "model": "paid",
        "prompt_tokens": 10, "completion_tokens": 20, "charge": 30_000}})
    assert len(charges("alice")) == 1 and account("alice").balance == 10_000_000 - 30_000
    invariant("alice")


# --- secrets, bad input, tokens, readiness ------------------------------------------------------

def test_in_stream_error_does_not_echo_the_provider_key(make_app, live_factory, add_model, upstream, topup):
    secret = "sk-provider-secret-0123456789"
    app = make_app(PROVIDER_KEYS={"FAKE_API_KEY": secret})
    live = live_factory(app)
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              api_key_env="FAKE_API_KEY")
    topup("alice", 10)
    events = [fake_openai.chunk({"role": "assistant", "content": ""}), fake_openai.chunk({"content": "a"}),
              b'data: {"error": {"message": "Incorrect API key provided: ' + secret.encode() + b'"}}\n\n']
    upstream.expect_request("/v1/chat/completions").respond_with_handler(
        lambda request: Response(iter(events), mimetype="text/event-stream"))
    r = requests.post(f"{live.url}/api/v1/chat/completions", headers=auth(), timeout=10,
                      json={"model": "paid", "messages": HI, "stream": True})
    assert '"error"' in r.text and "[redacted]" in r.text and secret not in r.text


SURROGATE = "\ud800"
DEEP = {"a": None}
for _ in range(500):
    DEEP = {"a": DEEP}


@pytest.mark.parametrize("body", [
    {"model": SURROGATE, "messages": HI},
    {"messages": [{"role": "user", "content": SURROGATE}]},
    {"messages": HI, "user": SURROGATE},
    {"messages": HI, "stop": [SURROGATE]},
    {"messages": HI, "tools": [{"type": "function", "function": {"name": SURROGATE}}]},
    {"messages": [{"role": "user", "content": "hi", "name": SURROGATE}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "deep": DEEP}]}]},
    {"messages": HI, "response_format": {"type": "json_schema", "json_schema": DEEP}},
    {"messages": HI, "tools": [{"type": "function", "function": DEEP}]},
    {"messages": HI, "logit_bias": DEEP},
    {"messages": [{"role": {"x": 1}, "content": "hi"}]},
    {"messages": [{"role": ["user"], "content": "hi"}]},
], ids=["model", "content", "user", "stop", "tools", "name", "deep-content", "deep-response-format",
        "deep-tools", "deep-logit-bias", "role-object", "role-list"])
def test_bad_input_is_a_400_never_a_500(client, paid, body):
    r = client.post("/api/v1/chat/completions", data=json.dumps({"model": "paid", **body}),
                    content_type="application/json", headers=auth())
    assert r.status_code == 400, r.json
    assert r.json["error"]["type"] == "invalid_request_error" and r.json["success"] is False
    assert not paid.log and account("alice").held == 0 and len(ledger("alice")) == 1


@pytest.mark.parametrize("path, headers, where", [
    ("/api/v1/usage?from=%00", {}, "query"), ("/api/v1/usage?a=1&b%00=2", {}, "query"),
    ("/api/v1/usage", {"X-Note": "a\x00b"}, "header"), ("/api/v1/usage", {"Idempotency-Key": "\x00"}, "header"),
], ids=["query-value", "query-name", "header", "idempotency-key"])
def test_a_nul_in_the_query_or_a_header_is_a_400(client, path, headers, where):
    r = client.get(path, headers={**auth(), **headers})
    assert r.status_code == 400 and r.json["error"]["message"] == f"The request's {where} contains a NUL character"


def test_nul_bytes_and_long_notes_are_refused(client, admin_headers, topup):
    topup("carl", 1)
    bad_sub = {"Authorization": "Bearer " + token("ev\x00il")}
    assert client.get("/api/v1/account", headers=bad_sub).status_code == 401
    r = client.get("/api/admin/accounts/a%00b", headers=admin_headers)
    assert r.status_code == 400 and "NUL" in r.json["error"]["message"]  # refused before any view
    r = client.post("/api/admin/accounts/a%00b/credits", json={"amount": 1}, headers=admin_headers)
    assert r.status_code == 400
    for note in ("nul\x00note", "n" * 256):
        r = client.post("/api/admin/accounts/carl/credits", json={"amount": 1, "note": note},
                        headers=admin_headers)
        assert r.status_code == 400 and r.json["error"]["param"] == "note"
    assert account("carl").balance == 1_000_000 and len(ledger("carl")) == 1


@pytest.mark.parametrize("amount", ["1_000", "\u0665", " 5 ", "5 ", "+5", "1e3", "0x10"])
def test_amounts_are_plain_decimals(client, admin_headers, amount):
    r = client.post("/api/admin/accounts/dina/credits", json={"amount": amount}, headers=admin_headers)
    assert r.status_code == 400 and r.json["error"]["param"] == "amount"


def test_large_balances_are_rendered_exactly(client, admin_headers):
    for amount in ("1000000000000", "1000000000000", "1110.0001"):
        r = client.post("/api/admin/accounts/rich/credits", json={"amount": amount}, headers=admin_headers)
        assert r.status_code == 200
    assert b'"balance": 2000000001110.0001' in r.data or b'"balance":2000000001110.0001' in r.data
    small = client.post("/api/admin/accounts/rich2/credits", json={"amount": 9.5}, headers=admin_headers)
    assert small.json["balance"] == 9.5


def test_token_rules(make_app):
    client = make_app(JWT_MAX_LIFETIME_SECONDS=3600).test_client()
    no_exp = token("tom", expires_in=3600)
    import jwt as pyjwt

    claims = pyjwt.decode(no_exp, options={"verify_signature": False})
    claims.pop("exp")
    from tests.conftest import SECRET

    bare = pyjwt.encode(claims, SECRET, algorithm="HS256")
    refresh = token("tom", type="refresh")
    too_long = token("tom", expires_in=7200)
    for bad, words in ((bare, "expiry"), (refresh, "refresh"), (too_long, "longer")):
        r = client.get("/api/v1/account", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401 and words in r.json["error"]["message"]
    assert client.get("/api/v1/account", headers={"Authorization": f"Bearer {token('tom')}"}).status_code == 200
    lenient = make_app(JWT_ALLOW_NO_EXP=True).test_client()
    assert lenient.get("/api/v1/account", headers={"Authorization": f"Bearer {bare}"}).status_code == 200


def test_readyz_shows_upstream_urls_to_admins_only(make_app, add_model, admin_headers, topup):
    app = make_app(BREAKER_THRESHOLD=1, UPSTREAM_RETRIES=0)
    client = app.test_client()
    add_model(id=10, name="gone", api="openai", base_url="http://127.0.0.1:9/v1", upstream_model="secret-up")
    topup("alice", 1)
    client.post("/api/v1/chat/completions", json={"model": "gone", "messages": HI}, headers=auth())
    anonymous = client.get("/readyz").get_data(as_text=True)
    assert "127.0.0.1:9" not in anonymous and "secret-up" in anonymous
    assert "127.0.0.1:9" in client.get("/readyz", headers=admin_headers).get_data(as_text=True)


def test_database_lost_during_50_calls(make_app, live_factory, outage, add_model, upstream, topup):
    """The database stops while 50 calls run and starts again: every answered call is charged
    exactly once (journalled settles replayed), the others not at all, and no client saw a 500."""
    app = make_app(DATABASE_URL=outage.url, UPSTREAM_RETRIES=0)
    live = live_factory(app)
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    topup("alice", 100)
    lock, seen = threading.Lock(), {"upstream": 0, "refused": 0, "restored": False}

    def answer(request):
        with lock:  # other answers wait while the database is cut (no writer starves the cut)
            seen["upstream"] += 1
            if seen["upstream"] == 10:
                outage.cut()  # calls in flight now settle into the journal
        return Response(json.dumps(fake_openai.completion("ok", 10, 20)), content_type="application/json")

    upstream.expect_request("/v1/chat/completions").respond_with_handler(answer)

    def call(_):
        r = requests.post(f"{live.url}/api/v1/chat/completions", headers=auth(), timeout=30,
                          json={"model": "paid", "messages": HI})
        with lock:
            if r.status_code == 503:
                seen["refused"] += 1
            restore = seen["refused"] == 10 and not seen["restored"]
            seen["restored"] = seen["restored"] or restore
        if restore:
            outage.restore()
        return r

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(50)))
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 10, statuses
    assert all(r.json()["error"]["code"] == "database_unavailable" for r in answers if r.status_code == 503)
    ext = app.extensions["tollgate"]
    keep_money(ext, 60)
    answered = {r.json()["id"] for r in answers if r.status_code == 200}
    rows = charges("alice")
    assert {e.request_id for e in rows} == answered and len(rows) == len(answered)
    assert ext.journal.depth() == 0 and holds() == 0
    assert account("alice").balance == 100_000_000 - 30_000 * len(answered)
    invariant("alice")
