"""Low-balance alerts: webhook deliveries from the outbox that settles write (SPEC §9).

The charge that takes an account's balance below its threshold writes one `alert_outbox` row
in the settle's own transaction, so an alert exists exactly when its charge does, and a
restart loses none. A thread in every process delivers due rows: one POST of a JSON body to
ALERT_WEBHOOK_URL, signed with HMAC-SHA256 over the body (`X-Tollgate-Signature:
sha256=<hex>`, key ALERT_WEBHOOK_SECRET). A failure is retried with exponential backoff (2 s
doubling to an hour, at most ALERT_MAX_ATTEMPTS tries); the row records every outcome. A
process claims a row before posting (its `next_attempt` moves a minute on), so two processes do
not post the same alert at once; a receiver should still de-duplicate by the body's `id`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import threading

import requests

from service.money import billing
from service.store.db import Account, AlertOutbox, db, epoch, utcnow

log = logging.getLogger("tollgate")
CLAIM = dt.timedelta(seconds=60)  # how long one process has to post a claimed alert
BATCH = 50


def threshold_micro(conf: dict) -> int:
    """The default threshold settles pass to billing: -1 (alerts off) without a webhook URL."""
    if not conf.get("ALERT_WEBHOOK_URL"):
        return -1
    return billing.to_micro(conf.get("LOW_BALANCE_THRESHOLD") or "0", "LOW_BALANCE_THRESHOLD")


def body_of(row: AlertOutbox, account: str | None) -> bytes:
    """The webhook body: the same bytes on every attempt (receivers de-duplicate by `id`). An
    alert that is no account's (deployment_disabled) says what its `detail` holds."""
    if row.detail is not None:
        return json.dumps({"id": f"alert_{row.id}", "type": row.kind, **row.detail,
                           "request_id": row.request_id, "created": epoch(row.created)},
                          separators=(",", ":"), sort_keys=True).encode()
    return json.dumps({"id": f"alert_{row.id}", "type": row.kind, "account": account,
                       "balance": billing.to_credits(row.balance), "threshold": billing.to_credits(row.threshold),
                       "request_id": row.request_id, "created": epoch(row.created)},
                      separators=(",", ":"), sort_keys=True).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff(attempts: int) -> dt.timedelta:
    return dt.timedelta(seconds=min(2 ** attempts, 3600))


class Deliverer:
    """Posts due alerts; `run_once` is one pass, `start` a daemon thread polling every `poll` s."""

    def __init__(self, conf: dict, counter=None):
        self.url = conf.get("ALERT_WEBHOOK_URL")
        self.secret = conf.get("ALERT_WEBHOOK_SECRET") or ""
        self.poll = float(conf.get("ALERT_POLL_SECONDS", 5))
        self.max_attempts = int(conf.get("ALERT_MAX_ATTEMPTS", 20))
        self.counter = counter
        self.session = requests.Session()
        self.stop = threading.Event()

    def _claim(self, row: AlertOutbox, now: dt.datetime) -> bool:
        return bool(AlertOutbox.update(next_attempt=now + CLAIM)
                    .where((AlertOutbox.id == row.id) & (AlertOutbox.next_attempt == row.next_attempt)
                           & AlertOutbox.delivered_at.is_null()).execute())

    def _post(self, row: AlertOutbox) -> None:
        account = Account.get_by_id(row.account_id).name if row.account_id is not None else None
        body = body_of(row, account)
        status, error = None, None
        try:
            answer = self.session.post(self.url, data=body, timeout=10, allow_redirects=False, headers={
                "Content-Type": "application/json", "User-Agent": "tollgate-alerts",
                "X-Tollgate-Event": row.kind, "X-Tollgate-Delivery": f"alert_{row.id}",
                "X-Tollgate-Signature": signature(self.secret, body)})
            status = answer.status_code
            answer.close()
        except requests.RequestException as exc:
            error = type(exc).__name__  # never the URL: it may carry a token
        now, attempts = utcnow(), row.attempts + 1
        ok = status is not None and 200 <= status < 300
        (AlertOutbox.update(attempts=attempts, last_status=status, last_error=error,
                            delivered_at=now if ok else None, next_attempt=now + backoff(attempts))
         .where(AlertOutbox.id == row.id).execute())
        if self.counter is not None:
            self.counter.labels("delivered" if ok else "failed").inc()
        if not ok:
            log.warning("%s alert alert_%d for %s: delivery %d failed (%s)", row.kind, row.id, account,
                        attempts, status or error)

    def run_once(self) -> int:
        """Deliver every due alert this process can claim; how many it tried."""
        if not self.url:
            return 0
        now = utcnow()
        due = list(AlertOutbox.select().where(AlertOutbox.delivered_at.is_null()
                                              & (AlertOutbox.next_attempt <= now)
                                              & (AlertOutbox.attempts < self.max_attempts))
                   .order_by(AlertOutbox.id).limit(BATCH))
        tried = 0
        for row in due:
            if self._claim(row, now):
                self._post(row)
                tried += 1
        return tried

    def start(self) -> None:
        if not self.url or self.poll <= 0:
            return

        def loop():
            while not self.stop.wait(self.poll):
                try:
                    with db.connection_context():
                        self.run_once()
                except billing.DB_ERRORS:
                    billing.reconnect()
                except Exception:  # a failed pass is retried on the next one
                    log.exception("low-balance alert delivery failed")

        threading.Thread(target=loop, name="alerts", daemon=True).start()
