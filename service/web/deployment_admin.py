"""Admin API for a model's deployments (SPEC §15): their state, and enable/disable. The console's
deployments page calls the same two functions (`states`, `set_enabled`)."""
from __future__ import annotations

from flask import Blueprint, current_app

from service.money.billing import write_tx
from service.pipeline import deployments
from service.pipeline.deployment_health import switch
from service.store.db import AIModel
from service.web import audit
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
    return states(_row(model_id))


def states(row: AIModel) -> dict:
    """A row's deployments as the operator sees them (an empty list for a row without any)."""
    fleet = current_app.extensions["tollgate"].fleet
    deps = deployments.of(row)
    return {"model": row.name, "routing": deployments.strategy(row),
            "data": fleet.view(row, deps) if deps else []}


def set_enabled(model_id: int, name: str, enabled: bool) -> dict:
    """Enable or disable one deployment, in every process, with its audit row in the same
    transaction (`deployment.enable` / `deployment.disable`, only when it changed); its state after."""
    row = _row(model_id)
    with write_tx():
        changed = switch(model_id, name, enabled)
        if changed is None:
            raise NotFound(f"Model {model_id} has no deployment named {name}", code="deployment_not_found")
        if changed:
            audit.record_admin("deployment.enable" if enabled else "deployment.disable", f"model:{model_id}",
                               {"model": row.name, "deployment": name})
    ext = current_app.extensions["tollgate"]
    if enabled:
        ext.fleet.enabled_here(model_id, name)
    else:
        ext.fleet.disabled_here(model_id, name)
    ext.registry.invalidate()
    row = _row(model_id)
    return next(d for d in ext.fleet.view(row, deployments.of(row)) if d["name"] == name)


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
    return set_enabled(model_id, name, body["enabled"])
