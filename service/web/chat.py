"""POST /api/v1/chat/completions (and /v1/…, /api/chat/stream): the chat call."""
from __future__ import annotations

import uuid

from flask import Blueprint, Response, current_app, g, request

from core import chat as chat_request
from core import transcript
from service.limits import admission
from service.limits.slots import Cap
from service.pipeline import answer_cache, idempotency, parallel, relay, traces
from service.store.db import give_back
from service.store.registry import CHAT_MAX_AGE
from service.web import observe
from service.web.auth import authenticate, lineage
from service.web.body import json_object
from service.web.errors import Forbidden, InvalidRequest
from service.web.extensions import limiter
from service.limits.rates import (
    default_limit, key_key, key_limit, limit_key, model_key, model_limit, no_key_limit, no_model_limit,
)

bp = Blueprint("chat", __name__)
STREAM_PATH = "/api/chat/stream"


@bp.before_request
def prepare() -> None:
    """Authenticate, then validate the body so limits can see the chosen model."""
    if request.method == "OPTIONS":
        return
    authenticate()
    prepare_body(json_object(), request.path == STREAM_PATH)


def find_model(body: dict):
    """The catalogue row a body names (`id`, `model`, else the default)."""
    ext = current_app.extensions["tollgate"]
    return ext.registry.find(chat_request.model_ref(body, current_app.config["DEFAULT_MODEL"]), CHAT_MAX_AGE)


def chosen_model(body: dict):
    """The catalogue row a body names (SPEC §7), if the caller's key may use it for chat."""
    return _usable(chat_request.model_ref(body, current_app.config["DEFAULT_MODEL"]))


def prepare_body(body: dict, force_stream: bool = False) -> None:
    """The chat call of an OpenAI-shaped body (every front door's, once translated) as g.chat,
    and its model as g.model for the limits."""
    if "models" in body:  # several models at once (service/pipeline/parallel.py)
        g.parallel = parallel.Plan.of(body, force_stream, lambda ref: _usable(ref, "models"))
        g.chat, g.model = g.parallel.group, g.parallel.group.model
        return
    messages = chat_request.messages_of(body)
    model = chosen_model(body)
    stream, include_usage = chat_request.stream_flags(body, force_stream)
    g.model = model
    g.chat = chat_request.ChatRequest(model, messages, chat_request.params_of(body), stream,
                                      include_usage, f"chatcmpl-{uuid.uuid4().hex}",
                                      body.get("stream_options") or {})


def _usable(ref, param: str = "model"):
    """The enabled chat row a reference names, if the caller's API key (and every key it was
    minted from) may use it."""
    model = current_app.extensions["tollgate"].registry.find(ref, CHAT_MAX_AGE)
    for key in lineage(g.api_key):
        if key.models and model.name not in key.models:
            raise Forbidden(f"This API key may not use model {model.name}", param=param)
    if getattr(model, "kind", "chat") != "chat":
        raise InvalidRequest(f"{model.name} is an embedding model; call /v1/embeddings", param=param)
    return model


@bp.post("/api/v1/chat/completions")
@bp.post("/v1/chat/completions")
@bp.post(STREAM_PATH)
def completions():
    if "parallel" in g:
        return _parallel(g.parallel)
    return admitted(g.chat, chat_rates())


def _parallel(plan):
    """Several models at once: each model's call admitted on its own (its limits, caps and slot),
    then the plan run once per idempotency key."""
    ext, conf, name = current_app.extensions["tollgate"], current_app.config, g.account.name
    legs = []
    try:
        for i, chat in enumerate(plan.chats):
            g.model = chat.model  # the model's own rpm
            lease = ext.admission.admit(chat.request_id, chat_rates(), name, caps(g.account, g.api_key, conf))
            meter = lambda tokens, lease=lease: ext.budget.spend(name, tokens, lease)  # noqa: E731
            ctx = relay.Context(g.account.id, ext, conf, meter, lease=lease, key=g.api_key)  # its budget too
            lookup = answer_cache.Lookup(current_app.extensions["tollgate_answers"], chat, g.account.id,
                                         request.headers.get("Cache-Control"))
            legs.append(parallel.Leg(i, chat, ctx, lookup, lambda lease=lease: ext.slots.give_back(lease)))
    except BaseException:
        for leg in legs:
            leg.give_back()
        raise
    ran = False

    def run():
        nonlocal ran
        ran = True
        observe.outcome().update(request_id=plan.group.request_id, model=",".join(c.model.name for c in plan.chats))
        answer = parallel.legs_view(plan, legs)
        headers = {"X-Request-ID": plan.group.request_id}
        if isinstance(answer, dict):
            return answer, 200, headers
        headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return Response(answer, mimetype="text/event-stream", headers=headers)

    try:
        return idempotently(plan.group, run)
    finally:
        if not ran:
            for leg in legs:
                leg.give_back()


@limiter.request_filter
def _admitted_here() -> bool:
    """flask-limiter skips the chat call's routes: admitted() takes their limits."""
    return request.blueprint in ("chat", "messages", "responses")


# One window per limit shared by chat, Messages and Responses (SPEC §13): a door is a way to ask,
# not a second allowance. The chat route's flask-limiter scope, so windows survive the upgrade.
CALL_SCOPE = "chat.completions"


def chat_rates(scope: str | None = None) -> list[admission.Rate]:
    """The chat call's rate limits, with the limit and key functions flask-limiter is given for
    embeddings: the default (per account), the model's rpm (per account per model) and the API
    key's rpm (and the rpm of the keys a key was minted from), in the calls' shared windows."""
    specs = [(default_limit(), limit_key())]
    for limit, key, exempt in ((model_limit, model_key, no_model_limit), (key_limit, key_key, no_key_limit)):
        if not exempt():
            specs.append((limit(), key()))
    return admission.rates(specs + parent_specs(), current_app.config["RATELIMIT_KEY_PREFIX"], scope or CALL_SCOPE)


def parent_specs() -> list[tuple[str, str]]:
    """The rpm of the keys the caller's key was minted from (a console session's key): its calls
    count under theirs too."""
    return [(f"{parent.rpm}/minute", f"{limit_key()}:key:{parent.id}")
            for parent in lineage(g.api_key)[1:] if parent.rpm]


def admitted(req, rates: list[admission.Rate], answer=relay.complete):
    """The call past its rate limits, token budget and caps (one Redis round trip), then run once
    per idempotency key; its slots are given back however it ends."""
    ext, conf = current_app.extensions["tollgate"], current_app.config
    with traces.step(observe.outcome(), "admission"):
        lease = ext.admission.admit(req.request_id, rates, g.account.name, caps(g.account, g.api_key, conf))
    ran = False

    def run():
        nonlocal ran
        ran = True
        return _call(req, ext, conf, lease, answer)

    try:
        return idempotently(req, run)
    finally:
        if not ran:  # a replayed answer, or a refused idempotency key
            ext.slots.give_back(lease)


def idempotently(chat, run):
    """run() once per `Idempotency-Key` (when the request has one): the stored answer for a
    repeat of the same request, 409/422 for a clash (service/pipeline/idempotency.py)."""
    ext, conf = current_app.extensions["tollgate"], current_app.config
    key = request.headers.get(idempotency.HEADER)
    if key is None:
        return run()
    account_id = g.account.id
    stored = idempotency.claim(account_id, idempotency.check_key(key),
                               idempotency.digest(request.get_json(), chat.stream), ext.owner,
                               conf["HOLD_TTL_SECONDS"])
    if stored is not None:
        return _replayed(chat, stored)
    try:
        answer = run()
    except BaseException:
        idempotency.abandon(account_id, key)
        raise
    if isinstance(answer, Response):  # a stream: its answer is known when it ends
        answer.response = _recorded(answer.response, account_id, key, chat.request_id,
                                    getattr(chat, "transcript", None))
        return answer
    idempotency.finish(account_id, key, answer[0])
    return answer


def _replayed(chat, stored: dict):
    """The stored answer of an earlier call with the same key and body; nothing is charged."""
    headers = {"X-Request-ID": stored["id"], "Idempotent-Replayed": "true"}
    if not chat.stream:
        return stored, 200, headers
    headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    replay = getattr(chat, "replay", None) or transcript.replay  # a pass-through call's own format
    return Response(replay(stored, chat.include_usage), mimetype="text/event-stream",
                    headers=headers)


def _recorded(events, account_id: int, key: str, request_id: str, listener=None):
    """The stream's events as they go; a stream that ended properly is stored for its key, any
    other gives the key back (`listener`: a pass-through call's own transcript)."""
    heard = listener() if listener else transcript.Transcript()
    try:
        for piece in events:
            heard.feed(piece)
            yield piece
    finally:
        try:
            if heard.finished:
                idempotency.finish(account_id, key, {"id": request_id, **heard.body()})
            else:
                idempotency.abandon(account_id, key)
        finally:
            give_back()


def _call(chat, ext, conf, lease, answer):
    """The admitted call: answer(chat, ctx) for a body, or the stream; the lease is given back
    when it ends."""
    name = g.account.name
    record = observe.outcome()
    record.update(request_id=chat.request_id, model=chat.model.name)
    ctx = relay.Context(g.account.id, ext, conf, lambda tokens: ext.budget.spend(name, tokens, lease), record,
                        lease=lease, key=g.api_key)
    cached = answer_cache.Lookup(current_app.extensions["tollgate_answers"], chat, g.account.id,
                                 request.headers.get("Cache-Control"))
    headers = {"X-Request-ID": chat.request_id, **cached.headers}
    if not chat.stream:
        try:
            return cached.complete(ctx, answer), 200, headers
        finally:
            ctx.close()
            ext.slots.give_back(lease)
    try:
        events = cached.stream(ctx, relay.stream)
    except BaseException:
        ctx.close()
        ext.slots.give_back(lease)
        raise
    headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response = Response(events, mimetype="text/event-stream", headers=headers)
    response.call_on_close(lambda: ext.slots.give_back(lease))  # however the stream ends
    response.call_on_close(ctx.close)  # its deployment too
    return response


def caps(account, key, conf) -> list[Cap]:
    """The caller's caps on calls in flight: its account's, and its API key's."""
    tag = f"{{acct:{account.name}}}"  # one script takes them all: one Redis Cluster slot
    found = [Cap(tag, conf["MAX_CONCURRENT_PER_ACCOUNT"], f"account {account.name}")]
    for each in lineage(key):  # a key minted from a key's session: its parents' caps too
        limit = each.max_concurrent or conf["MAX_CONCURRENT_PER_KEY"]
        found.append(Cap(f"{tag}:key:{each.id}", limit, f"API key {each.prefix}… (id {each.id})"))
    return found
