"""POST /v1/messages (and /api/v1/messages, /v1/messages/count_tokens): Anthropic's Messages API
in front of the same chat call — auth, limits, holds and settles, idempotency, ledger and logs
are the chat call's. An `anthropic` row gets the body as sent and its answer goes back whole;
other rows are translated both ways (frontdoors/anthropic.py). Every answer has a `request-id`
header, as Anthropic's do."""
from __future__ import annotations

import uuid

from flask import Blueprint, g, request

from core.chat import PassThrough
from frontdoors import anthropic
from service.pipeline import deployments
from service.web import calls
from service.web.auth import authenticate
from service.web.body import json_object

bp = Blueprint("messages", __name__)
NATIVE = "anthropic"  # the api of rows that speak Messages themselves
PASSED_HEADERS = ("anthropic-version", "anthropic-beta")  # the protocol headers such a call passes on


def anthropic_auth() -> None:
    """Anthropic SDKs send the key as `x-api-key`; it is taken as the bearer token."""
    if "Authorization" not in request.headers and request.headers.get("x-api-key"):
        request.environ["HTTP_AUTHORIZATION"] = "Bearer " + request.headers["x-api-key"]


@bp.before_request
def prepare() -> None:
    if request.method == "OPTIONS":
        return
    g.request_hex = uuid.uuid4().hex
    g.error_body = lambda err: anthropic.error_body(err, anthropic.request_id(g.request_hex))
    anthropic_auth()
    authenticate()
    counting = request.path.endswith("/count_tokens")
    body = json_object()
    own = anthropic.native_chat(body)  # what the gateway reads of any Messages body
    model = calls.chosen_model(own)
    if model.api == NATIVE:  # the row speaks Messages: the body as sent (and counted as sent)
        _pass_through(body, own, model)
    else:
        calls.parse_chat(anthropic.to_chat(body, counting))
    g.chat.affinity = deployments.anthropic_user(body)  # keeps a user's calls on one deployment
    g.request_hex = g.chat.request_id.removeprefix("chatcmpl-")


def _pass_through(body: dict, own: dict, model) -> None:
    """g.chat for an anthropic row: the body and protocol headers as sent, the answer and every
    stream event back whole (frontdoors/anthropic.py: Passed, passed, Heard, replay)."""
    g.model = model
    g.chat = PassThrough(model, own["messages"], {}, own.get("stream") is True, False,
                         f"chatcmpl-{uuid.uuid4().hex}", body=body, cap_field="max_tokens",
                         headers={k: request.headers[k] for k in PASSED_HEADERS if k in request.headers},
                         render=anthropic.Passed(model.name),
                         answer=lambda raw, bill: anthropic.passed(raw, model.name),
                         transcript=anthropic.Heard, replay=anthropic.replay)


@bp.after_request
def request_id(response):
    """Anthropic's `request-id` header (the SDKs' `_request_id`), the id of the gateway's call."""
    if request.method != "OPTIONS":
        ours = response.headers.get("X-Request-ID", "")  # the call's id (a replay's: the first call's)
        hex_id = ours.removeprefix("chatcmpl-") if ours.startswith("chatcmpl-") else g.get("request_hex")
        response.headers["request-id"] = anthropic.request_id(hex_id)
    return response


@bp.post("/v1/messages")
@bp.post("/api/v1/messages")
def create():
    answer = calls.run(g.get("parallel") or g.chat)
    if isinstance(g.chat, PassThrough):  # the provider's own message or events, rendered already
        return calls.respond(answer)
    if answer.streamed:
        answer.events = anthropic.events(answer.events)
    else:
        answer.body = anthropic.message(answer.body)
    return calls.respond(answer)


@bp.post("/v1/messages/count_tokens")
@bp.post("/api/v1/messages/count_tokens")
def count_tokens():
    """An estimate (the gateway's own: 4 bytes a token, 3 a message), for any catalogue row."""
    return {"input_tokens": g.chat.prompt_guess}
