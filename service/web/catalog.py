"""Model lists: OpenAI's `/api/v1/models` (Anthropic's shape to a client that sends
`anthropic-version`, as Anthropic's SDKs do) and the seed's `/api/ai-models/enabled`."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import time

from flask import Blueprint, Response, current_app, g, request

from frontdoors import anthropic
from service.money import billing
from service.pipeline.readiness import ready
from service.store.db import epoch
from service.web.auth import allowed_models, authenticate
from service.web.errors import ModelNotFound
from service.web.messages import anthropic_auth

bp = Blueprint("catalog", __name__)
LIST_TTL = 300


def _anthropic() -> bool:
    return "anthropic-version" in request.headers


@bp.before_request
def prepare() -> None:
    """An Anthropic SDK's call: its key as `x-api-key`, its errors in Anthropic's shape."""
    if _anthropic():
        anthropic_auth()
        rid = anthropic.request_id()
        g.error_body = lambda err: anthropic.error_body(err, rid)
    authenticate()


def openai_model(row, ready: bool) -> dict:
    """OpenAI's model object, with `ready`: whether the row can answer now (service/pipeline/readiness.py)."""
    return {"id": row.name, "object": "model", "created": epoch(row.updated), "owned_by": row.provider,
            "ready": ready}


def anthropic_model(row) -> dict:
    """Anthropic's model object (ModelInfo)."""
    made = dt.datetime.fromtimestamp(epoch(row.updated), dt.timezone.utc)
    out = {"type": "model", "id": row.name, "display_name": row.name,
           "created_at": made.isoformat().replace("+00:00", "Z"), "lifecycle": "active"}  # (enabled rows only)
    if row.max_output_tokens:
        out["max_tokens"] = row.max_output_tokens
    return out


def _ready(rows) -> list[bool]:
    ext = current_app.extensions["tollgate"]
    return [ready(row, current_app.config, ext.reach, ext.transport.breakers) for row in rows]


def _cached(kind: str, build) -> Response:
    """The JSON list from Redis when it holds this catalogue version's copy (with these readiness
    flags, of the rows the caller's key may use), else built and stored."""
    ext = current_app.extensions["tollgate"]
    allowed = allowed_models(g.get("api_key"))
    rows = [r for r in ext.registry.enabled() if allowed is None or r.name in allowed]
    flags = _ready(rows)
    key = f"tollgate:models:{kind}:{ext.registry.version}:{''.join('1' if f else '0' for f in flags)}"
    if allowed is not None:  # a key's own list
        key += ":" + hashlib.sha256("\n".join(sorted(allowed)).encode()).hexdigest()[:16]
    text = ext.cache.get(key)
    if text is None:
        text = json.dumps(build(rows, flags), ensure_ascii=False, separators=(",", ":"))
        ext.cache.set(key, text, LIST_TTL)
    return Response(text, mimetype="application/json")


@bp.get("/api/v1/models")
@bp.get("/v1/models")
def list_models():
    if _anthropic():  # every row on one page
        return _cached("anthropic", lambda rows, flags: {
            "data": [anthropic_model(r) for r in rows], "has_more": False,
            "first_id": rows[0].name if rows else None, "last_id": rows[-1].name if rows else None})
    return _cached("openai", lambda rows, flags: {
        "object": "list", "data": [openai_model(r, f) for r, f in zip(rows, flags)]})


@bp.get("/api/v1/models/<path:name>")
@bp.get("/v1/models/<path:name>")
def get_model(name: str):
    row = current_app.extensions["tollgate"].registry.find(name)
    allowed = allowed_models(g.get("api_key"))
    if (row.name != name and name not in (row.aliases or [])) or (allowed is not None and row.name not in allowed):
        raise ModelNotFound(name)  # (as OpenAI answers a model the key cannot use)
    return anthropic_model(row) if _anthropic() else openai_model(row, _ready([row])[0])


def _enabled_rows(rows, flags) -> list:
    return [{"id": r.id, "modelName": r.name, "provider": r.provider,
             "costPer1kTokens": billing.to_credits(r.cost_per_1k_tokens)} for r in rows]


@bp.get("/api/ai-models/enabled")
def enabled_models():
    response = _cached("enabled", _enabled_rows)
    data = response.get_data(as_text=True)
    body = ('{"code":200,"message":"获取启用的AI模型列表成功","data":' + data
            + f',"timestamp":{int(time.time() * 1000)}' + "}")
    return Response(body, mimetype="application/json")
