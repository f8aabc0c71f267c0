"""A caller's rate limits and caps (SPEC §10) with flask-limiter's keys and windows, and the tokens
per minute; service/limits/admission.py takes them."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

from limits import RateLimitItem, RateLimitItemPerMinute, parse_many
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from core.errors import RateLimited  # the class service.web.errors re-exports
from service.limits.slots import Cap

STORAGE_PREFIX = "LIMITS"  # limits' RedisStorage prefix: the keys flask-limiter uses for the same limits
# One window per limit shared by chat, Messages and Responses (SPEC §13): a door is a way to ask,
# not a second allowance. The scopes are the routes' flask-limiter endpoints, so windows survive
# upgrades.
CALL_SCOPE = "chat.completions"
EMBEDDINGS_SCOPE = "embeddings.create"


@dataclass(frozen=True)
class Rate:
    item: RateLimitItem
    ids: tuple  # flask-limiter's identifiers: key prefix, caller key, scope (the endpoint)

    @property
    def key(self) -> str:
        return self.item.key_for(*self.ids)


@lru_cache(maxsize=64)
def parsed(spec: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(spec))


def account_key(account: str) -> str:
    """An account's limit key: a hash tag, so one caller's keys share a Redis Cluster slot."""
    return f"{{acct:{account}}}"


@dataclass(frozen=True)
class Limits:
    """What one caller may take on one door (SPEC §10): the default rate limit (per account), a
    model's rpm (per account per model), its API key's rpm and the rpm of the keys that key was
    minted from (a console session's key: its calls count under theirs too, in the chat call's
    window), and the caps on calls in flight of the account and of each of those keys."""

    account: str  # the account's name
    keys: tuple = ()  # the API key and the keys it was minted from, nearest first (none: a JWT)
    default: str = "60/minute"  # RATE_LIMIT_DEFAULT
    prefix: str = "tollgate"  # RATELIMIT_KEY_PREFIX
    per_account: int = 0  # MAX_CONCURRENT_PER_ACCOUNT
    per_key: int = 0  # MAX_CONCURRENT_PER_KEY (a key's own max_concurrent first)
    scope: str = CALL_SCOPE

    def rates(self, model) -> list[Rate]:
        """The rate limits of a call on `model`, in flask-limiter's order: by window length."""
        caller = account_key(self.account)
        specs = [(self.default, caller, self.scope)]
        if model is not None and model.rpm:
            specs.append((f"{model.rpm}/minute", f"{caller}:model:{model.id}", self.scope))
        if self.keys and self.keys[0].rpm:
            specs.append((f"{self.keys[0].rpm}/minute", f"{caller}:key:{self.keys[0].id}", self.scope))
        specs += [(f"{parent.rpm}/minute", f"{caller}:key:{parent.id}", CALL_SCOPE)
                  for parent in self.keys[1:] if parent.rpm]
        found = [Rate(item, (self.prefix, key, scope)) for spec, key, scope in specs for item in parsed(spec)]
        return sorted(found, key=lambda rate: rate.item.GRANULARITY.seconds)

    def caps(self) -> list[Cap]:
        """The caps on calls in flight: the account's, and each key's of its lineage."""
        tag = account_key(self.account)  # one script takes them all: one Redis Cluster slot
        found = [Cap(tag, self.per_account, f"account {self.account}")]
        for each in self.keys:
            found.append(Cap(f"{tag}:key:{each.id}", each.max_concurrent or self.per_key,
                             f"API key {each.prefix}… (id {each.id})"))
        return found


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
