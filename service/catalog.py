"""Model lists: OpenAI's `/api/v1/models` and the seed's `/api/ai-models/enabled`."""
from __future__ import annotations

import json
import time

from flask import Blueprint, Response, current_app

from service import billing
from service.auth import authenticate
from service.db import epoch
from service.errors import ModelNotFound

bp = Blueprint("catalog", __name__)
bp.before_request(authenticate)
LIST_TTL = 300


def openai_model(row) -> dict:
    return {"id": row.name, "object": "model", "created": epoch(row.updated), "owned_by": row.provider}


def _cached(kind: str, build) -> Response:
    """The JSON list from Redis when it holds this catalogue version's copy, else built and stored."""
    ext = current_app.extensions["tollgate"]
    key = f"tollgate:models:{kind}:{ext.registry.version}"
    text = ext.cache.get(key)
    if text is None:
        text = json.dumps(build(ext.registry.enabled()), ensure_ascii=False, separators=(",", ":"))
        ext.cache.set(key, text, LIST_TTL)
    return Response(text, mimetype="application/json")


@bp.get("/api/v1/models")
@bp.get("/v1/models")
def list_models():
    return _cached("openai", lambda rows: {"object": "list", "data": [openai_model(r) for r in rows]})


@bp.get("/api/v1/models/<path:name>")
@bp.get("/v1/models/<path:name>")
def get_model(name: str):
    row = current_app.extensions["tollgate"].registry.find(name)
    if row.name != name and name not in (row.aliases or []):
        raise ModelNotFound(name)
    return openai_model(row)


def _enabled_rows(rows) -> list:
    return [{"id": r.id, "modelName": r.name, "provider": r.provider,
             "costPer1kTokens": billing.to_credits(r.cost_per_1k_tokens)} for r in rows]


@bp.get("/api/ai-models/enabled")
def enabled_models():
    response = _cached("enabled", _enabled_rows)
    data = response.get_data(as_text=True)
    body = ('{"code":200,"message":"获取启用的AI模型列表成功","data":' + data
            + f',"timestamp":{int(time.time() * 1000)}' + "}")
    return Response(body, mimetype="application/json")
