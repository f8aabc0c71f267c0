"""A call's admission in one Redis round trip (SPEC §10): its rate limits, the account's tokens
this minute and its caps on calls in flight, all taken by one script.

The rate limits are flask-limiter's moving windows, with its keys and its order (sorted by
window length, the first breach stops the rest; entries taken before a breach stay taken): the
script runs limits' own acquire script for each, and reads a window as the entries newer than it
after dropping those that aged out (limits keeps them until the list holds the limit's amount: a
window searched entry by entry cost ~17 LINDEX calls in a list of 160 000). The tokens-per-minute
check reads TokenBudget's fixed window; the caps take leases as service/limits/slots.py describes. While Redis is
down (or without it) the same checks run in process.
"""
from __future__ import annotations

import math
import time

from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter

from core.errors import RateLimited
from service.limits.rates import STORAGE_PREFIX, Rate
from service.limits.slots import TAKE_FUNCTION, TAKE_SLOTS, Candidates, Cap, ConcurrencyLimited, Lease


def _on_key(script: bytes) -> str:
    """One of limits' scripts as a Lua function of its key (the scripts read KEYS[1])."""
    return script.decode().replace("KEYS[1]", "key")


# KEYS: the cached answer to read (with peek 1), one list per rate limit, the token counter when
# there is a token limit, one sorted set per cap, then four keys per candidate deployment
# (TAKE_DEPLOYMENT's). ARGV: now, rate limits, 1|0 (token limit), 0|1|2 (peek; 2: peek, and an
# answer found waives the caps' slots), each rate limit's
# amount and window seconds, the token limit, then the request id, the lease seconds, the number
# of caps and each cap's limit, then (with candidate deployments) TAKE_DEPLOYMENT's ARGV after
# its request id.
# Returns {verdict, index, oldest, count, ttl[, deployment, answer]}: verdict 0 admitted (with
# the 1-based candidate deployment taken, 0: none could take it, and the cached answer read, or
# false), 1 rate limit `index` breached, 2 tokens spent (the counter ends in `ttl` s), 3 cap
# `index` full; oldest/count: the window of the limit the headers show: the breached one, else
# the one with the fewest calls left (`index` for 0 and 2, a sixth element for 3). A window is
# read (and its aged entries dropped) only where it may be that one: the first limit's, and
# another's whose length in entries leaves fewer than the fewest so far. A refused call takes
# nothing past the limit that refused it: no slot, no deployment, no answer. A call whose answer
# was read takes no deployment, and with peek 2 no slot either (its caps are checked).
# TAKE: the caps' slots of a call whose answer read proved no answer (Admission.take_waived).
# KEYS: one sorted set per cap; ARGV: the request id, the lease seconds, each cap's limit.
ADMIT = f"""
local function acquire(key, ARGV)
{_on_key(RedisStorage.SCRIPT_ACQUIRE_MOVING_WINDOW)}
end
local function window(key, ARGV)
{_on_key(RedisStorage.SCRIPT_MOVING_WINDOW)}
end
-- the window's oldest entry and count: entries older than the window leave the list from its tail
-- first (the few that aged since the last call one by one, more by limits' search and one LTRIM),
-- so the list is the window and its length the count, read without a search on most calls
local function current(key, since, len)
  for _ = 1, 4 do
    local last = redis.call('lindex', key, -1)
    if not last then return false, 0 end
    if tonumber(last) >= since then return last, len end
    redis.call('rpop', key)
    len = len - 1
  end
  local seen = window(key, {{since, len}})
  if not seen then return false, 0 end
  redis.call('ltrim', key, 0, seen[2] - 1)
  return seen[1], seen[2]
end
{TAKE_SLOTS}
{TAKE_FUNCTION}local now, rates, tokens, peek = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local waive = peek == 2
if waive then peek = 1 end
local at, oldest, count, shown, left = 5, false, 0, 0, math.huge
for i = 1, rates do
  local amount, expiry = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  at = at + 2
  local taken = acquire(KEYS[peek + i], {{now, amount, expiry, 1}})
  local len = redis.call('llen', KEYS[peek + i])
  if i == 1 or not taken or amount - len < left then
    local o, c = current(KEYS[peek + i], now - expiry, math.min(amount, len))
    if i == 1 or not taken or amount - c < left then oldest, count, shown, left = o, c, i, amount - c end
  end
  if not taken then return {{1, i, oldest, count, 0}} end
end
if tokens == 1 then
  local key = KEYS[peek + rates + 1]
  if tonumber(redis.call('get', key) or '0') >= tonumber(ARGV[at]) then
    return {{2, shown, oldest, count, redis.call('ttl', key)}}
  end
  at = at + 1
end
local rid, lease, ncaps = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
local caps, limits = {{}}, {{}}
for i = 1, ncaps do
  caps[i] = KEYS[peek + rates + tokens + i]
  limits[i] = ARGV[at + 2 + i]
end
-- the cached answer of the call (service/pipeline/answer_cache.py), read in the same round trip:
-- a free plain hit (waive) ends as it starts, so it is held to its caps but takes no slot under
-- them; no hit takes a deployment
local answer = peek == 1 and redis.call('GET', KEYS[1])
local full = take_slots(caps, rid, lease, limits, waive and answer)
if full > 0 then return {{3, full, oldest, count, 0, shown}} end
local first = peek + rates + tokens + ncaps + 1
if #KEYS < first or answer then return {{0, shown, oldest, count, 0, 0, answer}} end
-- the call's deployment, by the deployment's own rules, now that nothing refused the call (its
-- keys from `first`, its args after the caps' limits, read in place)
return {{0, shown, oldest, count, 0, take_deployment(KEYS, first - 1, ARGV, at + 2 + ncaps, rid)[1], answer}}
"""
TAKE = f"""{TAKE_SLOTS}
return take_slots(KEYS, ARGV[1], tonumber(ARGV[2]), {{unpack(ARGV, 3)}})
"""


class Admission:
    """Admit a call, or refuse it with 429 (rate_limit_exceeded or concurrency_limit_exceeded)."""

    def __init__(self, cache, slots, budget):
        self.cache, self.slots, self.budget = cache, slots, budget
        self.local = MovingWindowRateLimiter(MemoryStorage())
        self._script = cache.client.register_script(ADMIT) if cache.client is not None else None
        self._take = cache.client.register_script(TAKE) if cache.client is not None else None

    def admit(self, rid: str, rates: list[Rate], account: str, caps: list[Cap],
              headers: dict | None = None, deployments: Candidates | None = None,
              peek: str | None = None, waive: bool = False) -> Lease | None:
        """Take an entry under each rate limit, check the account's tokens this minute, take a slot
        under each cap and, with candidate `deployments` (a lone Redis only: their keys lie in
        another Cluster slot), the first of them that can take the call (lease.deployment, 0:
        none could, or Redis did not answer); the rate-limit headers, which every answer carries
        (a refusal too), go into `headers`. `peek` (a lone Redis only): a key read in the same
        round trip once the call is admitted (lease.peeked: (its value or None,); None when the
        script did not run), the call's cached answer; with `waive`, an answer found takes no slot
        under the caps (they are checked): a free plain hit, which ends as it starts."""
        lease = self.slots.lease(rid, caps)
        if not rates and lease is None and self.budget.item is None:
            return None  # nothing to take: no round trip
        verdict = None
        if self._script is not None:
            # a call admitted by the script holds a remote lease even without caps: what ends
            # with the call (its tokens, its deployment) rides on that lease's give-back
            remote = lease if lease is not None else Lease(rid, [])
            verdict = self._remote(rates, account, remote, deployments, peek, waive)
            if verdict is not None:
                lease = remote
        if verdict is None:
            verdict = self._local(rates, account, lease)
        kind, index, oldest, count, ttl = verdict[:5]
        at = (verdict[5] if len(verdict) > 5 else 1) if kind == 3 else index  # the limit shown (1-based)
        shown = rates[int(at or 1) - 1] if rates else None
        reset = None
        if shown is not None:
            expiry = shown.item.get_expiry()
            reset = int((float(oldest) if count else time.time()) + expiry + 1)
            if headers is not None:
                headers.update({"X-RateLimit-Limit": str(shown.item.amount),
                                "X-RateLimit-Remaining": str(max(0, shown.item.amount - int(count))),
                                "X-RateLimit-Reset": str(reset)})
        if kind == 1:
            raise RateLimited(f"Rate limit exceeded: {shown.item}",
                              headers={"Retry-After": str(max(1, int(reset - time.time())))})
        if kind == 2:
            raise self.budget.refusal(max(1, math.ceil(ttl)))
        if kind == 3:
            raise _full(lease.caps[index - 1])
        if len(verdict) > 5:
            lease.deployment = int(verdict[5])
        if peek is not None and len(verdict) > 6:
            lease.peeked = (verdict[6] or None,)
            if waive and verdict[6] is not None:  # the script took no slot: nothing to give back
                lease.waived, lease.keys = lease.keys, []
        self.slots.opened(lease)
        return lease

    def take_waived(self, lease: Lease | None) -> None:
        """The slots of a call admitted with its cached answer that proved no answer (a miss
        after all, service/pipeline/call.py), taken now, or 429 when a cap filled meanwhile;
        Redis failing, the call goes on without them (as a lease that ends on its own)."""
        if lease is None or not lease.waived:
            return
        keys, lease.waived = lease.waived, []
        limits = [cap.limit for cap in lease.caps]
        full = self.cache.call(lambda r: self._take(keys=keys, args=[lease.rid, self.slots.lease_seconds, *limits],
                                                     client=r))
        if full:
            raise _full(lease.caps[int(full) - 1])
        lease.keys = keys  # taken (or, Redis failing, perhaps taken): given back and renewed as any

    def _remote(self, rates: list[Rate], account: str, lease: Lease, deployments: Candidates | None = None,
                peek: str | None = None, waive: bool = False):
        """The script's verdict, or None while Redis is down (the caller counts in process)."""
        tokens = self.budget.item is not None
        keys = [] if peek is None else [peek]
        keys += [f"{STORAGE_PREFIX}:{rate.key}" for rate in rates]
        args = [time.time(), len(rates), int(tokens), 0 if peek is None else 2 if waive else 1]
        for rate in rates:
            args += [rate.item.amount, rate.item.get_expiry()]
        if tokens:
            keys.append(self.budget.key(account))
            args.append(self.budget.item.amount)
        keys += lease.keys
        args += [lease.rid, self.slots.lease_seconds, len(lease.caps), *[cap.limit for cap in lease.caps]]
        if deployments is not None:
            keys += deployments.keys
            args += deployments.tail()
        verdict = self.cache.call(lambda r: self._script(keys=keys, args=args, client=r))
        if verdict is not None:
            lease.remote = verdict[0] == 0
        return verdict

    def _local(self, rates: list[Rate], account: str, lease: Lease | None):
        """The same verdict from this process's own counts."""
        shown, oldest, count, left = 0, False, 0, math.inf
        for i, rate in enumerate(rates, 1):
            taken = self.local.hit(rate.item, *rate.ids)
            o, c = self.local.storage.get_moving_window(rate.key, rate.item.amount, rate.item.get_expiry())
            if i == 1 or not taken or rate.item.amount - c < left:
                shown, oldest, count, left = i, o, c, rate.item.amount - c
            if not taken:
                return 1, i, oldest, count, 0
        wait = self.budget.local_wait(account)
        if wait:
            return 2, shown, oldest, count, wait
        full = self.slots.take_local(lease) if lease is not None else 0
        return (3, full, oldest, count, 0, shown) if full else (0, shown, oldest, count, 0)


def _full(cap: Cap) -> ConcurrencyLimited:
    return ConcurrencyLimited(f"Too many calls in flight for {cap.label}: at most {cap.limit} at once; "
                              "retry when one finishes", headers={"Retry-After": "1"})
