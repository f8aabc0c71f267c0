"""The web side of every call (chat, Messages, Responses, embeddings, the console's playground):
the catalogue row a caller may use, an OpenAI-shaped body parsed into the call's request, the
pipeline's Call built from the request and g (service/pipeline/call.py), and its Answer rendered
as a Flask response."""
from __future__ import annotations

import uuid

from flask import Response, current_app, g, request

from core import chat as chat_request
from service.limits.rates import CALL_SCOPE, Limits
from service.pipeline import idempotency, parallel
from service.pipeline.answer import Answer
from service.pipeline.call import Call
from service.store.registry import CHAT_MAX_AGE
from service.web import observe
from service.web.auth import allowed_models, lineage
from service.web.errors import Forbidden, InvalidRequest

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def usable(ref, param: str = "model", kind: str = "chat"):
    """The enabled row of `kind` a reference names, if the caller's API key (and every key it was
    minted from) may use it."""
    model = current_app.extensions["tollgate"].registry.find(ref, CHAT_MAX_AGE)
    other = getattr(model, "kind", "chat") != kind
    if other and kind == "embedding":
        raise InvalidRequest(f"{model.name} is not an embedding model", param=param)
    allowed = allowed_models(g.api_key)
    if allowed is not None and model.name not in allowed:
        raise Forbidden(f"This API key may not use model {model.name}", param=param)
    if other:
        raise InvalidRequest(f"{model.name} is an embedding model; call /v1/embeddings", param=param)
    return model


def chosen_model(body: dict):
    """The chat row a body names (`id`, `model`, else the default; SPEC §7), if the caller may use it."""
    return usable(chat_request.model_ref(body, current_app.config["DEFAULT_MODEL"]))


def parse_chat(body: dict, force_stream: bool = False):
    """The call of an OpenAI-shaped chat body (every front door's, once translated): a
    ChatRequest, or a parallel Plan when it names `models`; g.chat and g.model name it for the
    request log and traces."""
    if "models" in body:  # several models at once (service/pipeline/parallel.py)
        g.parallel = parallel.Plan.of(body, force_stream, lambda ref: usable(ref, "models"))
        g.chat, g.model = g.parallel.group, g.parallel.group.model
        return g.parallel
    messages = chat_request.messages_of(body)
    g.model = chosen_model(body)
    stream, include_usage = chat_request.stream_flags(body, force_stream)
    g.chat = chat_request.ChatRequest(g.model, messages, chat_request.params_of(body), stream, include_usage,
                                      f"chatcmpl-{uuid.uuid4().hex}", body.get("stream_options") or {})
    return g.chat


def run(req, scope: str = CALL_SCOPE) -> Answer:
    """The pipeline's answer to `req` (a parsed request, or a parallel Plan), paid by the caller
    in g, limited in `scope`'s windows; its rate-limit headers go on whatever is answered."""
    key = request.headers.get(idempotency.HEADER)
    stream = req.group.stream if isinstance(req, parallel.Plan) else req.stream
    call = Call(req, account=g.account, key=g.api_key, limits=limits(scope), record=observe.outcome(),
                ext=current_app.extensions["tollgate"], answers=current_app.extensions["tollgate_answers"],
                conf=current_app.config, idempotency_key=key,
                digest=idempotency.digest(request.get_json(), stream) if key is not None else None,
                cache_control=request.headers.get("Cache-Control"))
    try:
        return call.run()
    finally:
        g.rate_headers = call.rate_headers
        g.model = call.model or g.get("model")


def limits(scope: str = CALL_SCOPE) -> Limits:
    """The caller's limits on a door whose windows are `scope`'s."""
    conf = current_app.config
    return Limits(g.account.name, tuple(lineage(g.api_key)), conf["RATE_LIMIT_DEFAULT"],
                  conf["RATELIMIT_KEY_PREFIX"], conf["MAX_CONCURRENT_PER_ACCOUNT"], conf["MAX_CONCURRENT_PER_KEY"],
                  scope)


def respond(answer: Answer):
    """A Flask response of an Answer: its JSON body, or its events as a stream whose close runs
    the answer's own close (its slots, its deployment)."""
    if not answer.streamed:
        return answer.body, answer.status, answer.headers
    response = Response(answer.events, status=answer.status, mimetype="text/event-stream",
                        headers={**answer.headers, **STREAM_HEADERS})
    for close in answer.on_close:
        response.call_on_close(close)
    return response


def add_rate_headers(response):
    """after_request: the admitted (or refused) call's rate-limit headers on its answer."""
    for name, value in (g.get("rate_headers") or {}).items():
        response.headers[name] = value
    return response
