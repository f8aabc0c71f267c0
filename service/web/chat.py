"""POST /api/v1/chat/completions (and /v1/…, /api/chat/stream): the chat call."""
from __future__ import annotations

from flask import Blueprint, g, request

from service.web import calls
from service.web.auth import authenticate
from service.web.body import json_object

bp = Blueprint("chat", __name__)
STREAM_PATH = "/api/chat/stream"


@bp.before_request
def prepare() -> None:
    """Authenticate, then parse the body (the model it names, or several: service/pipeline/parallel.py)."""
    if request.method == "OPTIONS":
        return
    authenticate()
    calls.parse_chat(json_object(), request.path == STREAM_PATH)


@bp.post("/api/v1/chat/completions")
@bp.post("/v1/chat/completions")
@bp.post(STREAM_PATH)
def completions():
    return calls.respond(calls.run(g.get("parallel") or g.chat))
