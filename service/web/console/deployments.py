"""The operator's deployments page (SPEC §15, issue 34): for each catalogue model with
deployments, each one's state, calls in flight, requests, errors, p50 latency and time to first
token and cool-down end, with enable/disable buttons. It shows and changes them through the
admin API's own functions (service/web/deployment_admin.py: `states`, `set_enabled`)."""
from __future__ import annotations

import datetime as dt

from flask import redirect, request, url_for

from service.pipeline import deployments
from service.store.db import AIModel
from service.web import deployment_admin
from service.web.console import i18n
from service.web.console.views import bp, page
from service.web.errors import GatewayError, InvalidRequest

SWITCH = {"true": True, "false": False}  # the buttons' `enabled` values


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} ms"


def _shown(d: dict) -> dict:
    """A deployment's state as the page shows it: milliseconds, the cool-down's end in UTC."""
    until = d["cooldown_until"]
    return {**d, "p50_latency": _ms(d["p50_latency_ms"]), "p50_ttft": _ms(d["p50_ttft_ms"]),
            "cooling_until": dt.datetime.fromtimestamp(until, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            if until else "",
            "caps": " / ".join(str(d[c]) if d[c] else "–" for c in ("rpm", "tpm", "max_concurrent"))}


@bp.get("/admin/deployments")
def admin_deployments(error: str | None = None, status: int = 200):
    """Every catalogue model that has deployments, in id order, each with its deployments' state."""
    models = []
    for row in AIModel.select().order_by(AIModel.id):
        if deployments.of(row):
            seen = deployment_admin.states(row)
            models.append({"id": row.id, "name": seen["model"], "routing": seen["routing"],
                           "deployments": [_shown(d) for d in seen["data"]]})
    return page("admin_deployments.html", status, models=models, error=error)


@bp.post("/admin/deployments/<int:model_id>/<name>")
def admin_deployment_switch(model_id: int, name: str):
    """Enable or disable one deployment (audited), then back to its model on the page."""
    try:
        enabled = SWITCH.get(request.form.get("enabled", ""))
        if enabled is None:
            raise InvalidRequest("'enabled' must be true or false", param="enabled")
        deployment_admin.set_enabled(model_id, name, enabled)
    except GatewayError as err:
        return admin_deployments(i18n.error(err), err.status)
    return redirect(url_for("console.admin_deployments", _anchor=f"model-{model_id}"), 303)
