"""The state of every deployment (SPEC §15): calls in flight, caps, cool-downs, counters,
latencies; shared by every process through Redis, counted in process without it.

A call takes its deployment with one script (TAKE_DEPLOYMENT, service/limits/slots.py): the
first of the candidates it is offered (or, for `least_busy`, the one of the best priority with
the fewest calls in flight; for the usual weighted call, one of the best priority drawn by
weight) that is not cooling down and under its `max_concurrent`, `rpm` and `tpm`; it leaves a
lease in the deployment's sorted set of calls in flight (member: the request id, score: when
the lease ends, in Redis's clock). On a lone Redis the call's admission script
runs it for the call's first try (`taken`); later tries, and every try on a Redis Cluster, run
it on its own (`take`). The process renews its leases on every maintenance tick, so a killed
process's calls stop counting when their leases end. When the call ends the lease goes back (and
its tokens, for a `tpm` cap) by one script (GIVE_BACK), in the command that gives the call's
admission lease back (its own command on a Cluster, or when the call has no such lease). The
call's request, error, latency and time to first token are counted in process and sent a batch
at a time (STATS, `flush`: every DEPLOYMENT_STATS_SECONDS, on every maintenance tick and before
this process shows them), off the call's own commands. Every key of one model carries the hash
tag `{m<id>}`: a script's keys share a slot on a Redis Cluster.

A 429 cools the deployment (every process) for the provider's Retry-After, else
DEPLOYMENT_COOLDOWN_SECONDS; a 401/403 disables it in the catalogue (every process, until an
operator enables it) with a log line, a metric and a `deployment_disabled` alert in the
outbox; connection errors and 5xx feed its own circuit breaker (service/pipeline/breaker.py).
"""
from __future__ import annotations

import bisect
import logging
import math
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from core.errors import RateLimited
from service.limits.slots import GIVE_BACK, RENEW, STATS, TAKE_DEPLOYMENT as TAKE, Candidates
from service.metrics import BUCKETS
from service.pipeline import deployments

log = logging.getLogger("tollgate")
KEEP = 100  # latencies kept per deployment for its p50
_KEEP = str(KEEP).encode()
MINUTE = 60
FAILED_LATENCY = 10.0  # seconds: what a failed call counts as in a deployment's recent latency

COOLDOWNS = Counter("tollgate_deployment_cooldowns_total", "Cool-downs after a provider's 429",
                    ["model", "deployment"])
DISABLED = Counter("tollgate_deployment_disabled_total", "Deployments disabled after a 401/403",
                   ["model", "deployment"])

class CapacityExceeded(RateLimited):
    """Every deployment of the model is at one of its caps (SPEC §8)."""

    code = "capacity_exceeded"


_KEYS: dict[tuple, dict] = {}


def keys(model_id: int, name: str) -> dict[str, str]:
    """A deployment's Redis keys, all in its model's hash slot (made once per deployment; `take`
    and `back`: TAKE_DEPLOYMENT's four and GIVE_BACK's three, service/limits/slots.py)."""
    found = _KEYS.get((model_id, name))
    if found is None:
        base = f"tollgate:dep:{{m{model_id}}}:"
        found = {kind: f"{base}{kind}:{name}" for kind in ("live", "rpm", "tpm", "cool", "stats")}
        found["take"] = [found[kind].encode() for kind in ("live", "rpm", "tpm", "cool")]
        found["back"] = [found[kind].encode() for kind in ("live", "rpm", "tpm")]
        _KEYS[(model_id, name)] = found
    return found


class Tally:
    """One deployment's calls by outcome and upstream latencies, counted by this process for
    Prometheus (`tollgate_deployment_calls_total`, `tollgate_deployment_seconds`): plain numbers
    under the Fleet's lock, read at scrape time (prometheus_client's own children take a lock per bucket
    and per counter, some 10 µs of every call)."""

    __slots__ = ("model", "ok", "errors", "buckets", "sum")

    def __init__(self, model: str):
        self.model = model
        self.ok = self.errors = 0
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0


_TALLIES: dict[tuple, Tally] = {}  # (model name, deployment name) -> its Tally, for this process
_TALLY_LOCK = threading.Lock()


def _tally(model: str, name: str) -> Tally:
    found = _TALLIES.get((model, name))
    if found is None:
        with _TALLY_LOCK:
            found = _TALLIES.setdefault((model, name), Tally(model))
    return found


class _Tallies:
    """The tallies as Prometheus metrics, at scrape time."""

    def collect(self):
        calls = CounterMetricFamily("tollgate_deployment_calls", "Calls per deployment by outcome",
                                    labels=["model", "deployment", "outcome"])
        seconds = HistogramMetricFamily("tollgate_deployment_seconds", "Upstream latency per deployment "
                                        "(to the answer or the stream's first byte)", labels=["model", "deployment"])
        with _TALLY_LOCK:  # the dict; each count (an int, a float) is read whole
            seen = [(key, t.ok, t.errors, list(t.buckets), t.sum) for key, t in list(_TALLIES.items())]
        for (model, name), ok, errors, buckets, total in seen:
            calls.add_metric([model, name, "ok"], ok)
            calls.add_metric([model, name, "error"], errors)
            running, out = 0, []
            for bound, count in zip((*[str(float(b)) for b in BUCKETS], "+Inf"), buckets):
                running += count
                out.append((bound, running))
            seconds.add_metric([model, name], out, total)
        yield calls
        yield seconds


REGISTRY.register(_Tallies())


@dataclass(slots=True)
class Pick:
    """A call's deployment, taken: given back once when the call ends."""

    model_id: int
    model: str
    deployment: object
    rid: str
    remote: bool
    latency: float | None = None  # seconds to the answer, or to the stream's first byte
    done: bool = False
    usable: list | None = None  # taken by the admission script: the candidates it was offered
    routed: bool = False  # taken by the admission script: the router has tried the call on it
    state: object = None  # the deployment's _Local in this process (looked up once)
    riding: bool = False  # its lease in flight rides on the call's admission lease (Fleet.taken)

    @property
    def name(self) -> str:
        return self.deployment.name


@dataclass
class _Local:
    """One deployment's state in this process (all of it without Redis; latencies for `latency`)."""

    live: dict = field(default_factory=dict)  # rid -> lease end (monotonic)
    rpm: deque = field(default_factory=deque)  # call times (monotonic)
    tpm: dict = field(default_factory=dict)  # minute -> tokens
    cool_until: float = 0.0  # monotonic
    requests: int = 0
    errors: int = 0
    lat: deque = field(default_factory=lambda: deque(maxlen=KEEP))
    ttft: deque = field(default_factory=lambda: deque(maxlen=KEEP))
    ewma: float | None = None  # recent latency, seconds (the `latency` strategy)
    breaker: str = ""  # its breaker's key (Fleet.breaker_key)
    tally: Tally | None = None  # its Prometheus numbers (under the model's name as last seen)
    # counted since this process's last batch to Redis (Fleet.flush): requests, errors, latencies
    # and times to first token
    sent_requests: int = 0
    sent_errors: int = 0
    sent_lat: list = field(default_factory=list)
    sent_ttft: list = field(default_factory=list)


class Fleet:
    """Every deployment's state as this process sees it, shared through Redis when it answers."""

    def __init__(self, cache, breakers, lease_seconds: float, cooldown: float, stats_seconds: float = 1.0):
        self.cache, self.breakers = cache, breakers
        self.lease_seconds, self.cooldown, self.stats_seconds = lease_seconds, cooldown, stats_seconds
        self._dirty: dict[tuple, _Local] = {}  # what has counts to send in the next batch
        self._flushed = time.monotonic()
        self._lock = threading.Lock()
        self._local: dict[tuple, _Local] = {}
        self._open: dict[str, Pick] = {}  # this process's remote leases, renewed every tick
        self._off: dict[tuple, float] = {}  # (model id, name) -> when this process disabled it
        client = cache.client
        self._take = client.register_script(TAKE) if client is not None else None
        self._renew = client.register_script(RENEW) if client is not None else None
        self._give = client.register_script(GIVE_BACK) if client is not None else None
        self._stats = client.register_script(STATS) if client is not None else None
        self.cluster = cache.cluster

    def local(self, model_id: int, name: str) -> _Local:
        key = (model_id, name)
        found = self._local.get(key)
        if found is None:
            with self._lock:
                found = self._local.setdefault(key, _Local(breaker=self.breaker_key(model_id, name)))
        return found

    @staticmethod
    def breaker_key(model_id: int, name: str) -> str:
        return f"dep:{model_id}:{name}"

    def usable_of(self, row, deps: list, tried=()) -> list:
        """Those of `deps` not in `tried` that are usable: enabled, not just disabled here, not
        cooling in this process, their breaker not open."""
        out, now, state = [], None, self.breakers.state
        for dep in deps:
            if not dep.enabled or dep.name in tried or self._off and (row.id, dep.name) in self._off:
                continue
            s = self.local(row.id, dep.name)
            if s.cool_until:
                now = now or time.monotonic()
                if s.cool_until > now:
                    continue
            if state(s.breaker) != "open":
                out.append(dep)
        return out

    def offer(self, row, ranked) -> tuple[Candidates, list] | None:
        """The usual weighted call's offer to the admission script, when every one of the row's
        deployments (`ranked`, deployments.by_priority) is usable here: (Candidates, their
        states), made once per loaded row; None when one is not (then usable_of decides)."""
        made = ranked.offer
        if made is None or made[0] is not self:
            states = [self.local(row.id, d.name) for d in ranked]
            made = ranked.offer = (self, self.candidates(row, ranked, "weighted"), states,
                                   all(d.enabled for d in ranked), [s.breaker for s in states])
        _, offer, states, enabled, breakers = made
        if not enabled or self._off:
            return None
        now = None
        for s in states:
            if s.cool_until:
                now = now or time.monotonic()
                if s.cool_until > now:
                    return None
        if self.breakers.any_open(breakers):
            return None
        return offer, states

    def latency(self, model_id: int):
        return lambda name: self.local(model_id, name).ewma

    # -- taking and giving back ---------------------------------------------------------------

    def take(self, row, ordered: list, rid: str, least_busy: bool) -> Pick | Cooling:
        """The first of `ordered` that can take the call (least_busy: the least busy of the best
        priority that can), its lease taken; else CapacityExceeded when one is at a cap, or
        Cooling (the wait) when all are cooling down."""
        verdict = None
        if self._take is not None:
            verdict = self._remote(row, ordered, rid, least_busy)
        remote = verdict is not None
        if verdict is None:
            verdict = self._take_local(row, ordered, rid, least_busy)
        index, wait_ms, capped = verdict
        if index:
            dep = ordered[index - 1]
            pick = Pick(row.id, row.name, dep, rid, remote, state=self.local(row.id, dep.name))
            if remote:
                with self._lock:
                    self._open[rid] = pick
            return pick
        wait = max(1, math.ceil(max(wait_ms, 0) / 1000))
        if capped:
            raise CapacityExceeded(f"Every deployment of {row.name} is at its capacity; retry later",
                                   headers={"Retry-After": str(wait)})
        return Cooling(wait)

    def candidates(self, row, ordered: list, mode: str) -> Candidates:
        """What the take script (its own, or the admission's) needs of `ordered` (mode: first,
        least or weighted, service/limits/slots.py), encoded once: redis-py encodes every str
        and number it sends, a few dozen per call here."""
        made = getattr(ordered, "take", None)
        if made is None:
            ks, limits = [], []
            for dep in ordered:
                ks += keys(row.id, dep.name)["take"]
                values = dep.max_concurrent, dep.rpm, dep.tpm, dep.priority, dep.weight
                limits += [str(x).encode() for x in values]
            made = ks, limits
            if isinstance(ordered, deployments.Ranked):
                ordered.take = made
        return Candidates(made[0], made[1], mode, self.lease_seconds)

    def _remote(self, row, ordered: list, rid: str, least_busy: bool):
        found = self.candidates(row, ordered, "least" if least_busy else "first")
        return self.cache.call(lambda r: self._take(keys=found.keys, args=found.args(rid), client=r))

    def folds(self) -> bool:
        """Whether the admission script can take a call's deployment (a lone Redis that answers:
        on a Cluster a deployment's keys lie in another slot than the account's)."""
        return self._take is not None and not self.cluster and self.cache.up

    def taken(self, row, ordered: list, lease, states: list | None = None) -> Pick:
        """The deployment the admission script took with the call (lease.deployment among
        `ordered`): renewed like any, and given back in the lease's round trip whether the call
        tried it or not (a cached answer, a replay, a refused hold). Its lease in flight is a
        member of the deployment's sorted set named by the request id, as a cap's slot is: without
        an `rpm` cap it joins the admission lease's keys (Slots renews and removes it with them);
        with one, an untried call's entry this minute must go too (`unused`)."""
        dep = ordered[lease.deployment - 1]
        pick = Pick(row.id, row.name, dep, lease.rid, True, usable=ordered,
                    state=states[lease.deployment - 1] if states else None)
        lease.ahead = pick
        if not dep.rpm:
            pick.riding = True
            lease.keys.append(keys(row.id, dep.name)["live"])
            return pick
        with self._lock:
            self._open[pick.rid] = pick

        def unused():  # at the give-back (Redis failing, the lease ends on its own)
            with self._lock:
                if pick.routed:
                    return None  # the router tried it: Fleet.done gives it back and counts it
                self._open.pop(pick.rid, None)
            return _part(pick, False)

        lease.parts.append(unused)
        lease.ahead = pick
        return pick

    def routes(self, pick: Pick) -> bool:
        """The router takes the admission's pick for its first try (once; False if already: only
        the call's own thread routes it)."""
        if pick.routed:
            return False
        pick.routed = True
        return True

    def _take_local(self, row, ordered: list, rid: str, least_busy: bool):
        now = time.monotonic()
        minute = int(time.time() // MINUTE)
        best, fewest, level, wait, capped = 0, 0, None, -1, 0
        with self._lock:
            for i, dep in enumerate(ordered, 1):
                if level is not None and dep.priority > level:
                    break
                s = self.local(row.id, dep.name)
                later = None
                for r in [r for r, end in s.live.items() if end <= now]:
                    del s.live[r]
                while s.rpm and s.rpm[0] <= now - MINUTE:
                    s.rpm.popleft()
                if s.cool_until > now:
                    later = (s.cool_until - now) * 1000
                elif dep.max_concurrent and len(s.live) >= dep.max_concurrent:
                    later, capped = 1000, 1
                elif dep.rpm and len(s.rpm) >= dep.rpm:
                    later, capped = (s.rpm[0] + MINUTE - now) * 1000, 1
                elif dep.tpm and s.tpm.get(minute, 0) >= dep.tpm:
                    later, capped = ((minute + 1) * MINUTE - time.time()) * 1000, 1
                if later is None:
                    if not least_busy:
                        best = i
                        break
                    if best == 0 or len(s.live) < fewest:
                        best, fewest, level = i, len(s.live), dep.priority
                elif wait < 0 or later < wait:
                    wait = later
            if best:
                s = self.local(row.id, ordered[best - 1].name)
                s.live[rid] = now + self.lease_seconds
                if ordered[best - 1].rpm:
                    s.rpm.append(now)
                return best, 0, 0
        return 0, wait, capped

    def done(self, pick: Pick, ok: bool = True, latency: float | None = None, ttft: float | None = None,
             tokens: int = 0, lease=None) -> None:
        """The call on `pick` ended: its lease back, the call counted (once); with the call's
        admission `lease` still out, in the round trip that gives that back."""
        if pick is None or pick.done:
            return
        pick.done = True
        dep = pick.deployment
        s = pick.state or self.local(pick.model_id, dep.name)
        if not ok:  # a refused connection is quick: a failure must not look fast to `latency`
            latency, s.ewma = None, max(s.ewma or 0.0, FAILED_LATENCY)
        if latency is not None:
            s.ewma = latency if s.ewma is None else 0.7 * s.ewma + 0.3 * latency
        tally = s.tally
        if tally is None or tally.model != pick.model:  # once per deployment (and after a rename)
            tally = s.tally = _tally(pick.model, dep.name)
        with self._lock:  # (a process has one Fleet: its lock guards its deployments' tallies)
            if ok:
                tally.ok += 1
            else:
                tally.errors += 1
            if latency is not None:
                tally.buckets[bisect.bisect_left(BUCKETS, latency)] += 1
                tally.sum += latency
            self._open.pop(pick.rid, None)
            if not pick.remote:
                s.live.pop(pick.rid, None)
                s.requests += 1
                s.errors += 0 if ok else 1
                if latency is not None:
                    s.lat.append(latency)
                if ttft is not None:
                    s.ttft.append(ttft)
                if dep.tpm and tokens:
                    minute = int(time.time() // MINUTE)
                    s.tpm = {minute: s.tpm.get(minute, 0) + tokens}
                return
            s.sent_requests += 1
            if not ok:
                s.sent_errors += 1
            if latency is not None:
                s.sent_lat.append(latency)
            if ttft is not None:
                s.sent_ttft.append(ttft)
            self._dirty[(pick.model_id, dep.name)] = s
        tokens = tokens if dep.tpm else 0
        out = lease is not None and lease.remote and not lease.returned
        if not (pick.riding and out and not tokens):  # riding: the lease's give-back takes it (Fleet.taken)
            part = _part(pick, True, tokens)
            if out and not self.cluster:
                # in the command that gives the call's slots back (service/limits/slots.py): no trip of
                # its own (on a cluster that trip is one slot's transaction, and these keys lie in another)
                lease.parts.append(lambda: part)  # Redis gone: the lease ends on its own
            else:
                self.cache.call(lambda r: self._give(keys=part[0], args=[pick.rid, 0, *part[1]], client=r))
        if time.monotonic() - self._flushed >= self.stats_seconds:
            self.flush()

    def flush(self) -> None:
        """Send the requests, errors, latencies and times to first token counted since the last
        batch (STATS, service/limits/slots.py): one script per model, whose keys share a slot.
        Every DEPLOYMENT_STATS_SECONDS from a call's end (0: at each call's), on every maintenance
        tick, and before this process shows them. Lost if Redis fails meanwhile (they are counts
        for the operator, not limits: caps and calls in flight never wait for a batch)."""
        with self._lock:
            self._flushed = time.monotonic()
            if not self._dirty:
                return
            dirty, self._dirty = self._dirty, {}
            batches: dict = {}
            for (model_id, name), s in dirty.items():
                lat, ttft = s.sent_lat[-KEEP:], s.sent_ttft[-KEEP:]  # only the last KEEP stay
                ks, args = batches.setdefault(model_id, ([], [_KEEP]))
                ks.append(keys(model_id, name)["stats"])
                args += [s.sent_requests, s.sent_errors, len(lat), *[b"%.6f" % x for x in lat],
                         len(ttft), *[b"%.6f" % x for x in ttft]]
                s.sent_requests = s.sent_errors = 0
                s.sent_lat, s.sent_ttft = [], []
        if self._stats is None:
            return
        for ks, args in batches.values():
            self.cache.call(lambda r, ks=ks, args=args: self._stats(keys=ks, args=args, client=r))

    def renew(self) -> None:
        """Extend the leases of this process's calls in flight (the maintenance tick): one script
        per model (its keys share a slot), the leases ending by Redis's clock."""
        with self._lock:
            picks = list(self._open.values())
        groups: dict = {}
        for pick in picks:
            keys_, rids = groups.setdefault(pick.model_id, ([], []))
            keys_.append(keys(pick.model_id, pick.deployment.name)["live"])
            rids.append(pick.rid)
        for keys_, rids in groups.values():
            self.cache.call(lambda r: self._renew(keys=keys_, args=[self.lease_seconds, *rids], client=r))

    # -- health -------------------------------------------------------------------------------

    def cool(self, row, dep, seconds: float | None) -> float:
        """Keep the deployment out for the provider's Retry-After (else the setting), everywhere."""
        seconds = self.cooldown if seconds is None or seconds <= 0 else seconds
        self.local(row.id, dep.name).cool_until = time.monotonic() + seconds
        COOLDOWNS.labels(row.name, dep.name).inc()
        k = keys(row.id, dep.name)["cool"]
        self.cache.call(lambda r: r.set(k, 1, px=max(1, int(seconds * 1000))))
        log.warning("deployment %s/%s cooling down for %.1f s after a provider 429", row.name, dep.name,
                    seconds)
        return seconds

    def cooling_for(self, row, deps: list) -> int | None:
        """Seconds until the first of the enabled deployments cooling in this process is back."""
        now = time.monotonic()
        left = [self.local(row.id, d.name).cool_until - now for d in deps if d.enabled]
        left = [x for x in left if x > 0]
        return max(1, math.ceil(min(left))) if left else None

    def disabled_here(self, model_id: int, name: str) -> None:
        """This process stops using a deployment at once (the catalogue tells the others)."""
        self._off[(model_id, name)] = time.monotonic()

    def enabled_here(self, model_id: int, name: str) -> None:
        self._off.pop((model_id, name), None)
        self.local(model_id, name).cool_until = 0.0

    def forget_stale(self, max_age: float = 10.0) -> None:
        """Drop this process's own disable marks once the catalogue has had time to say it."""
        now = time.monotonic()
        for key, since in list(self._off.items()):
            if now - since > max_age:
                self._off.pop(key, None)

    # -- what the admin endpoint shows --------------------------------------------------------

    def view(self, row, deps: list) -> list[dict]:
        """Each deployment's state, calls in flight, requests, errors, p50s and cool-down end."""
        if self.cache.up:
            self.flush()  # what this process counted, in before it is read
        remote = self._read(row, deps) if self.cache.up else None
        out = []
        for i, dep in enumerate(deps):
            s = self.local(row.id, dep.name)
            if remote is not None:
                inflight, stats, lat, ttft, cool_ms = remote[i]
            else:
                now = time.monotonic()
                inflight = sum(1 for end in s.live.values() if end > now)
                stats = {"requests": s.requests, "errors": s.errors}
                lat, ttft = list(s.lat), list(s.ttft)
                cool_ms = max(0.0, (s.cool_until - now) * 1000)
            breaker = self.breakers.state(self.breaker_key(row.id, dep.name))
            if not dep.enabled or (row.id, dep.name) in self._off:
                state = "disabled"
            elif cool_ms > 0:
                state = "cooling"
            elif breaker == "open":
                state = "open"
            else:
                state = "ok"
            out.append({"name": dep.name, "state": state, "enabled": dep.enabled, "weight": dep.weight,
                        "priority": dep.priority, "in_flight": inflight,
                        "requests": int(stats.get("requests", 0)), "errors": int(stats.get("errors", 0)),
                        "p50_latency_ms": _p50(lat), "p50_ttft_ms": _p50(ttft),
                        "cooldown_until": round(time.time() + cool_ms / 1000, 3) if cool_ms > 0 else None,
                        "breaker": breaker, "rpm": dep.rpm or None, "tpm": dep.tpm or None,
                        "max_concurrent": dep.max_concurrent or None})
        return out

    def _read(self, row, deps: list):
        def send(r):
            pipe = r.pipeline(transaction=False)
            now = time.time()
            for dep in deps:
                k = keys(row.id, dep.name)
                pipe.zcount(k["live"], now, "+inf")
                pipe.hgetall(k["stats"])
                pipe.pttl(k["cool"])
            return pipe.execute()

        got = self.cache.call(send)
        if got is None:
            return None
        out = []
        for i in range(len(deps)):
            inflight, raw, cool = got[3 * i:3 * i + 3]
            stats, lat, ttft = {}, [], []
            for field_, value in raw.items():  # STATS's rings: l<i>, t<i> (service/limits/slots.py)
                name = field_.decode()
                if name[0] in "lt" and name[1:].isdigit():
                    (lat if name[0] == "l" else ttft).append(float(value))
                else:
                    stats[name] = value
            out.append((inflight, stats, lat, ttft, max(0, cool)))
        return out


def _part(pick: Pick, tried: bool, tokens: int = 0) -> tuple[list, list]:
    """GIVE_BACK's keys and args for one deployment's call (service/limits/slots.py)."""
    if tokens:
        minute = int(time.time() // MINUTE)
        tail = [b"1" if tried else b"0", tokens, minute, minute - 2]
    else:
        tail = [b"1" if tried else b"0", 0, 0, 0]
    return keys(pick.model_id, pick.deployment.name)["back"], tail


class Cooling:
    """Every candidate is cooling down after a 429: the wait, in seconds."""

    def __init__(self, wait: int):
        self.wait = wait


def _p50(values: list) -> float | None:
    return round(statistics.median(values) * 1000, 2) if values else None


def switch(model_id: int, name: str, enabled: bool, alert: dict | None = None) -> bool | None:
    """Enable or disable one deployment in the catalogue (every process reloads it): None when
    the model has no such deployment, else whether it changed. A disable that changed it with
    `alert` writes one `deployment_disabled` alert to the outbox in the same transaction, so two
    processes refused at once alert once."""
    from service.money.billing import write_tx
    from service.store.db import AIModel, AlertOutbox, db, is_postgres, utcnow

    with write_tx():
        query = AIModel.select().where(AIModel.id == model_id)
        row = (query.for_update() if is_postgres(db) else query).first()
        found = next((d for d in (row.deployments or []) if d["name"] == name), None) if row else None
        if found is None:
            return None
        if found.get("enabled", True) == enabled:
            return False
        found["enabled"] = enabled
        AIModel.update(deployments=row.deployments, updated=utcnow()).where(AIModel.id == model_id).execute()
        if alert is not None and not enabled:
            now = utcnow()
            AlertOutbox.create(account=None, kind="deployment_disabled", request_id=alert.get("request_id"),
                               balance=0, threshold=0, created=now, next_attempt=now,
                               detail={"model": row.name, "model_id": model_id, "deployment": name,
                                       **{k: v for k, v in alert.items() if k != "request_id"}})
    return True


STATES = {"ok": 0, "cooling": 1, "open": 2, "disabled": 3}


def gauges(ext):
    """Scrape-time gauges per deployment (GET /metrics): its state and calls in flight."""
    from prometheus_client.core import GaugeMetricFamily

    from service.pipeline import deployments

    state = GaugeMetricFamily("tollgate_deployment_state", "0 ok, 1 cooling, 2 open, 3 disabled",
                              labels=["model", "deployment"])
    flying = GaugeMetricFamily("tollgate_deployment_in_flight", "Calls in flight (every process with Redis)",
                               labels=["model", "deployment"])
    from service.store.db import AIModel

    # read here, not through the registry: prometheus_client collects once when the collector is
    # registered (at start-up), and a registry loaded then would trust its empty copy a while
    for row in AIModel.select().where(AIModel.deployments.is_null(False) & AIModel.enabled):
        found = deployments.of(row)
        if found:
            for seen in ext.fleet.view(row, found):
                state.add_metric([row.name, seen["name"]], STATES[seen["state"]])
                flying.add_metric([row.name, seen["name"]], seen["in_flight"])
    yield state
    yield flying
