"""One chat call end to end: hold credits, call the provider, settle (SPEC §7, §9)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from core import prices, sse
from core.chat import PassThrough
from core.embedding import encode
from core.usage import CLASSES, Usage
from providers import ADAPTERS
from providers.base import Completion, StreamState, legacy_delta
from service.money import billing, budgets
from service.pipeline import deployments, router, traces
from service.store.db import give_back, utcnow
from core.errors import (
    GatewayError, ModelNotFound, NotImplementedByProvider, ProviderError, ProviderUnavailable, UnsupportedParameter,
    scrub,
)
from service.metrics import OVERRUNS
from service.pipeline.deployment_health import CapacityExceeded
from service.pipeline.upstream import Call, retryable

log = logging.getLogger("tollgate")


@dataclass
class Context:
    """What one call needs besides the request: who pays, shared state, settings, and the
    outcome record that logs and metrics read."""

    account_id: int
    ext: object
    conf: dict
    meter: object = None
    record: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    begun: object = field(default_factory=utcnow)  # the prices in force at this moment apply
    held: int = 0  # what this call's hold reserved: no charge goes beyond it
    prices: dict = field(default_factory=dict)  # catalogue row id -> prices per class at `begun`
    pick: object = None  # the deployment taken (service/pipeline/deployment_health.py), given back once
    lease: object = None  # the call's admission lease (service/limits/slots.py): the pick goes back with it
    key: object = None  # the API key row the call came with (its budget, its spend)
    reserved: object = None  # the key budget period the hold counted against (service/money/budgets.py)

    def prices_of(self, row) -> dict:
        if row.id not in self.prices:
            self.prices[row.id] = self.ext.registry.prices_at(row, self.begun)
        return self.prices[row.id]

    def settled(self, chat, tokens: Usage, charge: int, estimated: bool) -> None:
        if self.meter:
            self.meter(tokens.prompt + tokens.completion)
        if self.pick is not None:
            self.ext.fleet.done(self.pick, True, self.pick.latency, self.record.get("ttft_seconds"),
                                tokens.prompt + tokens.completion, self.lease)
        self.record.update(model=chat.model.name, prompt_tokens=tokens.prompt,
                           completion_tokens=tokens.completion, cost=billing.to_credits(charge),
                           cost_micro=charge, estimated=estimated,
                           **{f"{k}_tokens": v for k, v in tokens.detail.items()})

    def settle(self, chat, tokens: Usage, estimated: bool) -> Bill:
        """Charge the call at the prices in force when it began (at most what it held; the rest
        is an overrun the gateway absorbs), in the database or, when it is away, in the
        journal; the bill."""
        unit = self.prices_of(chat.model)
        bill = Bill(tokens, unit, prices.costs(unit, tokens))
        cost = sum(bill.costs.values())
        bill.charge = min(cost, self.held)
        if cost > self.held:
            observe_overrun(chat, cost - self.held)
        args = {"account_id": self.account_id, "request_id": chat.request_id, "model": chat.model.name,
                "prompt_tokens": tokens.prompt, "completion_tokens": tokens.completion, "charge": cost,
                "estimated": estimated, "cap": self.held, "detail": tokens.detail, "unit_prices": unit,
                "threshold": self.conf.get("LOW_BALANCE_ALERTS_MICRO", -1),
                "deployment": self.pick.name if self.pick is not None else None,
                "key_id": getattr(self.key, "id", None),
                "period": budgets.iso(self.reserved.period) if self.reserved else None}
        try:
            with traces.step(self.record, "settle", **{"tollgate.charge_micro": bill.charge}):
                billing.retrying(billing.settle, **args)
        except billing.DB_ERRORS:
            self.ext.journal.append({"op": "settle", "rid": chat.request_id, "args": args})
        self.settled(chat, tokens, bill.charge, estimated)
        return bill

    def release(self, chat) -> None:
        """Give the hold back (no charge); journalled when the database is away."""
        self.close(ok=False)
        if not self.held:
            return
        try:
            billing.retrying(billing.release, chat.request_id)
        except billing.DB_ERRORS:
            self.ext.journal.append({"op": "release", "rid": chat.request_id})

    def close(self, ok: bool = True) -> None:
        """The call is over: its deployment given back (once; a stream closed unread ends here)."""
        if self.pick is not None:
            self.ext.fleet.done(self.pick, ok, lease=self.lease)


@dataclass
class Bill:
    """What a call was charged and how: tokens per class, unit prices, cost per class."""

    tokens: Usage
    unit: dict
    costs: dict
    charge: int = 0

    def usage(self, provider_usage: dict | None = None) -> dict:
        """The client's usage object: OpenAI's shape (the provider's own fields kept, cached and
        reasoning details filled), `cost` charged and `cost_details` per class, in credits."""
        ours = self.tokens.openai()
        out = {**(provider_usage or {}), **ours, "cost": billing.to_credits(self.charge),
               "cost_details": {c: billing.to_credits(self.costs[c]) for c in CLASSES}}
        for key in ("prompt_tokens_details", "completion_tokens_details"):
            theirs = (provider_usage or {}).get(key)
            if isinstance(theirs, dict):
                out[key] = {**theirs, **ours[key]}
        return out


def observe_overrun(chat, absorbed: int) -> None:
    """A provider reported more than the hold could cover: log it and count it."""
    OVERRUNS.labels(chat.model.name).inc(absorbed)
    log.warning("overrun: %s on %s reported usage beyond its hold; %d micro-credits absorbed",
                chat.request_id, chat.model.name, absorbed)


def _call(chat, conf, embedding: bool = False) -> Call:
    model = chat.model
    adapter = ADAPTERS.get(model.api)
    if adapter is None:
        raise NotImplementedByProvider(f"The '{model.api}' protocol is not available yet", param="model")
    if embedding:
        adapter = Embedder(adapter)
        adapter.request(chat)  # refuses what this provider cannot embed, before anything is held
    else:
        adapter.check(chat)
    api_key = None
    if model.api_key_env:
        api_key = conf["PROVIDER_KEYS"].get(model.api_key_env)
        if not api_key:
            raise ProviderUnavailable(f"{model.provider} is not configured on this gateway "
                                      f"({model.api_key_env} is not set)",
                                      code=f"{model.provider.lower()}_unavailable",
                                      headers={"x-should-retry": "false"})  # no retry sets it
    base = model.base_url or conf.get(adapter.base_setting) or adapter.default_base
    return Call(adapter, chat, base.rstrip("/"), api_key, model.connect_timeout or conf["UPSTREAM_CONNECT_TIMEOUT"],
                model.read_timeout or conf["UPSTREAM_READ_TIMEOUT"])


class Embedder:
    """An adapter seen through its embeddings methods, so that the transport's one call path
    (retries, breakers, error mapping) serves embeddings too."""

    def __init__(self, adapter):
        self.adapter = adapter

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def url(self, base: str, model, stream: bool) -> str:
        return self.adapter.embed_url(base, model)

    def request(self, req) -> dict:
        return self.adapter.embed_request(req)

    def response(self, payload, req):
        return self.adapter.embed_response(payload, req)


def embed(req, ctx: Context) -> dict:
    """An embeddings call: hold what the inputs can cost, call, charge the tokens the provider
    counted (or the estimate where it counts none), OpenAI's embeddings list back."""
    req.model = deployments.primary(req.model)  # embeddings are not routed: the first deployment
    call = _call(req, ctx.conf, embedding=True)
    _hold(req, [req.model], ctx)
    started = time.perf_counter()
    try:
        with traces.step(ctx.record, "provider call", **{"gen_ai.request.model": req.model.upstream_model}):
            (vectors, counted), _ = ctx.ext.transport.complete(call)
    except BaseException:
        ctx.release(req)
        raise
    ctx.record["upstream_seconds"] = time.perf_counter() - started
    ctx.record["upstream_ms"] = round(ctx.record["upstream_seconds"] * 1000, 2)
    tokens = counted if counted is not None else req.prompt_guess
    bill = ctx.settle(req, Usage(tokens, 0), counted is None)
    return {"object": "list", "model": req.model.name,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v, req.encoding_format)}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "cost": billing.to_credits(bill.charge)}}


def candidates(chat, registry) -> list:
    """The chosen model, then its enabled `fallbacks` in order."""
    rows = [chat.model]
    for name in chat.model.fallbacks or []:
        try:
            rows.append(registry.find(name))
        except ModelNotFound:
            continue
    if isinstance(chat, PassThrough):  # a body as sent goes only where the same API is spoken
        rows = [row for row in rows if row.api == chat.model.api]
    return rows


def _hold(chat, rows: list, ctx: Context) -> None:
    """Hold what the dearest candidate could cost (a fallback may answer), each at its own cap:
    the whole prompt (images at the row's allowance) plus the output cap sent upstream."""
    conf = ctx.conf
    amount = max(prices.bound(ctx.prices_of(row),
                              chat.n * chat.prompt_bound(row.image_tokens or conf["IMAGE_TOKENS"]),
                              chat.n * chat.output_cap(row)) for row in rows)
    ctx.reserved = budgets.reservation(ctx.key)
    try:
        with traces.step(ctx.record, "hold", **{"tollgate.hold_micro": amount}):
            billing.retrying(billing.hold, ctx.account_id, chat.request_id, amount, conf["HOLD_TTL_SECONDS"],
                             ctx.ext.owner, chat.model.name, ctx.reserved,
                             getattr(ctx.key, "id", None))
    except billing.DB_ERRORS:
        # the hold may have committed before the link broke: release it once the database is back
        ctx.ext.journal.append({"op": "release", "rid": chat.request_id})
        raise
    ctx.held = max(amount, 0)
    give_back()  # the call may take minutes: its thread holds no pooled connection meanwhile


def _first_answer(chat, rows: list, ctx: Context, attempt):
    """attempt(call) on each candidate (on its deployments, service/pipeline/router.py) until one answers;
    chat.model is left at the one that did."""
    failure = None  # what moved the call off the first row
    for i, row in enumerate(rows):
        last = i == len(rows) - 1
        try:
            return router.first_answer(chat, row, ctx, lambda c: _call(c, ctx.conf), attempt)
        except (NotImplementedByProvider, UnsupportedParameter):  # this fallback cannot: the next may
            if i == 0:
                raise
            if last:
                raise failure from None  # the first row's outage, not a fallback's limit the client never chose
        except GatewayError as err:
            if last or not (retryable(err) or isinstance(err, CapacityExceeded)):
                raise
            failure = failure or err
    raise AssertionError("unreachable")


def _run(transport, call: Call, record: dict) -> Completion:
    """The provider's completion; `n` served by repeated calls where it has no native `n`."""
    copies = 1 if call.adapter.native_n else call.chat.n
    started = time.perf_counter()
    parts = [transport.complete(call)[0] for _ in range(copies)]
    record["upstream_seconds"] = time.perf_counter() - started
    record["upstream_ms"] = round(record["upstream_seconds"] * 1000, 2)
    if len(parts) == 1:
        return parts[0]
    choices = []
    for i, part in enumerate(parts):
        choices.append({**part.choices[0], "index": i})
    detail = {k: sum(p.detail.get(k, 0) for p in parts) for k in billing.DETAIL}
    return Completion(choices, sum(p.prompt_tokens for p in parts),
                      sum(p.completion_tokens for p in parts), any(p.estimated for p in parts),
                      detail=detail)


def complete(chat, ctx: Context) -> dict:
    """A non-streaming call: the `chat.completion` body, with `usage.cost` charged."""
    rows = candidates(chat, ctx.ext.registry)
    router.check(chat, lambda c: _call(c, ctx.conf))  # refuse what it cannot do before holding
    _hold(chat, rows, ctx)
    try:
        with traces.step(ctx.record, "provider call", **{"gen_ai.request.model": chat.model.upstream_model}):
            _, result = _first_answer(chat, rows, ctx,
                                      lambda call: _run(ctx.ext.transport, call, ctx.record))
    except BaseException:
        ctx.release(chat)
        raise
    bill = ctx.settle(chat, Usage(result.prompt_tokens, result.completion_tokens, **result.detail),
                      result.estimated)
    if isinstance(chat, PassThrough):
        return chat.answer(result.raw, bill.usage())
    return _completion(chat, result, bill)


def _completion(chat, result: Completion, bill: Bill) -> dict:
    """The `chat.completion` body: an OpenAI-compatible provider's own, every field kept, with
    our id, the catalogue's model name and the bill in its usage; else built."""
    counted = bill.usage(result.usage)
    body = {**(result.raw or {}), "id": chat.request_id, "object": "chat.completion",
            "created": (result.raw or {}).get("created") or int(time.time()),
            "model": chat.model.name, "choices": result.choices, "usage": counted}
    if body.get("system_fingerprint", "") is None:
        del body["system_fingerprint"]  # OpenAI's schema: a string when present
    return body


def _streamable(call: Call) -> Call:
    if call.chat.n > 1 and not call.adapter.native_n:
        raise UnsupportedParameter(f"Streaming with n > 1 is not supported by the "
                                       f"{call.adapter.name} provider", param="n")
    return call


def stream(chat, ctx: Context):
    """Open the upstream stream (errors here are ordinary JSON errors), then a generator of SSE bytes."""
    rows = candidates(chat, ctx.ext.registry)
    router.check(chat, lambda c: _streamable(_call(c, ctx.conf)))
    _hold(chat, rows, ctx)
    started = time.perf_counter()
    try:
        with traces.step(ctx.record, "provider call", **{"gen_ai.request.model": chat.model.upstream_model}):
            call, resp = _first_answer(chat, rows, ctx,
                                       lambda c: ctx.ext.transport.open_stream(_streamable(c)))
    except BaseException:
        ctx.release(chat)
        raise
    ctx.record["upstream_seconds"] = time.perf_counter() - started
    ctx.record["upstream_ms"] = round(ctx.record["upstream_seconds"] * 1000, 2)
    ctx.record["model"] = chat.model.name
    return _events(chat, call, resp, ctx)


class _Tally:
    """What reached the client: content pieces per stream, for billing when counts are missing."""

    def __init__(self):
        self.pieces = 0


def _relay(chat, call, resp, state: StreamState, tally: _Tally, created: int, ctx: Context):
    rid, name = chat.request_id, chat.model.name
    yield sse.chunk(rid, created, name, [sse.delta_choice(i, {"role": "assistant", "content": ""})
                                         for i in range(chat.n)])
    for delta in call.adapter.stream_events(resp.lines(), state):
        if ctx.ext.stopping.is_set():
            raise ProviderUnavailable("The gateway is shutting down; retry the call",
                                      code="shutting_down")
        if delta.chunk is not None:  # an OpenAI-compatible chunk: relayed whole, renamed
            if _informative(delta.chunk):
                yield sse.event({**delta.chunk, "id": rid, "object": "chat.completion.chunk",
                                 "created": created, "model": name})
                _count(delta, tally, ctx)
            continue
        body = {}
        if delta.content:
            body["content"] = delta.content
        if delta.tool_calls:
            body["tool_calls"] = delta.tool_calls
        if not body and delta.finish_reason is None:
            continue  # the upstream's own empty role chunk: ours was sent first
        finish = delta.finish_reason
        if "functions" in chat.params:  # the client speaks legacy function calling
            body, finish = legacy_delta(body, finish)
        yield sse.chunk(rid, created, name, [sse.delta_choice(delta.index, body, finish)])
        _count(delta, tally, ctx)
    if not state.done:
        raise ProviderError(f"{chat.model.provider} closed the stream before it finished")


def _informative(chunk: dict) -> bool:
    """Whether an upstream chunk says more than the empty role delta we already sent."""
    if chunk.get("system_fingerprint") is None:
        chunk.pop("system_fingerprint", None)
    for c in chunk.get("choices") or ():
        if c.get("finish_reason") is not None or c.get("logprobs") is not None:
            return True
        if any(v not in (None, "") for k, v in (c.get("delta") or {}).items() if k != "role"):
            return True
    return False


def _count(delta, tally: _Tally, ctx: Context) -> None:
    """A content piece reached the client: the first one times the first token."""
    if delta.content or delta.tool_calls:
        if not tally.pieces:
            ctx.record["ttft_seconds"] = time.perf_counter() - ctx.started
            ctx.record["ttft_ms"] = round(ctx.record["ttft_seconds"] * 1000, 2)
        tally.pieces += 1


def _settle_stream(chat, ctx: Context, state: StreamState, tally: _Tally, finished: bool) -> int:
    """Charge what the provider counted for a finished stream, else the prompt plus what was
    delivered (estimated where the provider gave no count); no content, no charge."""
    exact = (finished and isinstance(state.prompt_tokens, int)
             and isinstance(state.completion_tokens, int))
    if not exact and tally.pieces == 0:
        ctx.release(chat)
        return 0
    prompt = state.prompt_tokens if isinstance(state.prompt_tokens, int) else chat.prompt_guess
    completion = state.completion_tokens if exact else tally.pieces
    detail = state.detail if exact else {k: v for k, v in state.detail.items() if k != "reasoning"}
    bill = ctx.settle(chat, Usage(prompt, completion, **detail), not exact)
    details = state.extra.get("usage") if exact else None  # the provider's own usage object
    state.extra["usage"] = bill.usage(details)
    return bill.charge


def _settled_stream(chat, ctx: Context, state: StreamState, tally: _Tally, finished: bool) -> int:
    """_settle_stream, giving back any pooled connection it took (the request that opened the
    stream gave its own back when it returned; on PostgreSQL only a group commit's leader takes
    one)."""
    try:
        return _settle_stream(chat, ctx, state, tally, finished)
    finally:
        give_back()


def _passed(chat, call, resp, ctx: Context):
    """A pass-through stream: each provider event rendered as it comes; the terminal one after
    the call is settled, so that its usage carries the cost."""
    state, tally = StreamState(), _Tally()
    try:
        for delta in call.adapter.passed_events(resp.lines(), state):
            if ctx.ext.stopping.is_set():
                raise ProviderUnavailable("The gateway is shutting down; retry the call", code="shutting_down")
            _count(delta, tally, ctx)
            if state.done:
                resp.finish()
                _settled_stream(chat, ctx, state, tally, True)
                yield chat.render(delta.chunk, state.extra.get("usage") or {})  # {}: nothing was charged
                return
            yield chat.render(delta.chunk)
        raise ProviderError(f"{chat.model.provider} closed the stream before it finished")
    except GatewayError as err:
        resp.close()
        _settled_stream(chat, ctx, state, tally, False)
        ctx.record["error"] = err.code
        body = scrub(err, [call.api_key, *ctx.conf["PROVIDER_KEYS"].values()]).body()["error"]
        yield chat.render.failed(body)
    except BaseException:  # client gone (GeneratorExit) or a bug: bill what was delivered
        resp.close()
        _settled_stream(chat, ctx, state, tally, False)
        ctx.record["error"] = "client_disconnected"
        raise


def _events(chat, call, resp, ctx: Context):
    if isinstance(chat, PassThrough):
        yield from _passed(chat, call, resp, ctx)
        return
    state, tally, created = StreamState(), _Tally(), int(time.time())
    try:
        yield from _relay(chat, call, resp, state, tally, created, ctx)
    except GatewayError as err:
        resp.close()
        _settled_stream(chat, ctx, state, tally, False)
        ctx.record["error"] = err.code
        yield sse.event(scrub(err, [call.api_key, *ctx.conf["PROVIDER_KEYS"].values()]).body())
        return
    except BaseException:  # client gone (GeneratorExit) or a bug: bill what was delivered
        resp.close()
        _settled_stream(chat, ctx, state, tally, False)
        ctx.record["error"] = "client_disconnected"
        raise
    resp.finish()
    _settled_stream(chat, ctx, state, tally, True)
    if chat.include_usage:
        yield sse.chunk(chat.request_id, created, chat.model.name, [], usage=state.extra.get("usage"))
    yield sse.DONE
