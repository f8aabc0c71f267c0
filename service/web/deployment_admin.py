"""Admin API for a model's deployments (SPEC §15): their state, and enable/disable."""
from __future__ import annotations

from flask import Blueprint, current_app

from service.pipeline import deployments
from service.pipeline.deployment_health import switch
from service.store.db import AIModel
from service.web.auth import require_admin
from service.web.body import json_object
from service.web.errors import InvalidRequest, NotFound

bp = Blueprint("deployment_admin", __name__, url_prefix="/api/admin/models")
bp.before_request(require_admin)
INT_MAX = 2 ** 31 - 1


def _row(model_id: int) -> AIModel:
    row = AIModel.get_or_none(AIModel.id == model_id) if model_id <= INT_MAX else None
    if row is None:
        raise NotFound(f"No model with id {model_id}", code="model_not_found")
    return row


@bp.get("/<int:model_id>/deployments")
def list_deployments(model_id: int):
    """Each deployment's state (ok, cooling, open, disabled), calls in flight across processes,
    requests, errors, p50 latency and time to first token, and when its cool-down ends."""
    row = _row(model_id)
    fleet = current_app.extensions["tollgate"].fleet
    deps = deployments.of(row)
    return {"model": row.name, "routing": deployments.strategy(row),
            "data": fleet.view(row, deps) if deps else []}


@bp.post("/<int:model_id>/deployments/<name>")
@bp.patch("/<int:model_id>/deployments/<name>")
def set_deployment(model_id: int, name: str):
    """Enable or disable one deployment: `{"enabled": true|false}`."""
    body = json_object()
    unknown = sorted(set(body) - {"enabled"})
    if unknown:
        raise InvalidRequest(f"'{unknown[0]}' cannot be set here; PATCH the model", param=unknown[0])
    if not isinstance(body.get("enabled"), bool):
        raise InvalidRequest("'enabled' must be true or false", param="enabled")
    _row(model_id)
    if switch(model_id, name, body["enabled"]) is None:
        raise NotFound(f"Model {model_id} has no deployment named {name}", code="deployment_not_found")
    ext = current_app.extensions["tollgate"]
    if body["enabled"]:
        ext.fleet.enabled_here(model_id, name)
    else:
        ext.fleet.disabled_here(model_id, name)
    ext.registry.invalidate()
    row = _row(model_id)
    return next(d for d in ext.fleet.view(row, deployments.of(row)) if d["name"] == name)
