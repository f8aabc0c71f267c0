"""POST /api/v1/chat/completions (and /v1/…, /api/chat/stream): the chat call."""
from __future__ import annotations

import uuid

from flask import Blueprint, Response, current_app, g, request

from service import chat_request, relay
from service.auth import authenticate
from service.errors import Forbidden, InvalidRequest
from service.extensions import limiter
from service.limits import (
    default_limit, key_key, key_limit, model_key, model_limit, no_key_limit, no_model_limit,
)

bp = Blueprint("chat", __name__)
STREAM_PATH = "/api/chat/stream"


def _body() -> dict:
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object", code="invalid_json")
    return body


@bp.before_request
def prepare() -> None:
    """Authenticate, then validate the body so limits can see the chosen model."""
    if request.method == "OPTIONS":
        return
    authenticate()
    body = _body()
    ext = current_app.extensions["tollgate"]
    messages = chat_request.messages_of(body)
    model = ext.registry.find(chat_request.model_ref(body, current_app.config["DEFAULT_MODEL"]))
    key = g.api_key
    if key is not None and key.models and model.name not in key.models:
        raise Forbidden(f"This API key may not use model {model.name}", param="model")
    stream, include_usage = chat_request.stream_flags(body, request.path == STREAM_PATH)
    g.model = model
    g.chat = chat_request.ChatRequest(model, messages, chat_request.params_of(body), stream,
                                      include_usage, f"chatcmpl-{uuid.uuid4().hex}")


@bp.post("/api/v1/chat/completions")
@bp.post("/v1/chat/completions")
@bp.post(STREAM_PATH)
@limiter.limit(key_limit, key_func=key_key, exempt_when=no_key_limit)
@limiter.limit(model_limit, key_func=model_key, exempt_when=no_model_limit)
@limiter.limit(default_limit)
def completions():
    chat, conf, ext = g.chat, current_app.config, current_app.extensions["tollgate"]
    name = g.account.name
    ext.budget.check(name)
    meter = lambda tokens: ext.budget.spend(name, tokens)  # noqa: E731
    headers = {"X-Request-ID": chat.request_id}
    if not chat.stream:
        return relay.complete(chat, g.account.id, ext, conf, meter), 200, headers
    events = relay.stream(chat, g.account.id, ext, conf, meter)
    headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return Response(events, mimetype="text/event-stream", headers=headers)
