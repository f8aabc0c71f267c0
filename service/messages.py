"""POST /v1/messages (and /api/v1/messages, /v1/messages/count_tokens): Anthropic's Messages API
in front of the same chat call — auth, limits, holds and settles, idempotency, ledger and logs
are the chat call's (frontdoors/anthropic.py translates both ways)."""
from __future__ import annotations

from flask import Blueprint, Response, g, request

from frontdoors import anthropic
from service import chat, deployments
from service.auth import authenticate
from service.body import json_object

bp = Blueprint("messages", __name__)


def anthropic_auth() -> None:
    """Anthropic SDKs send the key as `x-api-key`; it is taken as the bearer token."""
    if "Authorization" not in request.headers and request.headers.get("x-api-key"):
        request.environ["HTTP_AUTHORIZATION"] = "Bearer " + request.headers["x-api-key"]


@bp.before_request
def prepare() -> None:
    if request.method == "OPTIONS":
        return
    g.error_body = anthropic.error_body
    anthropic_auth()
    authenticate()
    counting = request.path.endswith("/count_tokens")
    body = json_object()
    chat.prepare_body(anthropic.to_chat(body, counting))
    g.chat.affinity = deployments.anthropic_user(body)  # keeps a user's calls on one deployment


@bp.post("/v1/messages")
@bp.post("/api/v1/messages")
def create():
    answer = chat.completions()
    if isinstance(answer, Response):
        answer.response = anthropic.events(answer.response)
        return answer
    body, status, headers = answer
    return anthropic.message(body), status, headers


@bp.post("/v1/messages/count_tokens")
@bp.post("/api/v1/messages/count_tokens")
def count_tokens():
    """An estimate (the gateway's own: 4 bytes a token, 3 a message), for any catalogue row."""
    return {"input_tokens": g.chat.prompt_guess}
