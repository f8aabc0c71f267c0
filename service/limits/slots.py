"""Caps on calls in flight per account and per API key (SPEC §10), fair under long calls.

A call takes one slot under each of its caps before it holds credits, and gives them back on
every exit path. With Redis the slots are leases in one sorted set per cap (member: the
request id, score: when the lease ends, in Redis's own clock), taken for all caps at once by
one script, so they are counted across processes and hosts; the process renews the leases of
its calls in flight on every maintenance tick, so a crashed process's slots come free when
their lease ends. Without Redis (or while it is down) each process counts its own.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis
from redis.crc import key_slot

from core.errors import RateLimited

# Takes a slot under every cap or none: 0, else the 1-based index of the cap that is full.
# (service/limits/admission.py runs it in the same script as the call's rate limits.)
TAKE_SLOTS = """
local function take_slots(keys, rid, lease, limits)
  if #keys == 0 then return 0 end
  local now = redis.call('TIME')
  local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
  for i, key in ipairs(keys) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', t)
    if redis.call('ZCARD', key) >= tonumber(limits[i]) then return i end
  end
  for _, key in ipairs(keys) do
    redis.call('ZADD', key, t + lease, rid)
    redis.call('EXPIRE', key, math.ceil(lease) + 60)
  end
  return 0
end
"""
# KEYS: sorted sets; ARGV: lease seconds, then one request id per key: push each lease's end.
RENEW = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', t + tonumber(ARGV[1]), ARGV[1 + i])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1])) + 60)
end
return 0
"""


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
    returned: bool = False


class Slots:
    """Take, renew and give back the slots of calls in flight."""

    def __init__(self, cache, lease_seconds: float, prefix: str = "tollgate:inflight:"):
        self.cache, self.lease_seconds, self.prefix = cache, lease_seconds, prefix
        self._lock = threading.Lock()
        self._local: dict[str, set] = {}  # cap key -> request ids (in process)
        self._open: dict[str, Lease] = {}  # this process's leases, for renewal
        client = cache.client
        self._renew = client.register_script(RENEW) if client is not None else None

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
        if not lease.keys and not lease.then:
            return  # no slot taken, nothing to count: no round trip
        try:
            # MULTI/EXEC: still one round trip, and no key expires between two of its commands
            pipe = self.cache.client.pipeline(transaction=bool(lease.then))
            for key in lease.keys:
                pipe.zrem(key, lease.rid)
            for send, _ in lease.then:
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
        cluster = isinstance(self.cache.client, redis.RedisCluster)
        for lease in remote:
            for key in lease.keys:
                keys, rids = groups.setdefault(key_slot(key.encode()) if cluster else 0, ([], []))
                keys.append(key)
                rids.append(lease.rid)
        try:
            for keys, rids in groups.values():
                self._renew(keys=keys, args=[self.lease_seconds, *rids])
        except Exception as exc:  # noqa: BLE001 - retried on the next tick
            self.cache.failed(exc)
