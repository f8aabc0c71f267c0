"""POST /v1/responses (and /api/v1/responses), GET/DELETE /v1/responses/<id>, GET …/input_items:
OpenAI's Responses API in front of the same chat call: a row with `api = "openai_responses"` takes
the body as sent and its answer comes back whole; any other row is translated both ways
(frontdoors/responses.py, docs/responses-fields.md). `store` (default true) keeps each answer per
account: the gateway, not the provider, holds `previous_response_id` state, on every row."""
from __future__ import annotations

from flask import Blueprint, g, request

from frontdoors import responses as door
from service.pipeline import deployments
from service.store.db import StoredResponse, give_back
from service.web import calls
from service.web.auth import authenticate
from service.web.body import int_arg, json_object
from core.chat import PassThrough
from core.errors import InvalidRequest, NotImplementedByProvider, clip
from service.web.errors import NotFound

bp = Blueprint("responses", __name__)
NATIVE = "openai_responses"  # rows that speak this door's API take its bodies as sent


def _stored(response_id: str) -> StoredResponse:
    found = StoredResponse.get_or_none((StoredResponse.response_id == response_id)
                                       & (StoredResponse.account == g.account.id))
    if found is None:
        raise NotFound(f"No response with id {clip(response_id)}", param="response_id", code="response_not_found")
    return found


@bp.before_request
def prepare() -> None:
    if request.method == "OPTIONS":
        return
    authenticate()
    if request.method != "POST":
        return
    body = g.response_body = json_object()
    door.check(body, native=True)
    history = []
    if body.get("previous_response_id") is not None:
        history = door.items_of(_stored(body["previous_response_id"]).conversation)
    model = calls.chosen_model(body)
    if model.api == NATIVE:
        _pass_through(body, model, history)
        return
    chat_body, items, names = door.to_chat(body, history, model.api)
    g.conversation = history + items
    try:
        calls.parse_chat(chat_body)
    except InvalidRequest as err:  # the chat body's checks, named in the Responses API's terms
        raise door.renamed(err, body)
    g.chat.affinity = deployments.conversation_key(history)  # a conversation stays on one deployment
    g.response_meta = door.Meta(body, g.chat.model.name, names)
    g.response_meta.id = response_id(g.chat.request_id)  # a replay of this call finds it by its chat id


def _pass_through(body: dict, model, history: list[dict]) -> None:
    """g.chat for a row that speaks the Responses API: the body as sent (the stored conversation
    put before its input), rendered back whole under the gateway's id."""
    g.conversation = history + door.items_of(body.get("input"))
    meta = g.response_meta = door.Meta(body, model.name)
    g.model = model
    g.chat = PassThrough(model, [], {}, body.get("stream") is True, False, meta.id,
                         body=door.native(body, history, model.max_output_tokens),
                         render=door.NativeEvents(meta), answer=lambda raw, bill: door.passed(raw, meta, bill),
                         transcript=door.Heard, replay=door.replay)


def _keeper(body: dict, account_id: int, conversation: list[dict], meta: door.Meta):
    """Store a finished response (when asked to): the conversation it continues, as Responses
    items (the gateway keeps `previous_response_id` state for every row), and its input items."""
    items = door.items_of(body.get("input"))

    def keep(done: dict) -> None:
        if body.get("store") is False:
            return
        listed = [{"id": item.get("id") or f"item_{meta.id[5:]}_{i}", **item} for i, item in enumerate(items)]
        for item in listed:
            if item.get("type") == "message" and isinstance(item.get("content"), str):
                item["content"] = [{"type": "input_text", "text": item["content"]}]
        StoredResponse.create(account=account_id, response_id=done["id"],
                              conversation=conversation + list(done.get("output") or []),
                              input_items=listed, body=done)
    return keep


@bp.post("/v1/responses")
@bp.post("/api/v1/responses")
def create():
    body, meta = g.response_body, g.response_meta
    keep = _keeper(body, g.account.id, g.conversation, meta)

    def stored(done):
        try:
            keep(done)
        finally:
            give_back()
    if isinstance(g.chat, PassThrough):
        g.chat.render.on_done = stored
    try:
        answer = calls.run(g.get("parallel") or g.chat)
    except (InvalidRequest, NotImplementedByProvider) as err:
        raise door.renamed(err, body)
    replayed = answer.headers.get("Idempotent-Replayed")  # a replay's Response is stored already (or never)
    if replayed and not isinstance(g.chat, PassThrough):  # the Response of the call replayed, not a new one
        meta.id = response_id(answer.headers["X-Request-ID"])
        kept = StoredResponse.get_or_none((StoredResponse.account == g.account.id)
                                          & (StoredResponse.response_id == meta.id))
        if kept is not None and not answer.streamed:
            answer.body = kept.body
            return calls.respond(answer)
    if answer.streamed:
        if not isinstance(g.chat, PassThrough):
            answer.events = door.events(answer.events, meta, (lambda done: give_back()) if replayed else stored)
        return calls.respond(answer)
    if not isinstance(g.chat, PassThrough):
        answer.body = door.response(answer.body, meta)
    if not replayed:
        keep(answer.body)
    return calls.respond(answer)


def response_id(chat_id: str) -> str:
    """A translated call's Response id, from its chat request's id (a replay names the call it replays)."""
    return "resp_" + chat_id.split("-", 1)[-1]


@bp.get("/v1/responses/<response_id>")
@bp.get("/api/v1/responses/<response_id>")
def retrieve(response_id: str):
    return _stored(response_id).body


@bp.delete("/v1/responses/<response_id>")
@bp.delete("/api/v1/responses/<response_id>")
def delete(response_id: str):
    _stored(response_id).delete_instance()
    return {"id": response_id, "object": "response", "deleted": True}


@bp.get("/v1/responses/<response_id>/input_items")
@bp.get("/api/v1/responses/<response_id>/input_items")
def input_items(response_id: str):
    """A page of the response's input items, as OpenAI's: `order` desc (the default: newest
    first) or asc, `limit` 1–100 (20), `after` an item id (the page starts after it)."""
    items = list(_stored(response_id).input_items)
    order, limit, after = request.args.get("order", "desc"), int_arg("limit", 20, 1, 100), request.args.get("after")
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"'order' must be 'asc' or 'desc', got {clip(order)!r}", param="order")
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequest(f"'after' names no input item of this response: {clip(after)!r}", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > len(page)}
