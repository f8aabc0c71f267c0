"""Low-balance alerts: the charge that crosses the threshold writes one alert with itself; a
signed webhook delivers it, retried from the outbox, across a restart."""
from __future__ import annotations

import hashlib
import hmac
import json
import signal

from pytest_httpserver import HTTPServer
from werkzeug import Response

from service.money import billing
from service.store.db import Account, AlertOutbox
from tests.conftest import SECRET, auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import invariant, wait_for
from tests.process import Gateway, free_port

HOOK_SECRET = "whsec-test-0123456789"


def _paid(make_app, add_model, upstream, topup, **conf):
    app = make_app(**conf)
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              max_output_tokens=1000)
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("x", 1000, 1000))
    topup("lea", 7)  # each call costs 2 credits (and holds a little more): 7 -> 5 -> 3 -> 1
    return app


def _call(client):
    r = client.post("/api/v1/chat/completions", headers=auth("lea"),
                    json={"model": "paid", "messages": [{"role": "user", "content": "x" * 1000}]})
    assert r.status_code == 200, r.json


def _verify(request) -> dict:
    body = request.get_data()
    expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Tollgate-Signature"], expected)
    return json.loads(body)


def test_the_crossing_charge_sends_one_signed_alert(make_app, add_model, upstream, topup):
    hook = HTTPServer(host="127.0.0.1", port=0)
    hook.start()
    try:
        hook.expect_request("/hook", method="POST").respond_with_data("ok")
        app = _paid(make_app, add_model, upstream, topup, ALERT_WEBHOOK_URL=hook.url_for("/hook"),
                    ALERT_WEBHOOK_SECRET=HOOK_SECRET, LOW_BALANCE_THRESHOLD="4", ALERT_POLL_SECONDS=0)
        gw = app.test_client()
        for _ in range(3):  # 5 (above), 3 (crossed 4), 1 (already below)
            _call(gw)
        deliverer = app.extensions["tollgate_alerts"]
        with app.app_context():
            assert deliverer.run_once() == 1 and deliverer.run_once() == 0
        assert len(hook.log) == 1
        sent = _verify(hook.log[0][0])
        assert sent["type"] == "low_balance" and sent["account"] == "lea"
        assert sent["balance"] == 3 and sent["threshold"] == 4
        topup("lea", 10)  # 11: above again; the next crossing alerts again
        for _ in range(4):  # 9, 7, 5, 3
            _call(gw)
        with app.app_context():
            assert deliverer.run_once() == 1
        assert len(hook.log) == 2
        rows = gw.get("/api/admin/alerts", headers=auth("root", True)).json["data"]
        assert [r["attempts"] for r in rows] == [1, 1] and all(r["delivered"] for r in rows)
        assert all(r["last_status"] == 200 for r in rows)
        invariant("lea")
    finally:
        hook.stop()


def test_an_accounts_own_threshold_wins_and_no_url_means_no_alerts(make_app, add_model, upstream, topup):
    app = _paid(make_app, add_model, upstream, topup, ALERT_WEBHOOK_URL="http://127.0.0.1:9/hook",
                LOW_BALANCE_THRESHOLD="0", ALERT_POLL_SECONDS=0)
    gw = app.test_client()
    r = gw.patch("/api/admin/accounts/lea", headers=auth("root", True), json={"low_balance_threshold": 6})
    assert r.status_code == 200 and r.json["low_balance_threshold"] == 6
    _call(gw)  # 7 -> 5: crossed the account's 6
    assert AlertOutbox.select().count() == 1
    bad = gw.patch("/api/admin/accounts/lea", headers=auth("root", True), json={"low_balance_threshold": -1})
    assert bad.status_code == 400


def test_without_a_webhook_url_no_alert_is_written(make_app, add_model, upstream, topup):
    app = _paid(make_app, add_model, upstream, topup, LOW_BALANCE_THRESHOLD="6")
    _call(app.test_client())
    assert AlertOutbox.select().count() == 0


def test_a_failed_delivery_backs_off_and_is_recorded(make_app, add_model, upstream, topup):
    port = free_port()  # nothing listens there
    app = _paid(make_app, add_model, upstream, topup, ALERT_WEBHOOK_URL=f"http://127.0.0.1:{port}/hook",
                LOW_BALANCE_THRESHOLD="6", ALERT_POLL_SECONDS=0)
    _call(app.test_client())
    with app.app_context():
        assert app.extensions["tollgate_alerts"].run_once() == 1
        assert app.extensions["tollgate_alerts"].run_once() == 0  # not due again yet
    row = AlertOutbox.get()
    assert row.attempts == 1 and row.delivered_at is None and row.last_error == "ConnectionError"
    assert (row.next_attempt - row.created).total_seconds() >= 2
    assert str(port) not in (row.last_error or "")


def test_delivery_survives_a_restart_between_the_crossing_and_the_post(make_app, db_url, tmp_path, add_model,
                                                                        upstream, topup):
    """The gateway that charged dies (kill -9) before it could deliver; another process delivers."""
    make_app()
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1",
              max_output_tokens=1000)
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("x", 1000, 1000))
    topup("lea", 7)
    port = free_port()
    env = {"DATABASE_URL": db_url, "JWT_SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path), "WAITRESS_THREADS": "8",
           "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook", "ALERT_WEBHOOK_SECRET": HOOK_SECRET,
           "LOW_BALANCE_THRESHOLD": "6", "ALERT_POLL_SECONDS": "0.2"}
    first = Gateway(env, tmp_path / "first.log")
    try:
        import requests

        r = requests.post(f"{first.url}/v1/chat/completions", timeout=20,
                          headers={"Authorization": f"Bearer {token('lea')}"},
                          json={"model": "paid", "messages": [{"role": "user", "content": "x" * 1000}]})
        assert r.status_code == 200
        wait_for(lambda: AlertOutbox.get().attempts >= 1, timeout=10)  # tried; nobody listened
        first.signal(signal.SIGKILL)
        first.proc.wait(5)
    finally:
        first.stop()
    assert AlertOutbox.get().delivered_at is None
    hook = HTTPServer(host="127.0.0.1", port=port)
    hook.expect_request("/hook", method="POST").respond_with_handler(lambda request: Response("ok"))
    hook.start()
    second = Gateway(env, tmp_path / "second.log")
    try:
        wait_for(lambda: AlertOutbox.get().delivered_at is not None, timeout=20)
    finally:
        second.stop()
        hook.stop()
    assert len(hook.log) == 1 and _verify(hook.log[0][0])["balance"] == 5
    assert Account.get(Account.name == "lea").balance == 5_000_000
    assert billing.to_credits(AlertOutbox.get().threshold) == 6
