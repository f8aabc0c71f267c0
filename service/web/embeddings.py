"""POST /v1/embeddings (and /api/v1/embeddings): OpenAI's embeddings call to OpenAI-compatible,
Ollama and Gemini rows of kind `embedding`, billed per input token through the same ledger,
limits, caps and idempotency as chat calls."""
from __future__ import annotations

import uuid

from flask import Blueprint, g, request

from core.chat import model_name
from core.embedding import embedding_request
from service.limits.rates import EMBEDDINGS_SCOPE
from service.web import calls
from service.web.auth import authenticate
from service.web.body import json_object

bp = Blueprint("embeddings", __name__)


@bp.before_request
def prepare() -> None:
    if request.method == "OPTIONS":
        return
    authenticate()
    body = json_object()
    g.model = calls.usable(model_name(body), kind="embedding")
    g.chat = embedding_request(body, g.model, f"embd-{uuid.uuid4().hex}")


@bp.post("/v1/embeddings")
@bp.post("/api/v1/embeddings")
def create():
    """Admitted in the embeddings' own windows (their rpm of the keys a key was minted from in the
    chat call's), through the chat call's pipeline."""
    return calls.respond(calls.run(g.chat, EMBEDDINGS_SCOPE))
