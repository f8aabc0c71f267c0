"""Caps on calls in flight per account and per API key (SPEC §10), fair under long calls.

A call takes one slot under each of its caps before it holds credits, and gives them back on
every exit path. With Redis the slots are leases in one sorted set per cap (member: the
request id, score: when the lease ends, in Redis's own clock), taken for all caps at once by
one script, so they are counted across processes and hosts; the process renews the leases of
its calls in flight on every maintenance tick, so a crashed process's slots come free when
their lease ends. Without Redis (or while it is down) each process counts its own.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

from redis.crc import key_slot

from core.errors import RateLimited

# Takes a slot under every cap or none: 0, else the 1-based index of the cap that is full; with
# `only_check`, checks that none is full and takes nothing (a cached answer's call, which ends as
# it starts). (service/limits/admission.py runs it in the same script as the call's rate limits.)
TAKE_SLOTS = """
local function take_slots(keys, rid, lease, limits, only_check)
  if #keys == 0 then return 0 end
  local now = redis.call('TIME')
  local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
  for i, key in ipairs(keys) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', t)
    if redis.call('ZCARD', key) >= tonumber(limits[i]) then return i end
  end
  if only_check then return 0 end
  for _, key in ipairs(keys) do
    redis.call('ZADD', key, t + lease, rid)
    redis.call('EXPIRE', key, math.ceil(lease) + 60)
  end
  return 0
end
"""
# A deployment of a model (service/pipeline/deployment_health.py), taken for a call by the
# deployment's own script, or by the admission script (service/limits/admission.py) on a lone Redis
# (TAKE_FUNCTION reads its keys and args in place: K from ko + 1, A from ao + 1, the request id apart).
# KEYS: per candidate its calls in flight (zset), requests this minute (zset), tokens per minute
# (hash), cool-down (string). ARGV: request id, lease seconds, mode, a uniform number in [0, 1),
# then per candidate max_concurrent, rpm, tpm (0: no cap), priority, weight; the candidates by
# priority. Mode 'first': the first that can take the call; 'least': the one of the best
# priority with the fewest calls in flight; 'weighted': one of those of the best priority that
# can, by weight (drawn with the number: what the first of a weighted random order that can
# would be, without the order made per call). Returns {index (0: none), wait ms, capped}.
TAKE_FUNCTION = """
local function take_deployment(K, ko, A, ao, rid)
  local now = redis.call('TIME')
  local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
  local minute = tostring(math.floor(t / 60))
  local lease, mode = tonumber(A[ao + 1]), A[ao + 2]
  local best, fewest, level, wait, capped = 0, 0, nil, -1, 0
  local able, total = {}, 0
  local n = (#K - ko) / 4
  -- whether any candidate is cooling down, in one command (the usual answer: none)
  local cools = {}
  for i = 1, n do cools[i] = K[ko + 4*i] end
  local anycool = redis.call('EXISTS', unpack(cools)) > 0
  for i = 1, n do
    local live, rpm, tpm, cool = K[ko + 4*i-3], K[ko + 4*i-2], K[ko + 4*i-1], K[ko + 4*i]
    local conc, rl, tl, prio = tonumber(A[ao + 5*i-1]), tonumber(A[ao + 5*i]), tonumber(A[ao + 5*i+1]), tonumber(A[ao + 5*i+2])
    if level ~= nil and prio > level then break end
    local ok, later = true, nil
    if anycool then
      local cooling = redis.call('PTTL', cool)
      if cooling > 0 then ok, later = false, cooling end
    end
    local inflight = 0
    if conc > 0 or mode == 'least' then  -- counted only where it decides
      redis.call('ZREMRANGEBYSCORE', live, '-inf', t)
      inflight = redis.call('ZCARD', live)
    end
    if ok and conc > 0 and inflight >= conc then ok, later, capped = false, 1000, 1 end
    if ok and rl > 0 then
      redis.call('ZREMRANGEBYSCORE', rpm, '-inf', t - 60)
      if redis.call('ZCARD', rpm) >= rl then
        local oldest = redis.call('ZRANGE', rpm, 0, 0, 'WITHSCORES')
        ok, later, capped = false, math.ceil((tonumber(oldest[2]) + 60 - t) * 1000), 1
      end
    end
    if ok and tl > 0 and tonumber(redis.call('HGET', tpm, minute) or '0') >= tl then
      ok, later, capped = false, math.ceil(((math.floor(t / 60) + 1) * 60 - t) * 1000), 1
    end
    if ok then
      if mode == 'first' then best = i break end
      if mode == 'least' then
        if best == 0 or inflight < fewest then best, fewest, level = i, inflight, prio end
      else
        able[#able + 1], total, level = i, total + tonumber(A[ao + 5*i+3]), prio
      end
    elseif wait < 0 or later < wait then wait = later end
  end
  if #able > 0 then
    local x = tonumber(A[ao + 3]) * total
    best = able[#able]
    for _, i in ipairs(able) do
      x = x - tonumber(A[ao + 5*i+3])
      if x < 0 then best = i break end
    end
  end
  if best == 0 then return {0, wait, capped} end
  -- (a killed process's leases left where nothing counted them go on every renewal: RENEW)
  redis.call('ZADD', K[ko + 4*best-3], t + lease, rid)
  redis.call('EXPIRE', K[ko + 4*best-3], math.ceil(lease) + 60)
  if tonumber(A[ao + 5*best]) > 0 then
    redis.call('ZADD', K[ko + 4*best-2], t, rid)
    redis.call('EXPIRE', K[ko + 4*best-2], 61)
  end
  return {best, 0, 0}
end
"""
# the script on its own: KEYS and ARGV as above
TAKE_DEPLOYMENT = TAKE_FUNCTION + "return take_deployment(KEYS, 0, ARGV, 1, ARGV[1])\n"
# Gives a call's slots back and its deployment's lease (service/pipeline/deployment_health.py), in
# one command. KEYS: the caps' sorted sets, then per deployment: its calls in flight and requests
# this minute (zsets), tokens per minute (hash). ARGV: request id, number of caps, then per
# deployment: tried (0: never tried, its entry this minute goes too), tokens (0: not counted),
# this minute, the minute whose tokens go. (Requests, errors and latencies are counted apart, a
# batch at a time: STATS.)
GIVE_BACK = """
local rid, ncaps = ARGV[1], tonumber(ARGV[2])
for i = 1, ncaps do redis.call('ZREM', KEYS[i], rid) end
local at = 3
for k = ncaps + 1, #KEYS, 3 do
  redis.call('ZREM', KEYS[k], rid)
  if ARGV[at] == '0' then redis.call('ZREM', KEYS[k + 1], rid) end
  local tokens = tonumber(ARGV[at + 1])
  if tokens > 0 then
    redis.call('HINCRBY', KEYS[k + 2], ARGV[at + 2], tokens)
    redis.call('HDEL', KEYS[k + 2], ARGV[at + 3])
    redis.call('EXPIRE', KEYS[k + 2], 120)
  end
  at = at + 4
end
return 0
"""
# Counts what calls on deployments left to count since the last batch (this process's, every
# DEPLOYMENT_STATS_SECONDS): KEYS: one stats hash per deployment; ARGV: latencies kept, then per
# key: requests, errors, the number of latencies and the latencies, the number of times to first
# token and those. The hash holds `requests`, `errors` and the last latencies and times to first
# token as rings of fields (`l<i>`, `t<j>`; i counted by `requests`, j by `tn`).
STATS = """
local keep, at = tonumber(ARGV[1]), 2
for _, key in ipairs(KEYS) do
  local n, e = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local seen = redis.call('HINCRBY', key, 'requests', n) - n
  if e > 0 then redis.call('HINCRBY', key, 'errors', e) end
  at = at + 2
  for _, kind in ipairs({'l', 't'}) do
    local count = tonumber(ARGV[at])
    if count > 0 then
      if kind == 't' then seen = redis.call('HINCRBY', key, 'tn', count) - count end
      local fields = {}
      for j = 1, count do
        fields[#fields + 1] = kind .. ((seen + j) % keep)
        fields[#fields + 1] = ARGV[at + j]
      end
      redis.call('HSET', key, unpack(fields))
    end
    at = at + 1 + count
  end
  redis.call('EXPIRE', key, 86400)
end
return 0
"""
# KEYS: sorted sets; ARGV: lease seconds, then one request id per key: push each lease's end
# (and drop the leases that ended: a killed process's).
RENEW = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local trimmed = {}
for i, key in ipairs(KEYS) do
  if not trimmed[key] then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', t)
    trimmed[key] = true
  end
  redis.call('ZADD', key, 'XX', t + tonumber(ARGV[1]), ARGV[1 + i])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1])) + 60)
end
return 0
"""


@dataclass
class Candidates:
    """The deployments a call may take, in the order it tries them, as TAKE_DEPLOYMENT wants them:
    per candidate its four keys, and its max_concurrent, rpm, tpm, priority and weight (plain
    values, encoded once: service/pipeline/deployment_health.py builds them), and the mode."""

    keys: list
    limits: list
    mode: str  # first | least | weighted
    lease_seconds: float

    def args(self, rid: str) -> list:
        return [rid, *self.tail()]

    def tail(self) -> list:
        """The args after the request id (the admission script's end)."""
        return [self.lease_seconds, self.mode, random.random() if self.mode == "weighted" else 0, *self.limits]


class ConcurrencyLimited(RateLimited):
    code = "concurrency_limit_exceeded"


@dataclass
class Cap:
    key: str  # what is counted: "acct:<name>" or "key:<id>"
    limit: int
    label: str  # how a refusal names it


@dataclass
class Lease:
    rid: str
    caps: list[Cap]
    remote: bool = False
    keys: list[str] = field(default_factory=list)
    # more for the give-back's round trip: (send(pipeline), instead()) pairs; instead() runs when
    # Redis fails (service/limits/rates.py's token spend)
    then: list = field(default_factory=list)
    also: list = field(default_factory=list)  # send(pipeline)s needing no transaction, lost when Redis fails
    # GIVE_BACK's deployments, lone Redis only: callables called at the give-back, each (keys, args)
    # of one deployment, or None (nothing left to give back); Redis failing, their leases end
    # on their own (service/pipeline/deployment_health.py)
    parts: list = field(default_factory=list)
    returned: bool = False
    # the deployment the admission script took with the call (1-based among the candidates, 0:
    # none), and what the pipeline made of it (service/pipeline/deployment_health.py's Pick)
    deployment: int = 0
    ahead: object = None
    # what the admission script read with the call (service/limits/admission.py's `peek`): a
    # 1-tuple of the value (None: nothing there); None when it read nothing
    peeked: tuple | None = None
    # the caps' keys the script checked but took no slot under, the call having its answer (a
    # cache hit): taken by Admission.take_waived if the answer proves no answer after all
    waived: list = field(default_factory=list)


class Slots:
    """Take, renew and give back the slots of calls in flight."""

    def __init__(self, cache, lease_seconds: float, prefix: str = "tollgate:inflight:"):
        self.cache, self.lease_seconds, self.prefix = cache, lease_seconds, prefix
        self._lock = threading.Lock()
        self._local: dict[str, set] = {}  # cap key -> request ids (in process)
        self._open: dict[str, Lease] = {}  # this process's leases, for renewal
        client = cache.client
        self._renew = client.register_script(RENEW) if client is not None else None
        self._give = client.register_script(GIVE_BACK) if client is not None else None
        self.cluster = cache.cluster

    def lease(self, rid: str, caps: list[Cap]) -> Lease | None:
        """The slots a call needs (none when no cap is set); taken by service/limits/admission.py."""
        caps = [c for c in caps if c.limit > 0]
        return Lease(rid, caps, keys=[self.prefix + c.key for c in caps]) if caps else None

    def opened(self, lease: Lease | None) -> None:
        """The lease was taken: renewed on every tick until it is given back."""
        if lease is not None:
            with self._lock:
                self._open[lease.rid] = lease

    def take_local(self, lease: Lease) -> int:
        """A slot under each cap counted in process: 0, else the 1-based index of the full cap."""
        with self._lock:
            for i, cap in enumerate(lease.caps):
                if len(self._local.get(cap.key, ())) >= cap.limit:
                    return i + 1
            for cap in lease.caps:
                self._local.setdefault(cap.key, set()).add(lease.rid)
        return 0

    def give_back(self, lease: Lease | None) -> None:
        """Free the call's slots (every exit path calls this once)."""
        if lease is None:
            return
        with self._lock:
            self._open.pop(lease.rid, None)
            lease.returned = True
            if not lease.remote:
                for cap in lease.caps:
                    members = self._local.get(cap.key)
                    if members is not None:
                        members.discard(lease.rid)
                        if not members:
                            del self._local[cap.key]
                return
        parts = [part for part in (each() for each in lease.parts) if part is not None]
        if not lease.keys and not lease.then and not parts and not lease.also:
            return  # no slot taken, nothing to count: no round trip
        try:
            if not self.cluster:
                keys, args = list(lease.keys), [lease.rid, len(lease.keys)]
                for more, values in parts:
                    keys += more
                    args += values
                if not lease.then and not lease.also:
                    self._give(keys=keys, args=args)  # one command
                    return
            # MULTI/EXEC when tokens are counted: still one round trip, and no key expires between
            # two of its commands
            pipe = self.cache.client.pipeline(transaction=bool(lease.then))
            if self.cluster:  # the keys of one call may lie in several slots (no parts here)
                for key in lease.keys:
                    pipe.zrem(key, lease.rid)
            else:  # the script by its text (a script object in a pipeline costs a SCRIPT EXISTS round trip)
                pipe.eval(GIVE_BACK, len(keys), *keys, *args)
            for send, _ in lease.then:
                send(pipe)
            for send in lease.also:
                send(pipe)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - the lease ends on its own
            self.cache.failed(exc)
            for _, instead in lease.then:
                instead()

    def renew(self) -> None:
        """Extend the leases of this process's calls in flight (the maintenance tick)."""
        with self._lock:
            remote = [lease for lease in self._open.values() if lease.remote]
        if not remote or self._renew is None:
            return
        groups: dict = {}  # one script per Redis Cluster hash slot (one group on a lone Redis)
        for lease in remote:
            for key in lease.keys:
                keys, rids = groups.setdefault(key_slot(key.encode()) if self.cluster else 0, ([], []))
                keys.append(key)
                rids.append(lease.rid)
        try:
            for keys, rids in groups.values():
                self._renew(keys=keys, args=[self.lease_seconds, *rids])
        except Exception as exc:  # noqa: BLE001 - retried on the next tick
            self.cache.failed(exc)
