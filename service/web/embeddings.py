"""POST /v1/embeddings (and /api/v1/embeddings): OpenAI's embeddings call to OpenAI-compatible,
Ollama and Gemini rows of kind `embedding`, billed per input token through the same ledger,
limits, caps and idempotency as chat calls."""
from __future__ import annotations

import uuid

from flask import Blueprint, current_app, g, request

from core.embedding import embedding_request
from service.limits import admission
from service.limits.rates import default_limit, key_key, key_limit, model_key, model_limit, no_key_limit, no_model_limit
from service.pipeline import relay
from service.store.registry import CHAT_MAX_AGE
from service.web import chat
from service.web.auth import authenticate, lineage
from service.web.body import json_object
from service.web.errors import Forbidden, InvalidRequest
from service.web.extensions import limiter

bp = Blueprint("embeddings", __name__)


@bp.before_request
def prepare() -> None:
    if request.method == "OPTIONS":
        return
    authenticate()
    body = json_object()
    ref = body.get("model")
    if not isinstance(ref, str) or not ref:
        raise InvalidRequest("'model' is required", param="model")
    model = current_app.extensions["tollgate"].registry.find(ref, CHAT_MAX_AGE)
    if getattr(model, "kind", "chat") != "embedding":
        raise InvalidRequest(f"{model.name} is not an embedding model", param="model")
    for key in lineage(g.api_key):
        if key.models and model.name not in key.models:
            raise Forbidden(f"This API key may not use model {model.name}", param="model")
    g.model = model
    g.chat = embedding_request(body, model, f"embd-{uuid.uuid4().hex}")


@bp.post("/v1/embeddings")
@bp.post("/api/v1/embeddings")
@limiter.limit(key_limit, key_func=key_key, exempt_when=no_key_limit)
@limiter.limit(model_limit, key_func=model_key, exempt_when=no_model_limit)
@limiter.limit(default_limit)
def create():
    # its own rate limits: flask-limiter's, above; the rpm of the keys its key was minted from here
    parents = admission.rates(chat.parent_specs(), current_app.config["RATELIMIT_KEY_PREFIX"], chat.CALL_SCOPE)
    return chat.admitted(g.chat, parents, relay.embed)
