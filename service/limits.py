"""Rate-limit keys and the dynamic limits of SPEC §10 (flask-limiter does the counting)."""
from __future__ import annotations

import math
import time

from flask import current_app, g, request
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from service.errors import RateLimited


def limit_key() -> str:
    """The caller: its account when authenticated, else its client address."""
    account = g.get("account")
    if account is not None:
        return f"acct:{account.name}"
    return f"ip:{request.remote_addr or 'unknown'}"


def default_limit() -> str:
    return current_app.config["RATE_LIMIT_DEFAULT"]


def model_key() -> str:
    model = g.get("model")
    return f"{limit_key()}:model:{model.id if model else '-'}"


def model_limit() -> str:
    model = g.get("model")
    return f"{model.rpm}/minute" if model is not None and model.rpm else "1000000/minute"


def no_model_limit() -> bool:
    model = g.get("model")
    return model is None or not model.rpm


def key_key() -> str:
    key = g.get("api_key")
    return f"key:{key.id if key else '-'}"


def key_limit() -> str:
    key = g.get("api_key")
    return f"{key.rpm}/minute" if key is not None and key.rpm else "1000000/minute"


def no_key_limit() -> bool:
    key = g.get("api_key")
    return key is None or not key.rpm


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

    def check(self, account: str) -> None:
        """429 once this minute's tokens are spent."""
        if self.item is None:
            return
        key = f"tpm:{account}"
        if self._run(lambda lim: lim.test(self.item, key)):
            return
        reset = self._run(lambda lim: lim.get_window_stats(self.item, key)).reset_time
        wait = max(1, math.ceil(reset - time.time()))
        raise RateLimited(f"Token limit exceeded: {self.item.amount} tokens per minute",
                          headers={"Retry-After": str(wait)})

    def spend(self, account: str, tokens: int) -> None:
        if self.item is not None and tokens > 0:
            self._run(lambda lim: lim.hit(self.item, f"tpm:{account}", cost=tokens))
