"""A process killed between hold and settle leaves a hold that the reaper releases."""
from __future__ import annotations

import datetime as dt
import signal
import threading

import requests
from werkzeug import Response

from service import billing
from service.db import utcnow
from tests.conftest import SECRET, token
from tests.helpers import account, holds, invariant
from tests.process import Gateway
from tests.test_stream import wait_for


def test_killed_process_hold_is_reaped(make_app, db_url, tmp_path, upstream, add_model, topup):
    make_app()
    add_model(id=10, name="slow", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    topup("kim", 10)
    release = threading.Event()

    def hang(request):
        release.wait(10)
        return Response("{}", content_type="application/json")

    upstream.expect_request("/v1/chat/completions").respond_with_handler(hang)
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


def _call(url: str) -> None:
    try:
        requests.post(f"{url}/api/v1/chat/completions", timeout=10,
                      headers={"Authorization": f"Bearer {token('kim')}"},
                      json={"model": "slow", "messages": [{"role": "user", "content": "hi"}]})
    except requests.RequestException:
        pass  # the gateway was killed mid-call
