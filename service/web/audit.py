"""The audit log (SPEC §17): append-only rows for operators' actions and console sign-ins.

`record(actor, action, target, detail, ip)` adds one row; nothing updates or deletes them (no
retention prunes them). Actions are dotted names: `credits.topup`, `credits.adjust`,
`model.create`, `model.update`, `model.delete`, `key.create`, `key.update`, `key.revoke`,
`account.update`, `deployment.enable`, `deployment.disable`, `console.sign_in`,
`console.sign_in_failed`. The API (`GET /api/admin/audit`) and the console's audit page read them
through `entries`.
"""
from __future__ import annotations

import json
import logging

from flask import Blueprint, g, has_request_context, request

from service.store.db import AuditEntry, epoch
from service.web.auth import require_admin
from service.web.body import int_arg

log = logging.getLogger("tollgate")
bp = Blueprint("audit", __name__, url_prefix="/api/admin")
bp.before_request(require_admin)
TEXT_MAX = 255
ACTIONS = ("credits.topup", "credits.adjust", "model.create", "model.update", "model.delete", "key.create",
           "key.update", "key.revoke", "account.update", "deployment.enable", "deployment.disable",
           "console.sign_in", "console.sign_in_failed")


def _cut(value) -> str | None:
    return None if value is None else str(value)[:TEXT_MAX]


def record(actor: str, action: str, target: str | None = None, detail: dict | None = None,
           ip: str | None = None) -> None:
    """Append one audit row (in the caller's transaction when there is one). Amounts too large
    for a float's exact digits are kept as exact decimal strings."""
    if detail is not None:
        detail = json.loads(json.dumps(detail, default=str))
    AuditEntry.create(actor=_cut(actor) or "?", action=_cut(action), target=_cut(target), detail=detail,
                      ip=_cut(ip))


def record_admin(action: str, target: str | None = None, detail: dict | None = None) -> None:
    """An admin API action by the signed-in operator of this request, from its client address."""
    account = g.get("account") if has_request_context() else None
    ip = request.remote_addr if has_request_context() else None
    record(account.name if account else "?", action, target, detail, ip)


def entry_body(e: AuditEntry) -> dict:
    return {"id": e.id, "created": epoch(e.created), "actor": e.actor, "action": e.action,
            "target": e.target, "detail": e.detail, "ip": e.ip}


@bp.get("/audit")
def audit_log():
    """Newest first; `before` is the `id` of the last row seen; filters by actor and action."""
    rows, more = entries(int_arg("limit", 50, 1, 500), int_arg("before", None, 1, 2 ** 62),
                         request.args.get("actor"), request.args.get("action"))
    return {"data": [entry_body(e) for e in rows], "has_more": more}


def entries(limit: int, before: int | None = None, actor: str | None = None,
            action: str | None = None) -> tuple[list[AuditEntry], bool]:
    """One page of rows, newest first (`before`: the id of the last row seen; blank filters are
    none), and whether older rows remain."""
    query = AuditEntry.select()
    if before is not None:
        query = query.where(AuditEntry.id < before)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action == action)
    rows = list(query.order_by(AuditEntry.id.desc()).limit(limit + 1))
    return rows[:limit], len(rows) > limit
