"""A process killed between hold and settle leaves a hold that the reaper releases."""
from __future__ import annotations

import datetime as dt
import signal
import threading
import time

import requests
from werkzeug import Response

from service.money import billing
from service.store.db import utcnow
from tests.conftest import SECRET, token
from tests.helpers import account, charges, holds, invariant, wait_for
from tests.process import Gateway


def test_killed_process_hold_is_reaped(make_app, db_url, tmp_path, upstream, add_model, topup):
    release = _slow_model(make_app, add_model, upstream, topup, credits=10)
    gw = Gateway({"DATABASE_URL": db_url, "JWT_SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path),
                  "HOLD_TTL_SECONDS": "60"}, tmp_path / "gw.log")
    try:
        caller = threading.Thread(target=lambda: _call(gw.url), daemon=True)
        caller.start()
        wait_for(lambda: holds() == 1, timeout=10)
        gw.signal(signal.SIGKILL)
        gw.proc.wait(5)
    finally:
        release.set()
        gw.stop()
    assert account("kim").held > 0  # locked by the dead process...
    assert billing.reap(utcnow() + dt.timedelta(seconds=61)) == 1
    assert account("kim").held == 0 and holds() == 0 and account("kim").balance == 10_000_000
    invariant("kim")


def _slow_model(make_app, add_model, upstream, topup, credits: int) -> threading.Event:
    """Model `slow`, whose answers wait until the returned event is set; kim gets `credits`."""
    make_app()
    add_model(id=10, name="slow", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    topup("kim", credits)
    release = threading.Event()

    def hang(request):
        release.wait(20)
        return Response("{}", content_type="application/json")

    upstream.expect_request("/v1/chat/completions").respond_with_handler(hang)
    return release


def _call(url: str, stream: bool = False) -> None:
    try:
        requests.post(f"{url}/api/v1/chat/completions", timeout=20,
                      headers={"Authorization": f"Bearer {token('kim')}"},
                      json={"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
    except requests.RequestException:
        pass  # the gateway was killed mid-call


def test_kill_during_20_streams_frees_every_hold_after_restart(make_app, db_url, tmp_path, upstream,
                                                               add_model, topup):
    """kill -9 with 20 streams open: a restarted gateway (or any other) releases their holds within
    HOLD_TTL_SECONDS + HOLD_REAP_INTERVAL_SECONDS (here 3 + 1 s; by default 60 + 20 s, under the
    two minutes promised), and nothing is charged for the unanswered calls."""
    release = _slow_model(make_app, add_model, upstream, topup, credits=100)
    env = {"DATABASE_URL": db_url, "JWT_SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path),
           "HOLD_TTL_SECONDS": "3", "HOLD_REAP_INTERVAL_SECONDS": "1", "WAITRESS_THREADS": "32"}
    gw = Gateway(env, tmp_path / "gw.log")
    try:
        for _ in range(20):
            threading.Thread(target=lambda: _call(gw.url, stream=True), daemon=True).start()
        wait_for(lambda: holds() == 20, timeout=20)
        gw.signal(signal.SIGKILL)
        gw.proc.wait(5)
        killed_at = time.monotonic()
        assert account("kim").held > 0
        again = Gateway(env, tmp_path / "gw2.log")  # the restarted process
        try:
            wait_for(lambda: holds() == 0, timeout=30)
        finally:
            again.stop()
    finally:
        release.set()
        gw.stop()
    assert time.monotonic() - killed_at < 3 + 1 + 5  # TTL + one reap interval (+ slack for start-up)
    acct = account("kim")
    assert acct.held == 0 and acct.balance == 100_000_000 and not charges("kim")
    invariant("kim")
