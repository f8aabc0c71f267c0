"""Which deployment answers a call, and what a deployment's failure does (SPEC §15).

For one catalogue row: the usable deployments (enabled, breaker not open, not cooling) in the
order service/pipeline/deployments.py gives, one taken by service/pipeline/deployment_health.py (caps, calls in
flight), the call tried on it; a 429 cools it and a 401/403 disables it, and the call moves on
to the next deployment, as it does after a connection error, a timeout or a 5xx (which the
transport counts toward the deployment's own breaker). Nothing has reached the client yet: a
stream is only opened here. The client sees an error only when no deployment answered (then
the row's `fallbacks` are tried, by service/pipeline/relay.py).
"""
from __future__ import annotations

import logging
import time

from core.errors import GatewayError, ProviderUnavailable, UpstreamRateLimited
from service.money.billing import DB_ERRORS
from service.pipeline import deployments
from service.pipeline.deployment_health import DISABLED, Cooling, switch
from service.pipeline.upstream import retryable
from service.store.db import give_back

log = logging.getLogger("tollgate")


def check(chat, make_call) -> None:
    """make_call on what the call will first try (the row, or its first deployment), so that what
    the model cannot do is refused before anything is held."""
    row = chat.model
    chat.model = deployments.primary(row)
    try:
        make_call(chat)
    except ProviderUnavailable:
        if deployments.of(row) is None:
            raise  # a row without deployments has nowhere else to go
        # a deployment this host has no key for is skipped when the call is routed
    finally:
        chat.model = row


def first_answer(chat, row, ctx, make_call, attempt):
    """attempt(call) on the row's deployments until one answers: (call, result); chat.model is
    left at the deployment's view of the row, ctx.pick at the deployment taken."""
    deps = deployments.of(row)
    if deps is None:  # a row without deployments: as before
        chat.model = row
        call = make_call(chat)
        return call, attempt(call)
    fleet = ctx.ext.fleet
    ahead = getattr(ctx.lease, "ahead", None)
    if ahead is not None and (ahead.model_id != row.id or not fleet.routes(ahead)):
        ahead = None  # the admission took a deployment of another row (or it was tried already)
    tried, last, cooling = set(), None, None
    while True:
        if ahead is not None:  # the first try: the deployment the admission script took
            pick, usable, ahead = ahead, ahead.usable, None
        else:
            found = candidates(chat, row, fleet, tried)
            if found is None:
                break
            usable, least_busy = found
            pick = fleet.take(row, usable, chat.request_id, least_busy)
            if isinstance(pick, Cooling):
                cooling = pick.wait
                break
        dep = pick.deployment
        tried.add(dep.name)
        chat.model = dep.target
        started = time.perf_counter()
        try:
            call = make_call(chat)
            call.breaker = pick.state.breaker if pick.state is not None else fleet.breaker_key(row.id, dep.name)
            call.retries = 0 if len(usable) > 1 else None  # another deployment beats a retry here
            result = attempt(call)
        except GatewayError as err:
            fleet.done(pick, ok=False, latency=time.perf_counter() - started)  # out of flight now
            last = err
            if not _moves_on(err, row, dep, ctx):
                raise
            continue
        except BaseException:
            fleet.done(pick, ok=False)
            raise
        pick.latency = time.perf_counter() - started
        ctx.pick = pick
        ctx.record["deployment"] = dep.name
        return call, result
    raise _nobody(row, deps, fleet, last, cooling)


def candidates(chat, row, fleet, tried=()) -> tuple[list, bool] | None:
    """The row's usable deployments not yet tried, in the order the call tries them, and whether
    the take is `least_busy`; None when none is usable. All of it is this process's knowledge:
    the admission computes it before its script (service/pipeline/call.py), the router for
    every later try."""
    routing = deployments.strategy(row)
    affinity = deployments.affinity_key(chat)
    usable = fleet.usable_of(row, deployments.of(row), tried)
    if not usable:
        return None
    if len(usable) > 1:
        usable = deployments.order(usable, routing, affinity, fleet.latency(row.id) if routing == "latency" else None)
    return usable, routing == "least_busy" and affinity is None


def ahead(chat, row, fleet):
    """What the admission script is offered (service/pipeline/call.py): (the deployments in the
    order the script sees them, Candidates, their states in this process or None), or None when
    none is usable. A weighted row's call without an affinity key, every deployment usable here
    (the usual call): the row's deployments by priority, the script drawing one by weight; else
    candidates()'s order."""
    ranked = deployments.by_priority(row)
    if ranked.weighted and deployments.affinity_key(chat) is None:
        offer = fleet.offer(row, ranked)
        if offer is not None:
            return ranked, *offer
    found = candidates(chat, row, fleet)
    if found is None:
        return None
    return found[0], fleet.candidates(row, found[0], "least" if found[1] else "first"), None


def _nobody(row, deps: list, fleet, last, cooling) -> GatewayError:
    """Why no deployment answered: the last one's error, else all cooling, open or disabled."""
    if last is not None:
        return last
    wait = cooling or fleet.cooling_for(row, deps)
    if wait:
        return UpstreamRateLimited(f"Every deployment of {row.name} is cooling down after its "
                                   "provider's 429; retry later", headers={"Retry-After": str(wait)})
    if any(d.enabled for d in deps):
        return ProviderUnavailable(f"{row.provider} is failing; calls are paused for a moment "
                                   "(circuit open)", code="circuit_open")
    return ProviderUnavailable(f"Every deployment of {row.name} is disabled on this gateway",
                               code=f"{row.provider.lower()}_unavailable",
                               headers={"x-should-retry": "false"})


def _moves_on(err: GatewayError, row, dep, ctx) -> bool:
    """What a deployment's failure does to it; whether the call may go on to another."""
    status = getattr(err, "upstream_status", None)
    if isinstance(err, UpstreamRateLimited):
        ctx.ext.fleet.cool(row, dep, _seconds(err.headers.get("Retry-After")))
        return True
    if status in (401, 403):
        disable(row, dep, status, ctx)
        return True
    return retryable(err)


def _seconds(value) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def disable(row, dep, status: int, ctx) -> None:
    """A provider refused the deployment's credentials: out of service until an operator enables
    it again, in every process (the catalogue says so), with a log line, a metric and one alert."""
    fleet = ctx.ext.fleet
    fleet.disabled_here(row.id, dep.name)
    try:
        changed = switch(row.id, dep.name, False, {"status": status, "request_id": ctx.record.get("request_id"),
                                                    "reason": f"the provider answered HTTP {status} to "
                                                              "the deployment's credentials"})
    except DB_ERRORS:
        log.error("deployment %s/%s: HTTP %d, and the database is away: disabled in this process only",
                  row.name, dep.name, status)
        return
    finally:
        give_back()
    if changed:
        DISABLED.labels(row.name, dep.name).inc()
        log.error("deployment %s/%s disabled: its provider answered HTTP %d to its credentials; "
                  "enable it with PATCH /api/admin/models/%d/deployments/%s once its key is fixed",
                  row.name, dep.name, status, row.id, dep.name)
        ctx.ext.registry.invalidate()
