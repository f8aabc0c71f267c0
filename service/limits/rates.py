"""Rate-limit keys and the dynamic limits of SPEC §10 (flask-limiter does the counting)."""
from __future__ import annotations

import math
import time

from flask import current_app, g, request
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from core.errors import RateLimited  # the class service.web.errors re-exports

STORAGE_PREFIX = "LIMITS"  # limits' RedisStorage prefix: the keys flask-limiter uses for the same limits


def limit_key() -> str:
    """The caller: its account when authenticated, else its client address."""
    account = g.get("account")
    if account is not None:
        return f"{{acct:{account.name}}}"  # a hash tag: one caller's keys share a Redis Cluster slot
    return f"{{ip:{request.remote_addr or 'unknown'}}}"


def default_limit() -> str:
    return current_app.config["RATE_LIMIT_DEFAULT"]


def _per_row(attr: str, label: str):
    """Key, limit and exemption functions for an `rpm` set on the request's model or API key."""

    def row():
        return g.get(attr)

    def key() -> str:
        found = row()
        return f"{limit_key()}:{label}:{found.id if found else '-'}"

    def limit() -> str:
        found = row()
        return f"{found.rpm}/minute" if found is not None and found.rpm else "1000000/minute"

    def exempt() -> bool:
        found = row()
        return found is None or not found.rpm

    return key, limit, exempt


# per account per model (the catalogue row's rpm), and per API key (the key's rpm)
model_key, model_limit, no_model_limit = _per_row("model", "model")
key_key, key_limit, no_key_limit = _per_row("api_key", "key")


class TokenBudget:
    """Tokens per minute per account (`TOKEN_LIMIT_PER_MINUTE`), counted with real usage after
    each call in fixed one-minute windows: in Redis while it answers, else in process."""

    def __init__(self, per_minute: int, redis_url: str | None, cache):
        self.item = RateLimitItemPerMinute(per_minute) if per_minute else None
        self.cache = cache
        self.local = FixedWindowRateLimiter(MemoryStorage())
        self.remote = (FixedWindowRateLimiter(storage_from_string(
            redis_url, socket_timeout=0.25, socket_connect_timeout=0.25)) if redis_url else None)

    def _run(self, fn):
        if self.remote is not None and self.cache.up:
            try:
                return fn(self.remote)
            except Exception as exc:  # any storage failure: count locally instead
                self.cache.failed(exc)
        return fn(self.local)

    @staticmethod
    def _counter(account: str) -> str:
        return f"tpm:{{acct:{account}}}"  # in the slot of the account's other keys (service/limits/admission.py)

    def key(self, account: str) -> str:
        """The counter's Redis key (limits' fixed-window key for this account, with its prefix)."""
        return f"{STORAGE_PREFIX}:{self.item.key_for(self._counter(account))}"

    def refusal(self, wait: int) -> RateLimited:
        return RateLimited(f"Token limit exceeded: {self.item.amount} tokens per minute",
                           headers={"Retry-After": str(wait)})

    def local_wait(self, account: str) -> int:
        """0 while this minute's tokens last (counted in process), else the seconds to wait."""
        if self.item is None or self.local.test(self.item, self._counter(account)):
            return 0
        reset = self.local.get_window_stats(self.item, self._counter(account)).reset_time
        return max(1, math.ceil(reset - time.time()))

    def spend(self, account: str, tokens: int, lease=None) -> None:
        """Count a call's tokens; with the call's Redis lease still out, in the same round trip
        that gives its slots back (service/limits/slots.py)."""
        if self.item is None or tokens <= 0:
            return

        def hit(limiter):
            return limiter.hit(self.item, self._counter(account), cost=tokens)

        if lease is not None and lease.remote and not lease.returned:
            lease.then.append((lambda pipe: self._send(pipe, account, tokens), lambda: hit(self.local)))
            return
        self._run(hit)

    def _send(self, pipe, account: str, tokens: int) -> None:
        """limits' fixed-window hit as plain commands (its script in a pipeline would cost a SCRIPT
        EXISTS round trip): the counter, made with the window's expiry when it is new."""
        key = self.key(account)
        pipe.set(key, 0, ex=self.item.get_expiry(), nx=True)
        pipe.incrby(key, tokens)
