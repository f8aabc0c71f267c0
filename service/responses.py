"""POST /v1/responses (and /api/v1/responses), GET/DELETE /v1/responses/<id>, GET …/input_items:
OpenAI's Responses API in front of the same chat call (frontdoors/responses.py translates both
ways). `store` (default true) keeps each answer per account, so `previous_response_id` continues
its conversation."""
from __future__ import annotations

from flask import Blueprint, Response, g, request

from frontdoors import responses as door
from service import chat, deployments
from service.auth import authenticate
from service.body import json_object
from service.db import StoredResponse, give_back
from service.errors import NotFound

bp = Blueprint("responses", __name__)


def _stored(response_id: str) -> StoredResponse:
    found = StoredResponse.get_or_none((StoredResponse.response_id == response_id)
                                       & (StoredResponse.account == g.account.id))
    if found is None:
        raise NotFound(f"No response with id {response_id}", param="response_id", code="response_not_found")
    return found


@bp.before_request
def prepare() -> None:
    if request.method == "OPTIONS":
        return
    authenticate()
    if request.method != "POST":
        return
    body = json_object()
    door.check(body)
    history = []
    if body.get("previous_response_id") is not None:
        if not isinstance(body["previous_response_id"], str):
            raise door.bad("previous_response_id", "'previous_response_id' must be a string")
        history = _stored(body["previous_response_id"]).conversation
    chat_body, g.conversation = door.to_chat(body, history)
    chat.prepare_body(chat_body)
    g.chat.affinity = deployments.conversation_key(history)  # a conversation stays on one deployment
    g.response_meta = door.Meta(body, g.chat.model.name)


def _keeper(body: dict, account_id: int, conversation: list[dict], meta: door.Meta):
    """Store a finished response (when asked to), with the conversation it continues."""
    items = door.messages_of(body.get("input"))

    def keep(done: dict) -> None:
        if body.get("store") is False:
            return
        answer = [{"role": "assistant", "content": o["content"][0]["text"]} if o["type"] == "message" else
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": o["call_id"], "type": "function",
                       "function": {"name": o["name"], "arguments": o["arguments"]}}]}
                  for o in done["output"]]
        listed = [{"id": f"item_{meta.id[5:]}_{i}", **({"type": "message", "role": m["role"], "content": m["content"]}
                                                       if m["role"] != "tool" else
                                                       {"type": "function_call_output", "call_id": m["tool_call_id"],
                                                        "output": m["content"]})}
                  for i, m in enumerate(items) if m["role"] != "assistant"]
        StoredResponse.create(account=account_id, response_id=done["id"], conversation=conversation + answer,
                              input_items=listed, body=done)
    return keep


@bp.post("/v1/responses")
@bp.post("/api/v1/responses")
def create():
    body, meta = request.get_json(), g.response_meta
    keep = _keeper(body, g.account.id, g.conversation, meta)
    answer = chat.completions()
    if isinstance(answer, Response):
        def stored(done):
            try:
                keep(done)
            finally:
                give_back()
        answer.response = door.events(answer.response, meta, stored)
        return answer
    completion, status, headers = answer
    done = door.response(completion, meta)
    keep(done)
    return done, status, headers


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
    items = _stored(response_id).input_items
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": False}
