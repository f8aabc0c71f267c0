"""The operator's audit-log page (SPEC §17, issue 35): what `GET /api/admin/audit` serves, newest
first, filtered by actor and action, a page at a time (`before`: the id of the page's last row)."""
from __future__ import annotations

import json

from flask import request

from service.web import audit
from service.web.console.user import cursor
from service.web.console.views import bp, page

AUDIT_PAGE = 50
DETAIL_MAX = 400  # characters of a row's detail shown in the table


def _detail(detail) -> str:
    """A row's detail as `field: value` pairs (lists and tables as JSON), cut to DETAIL_MAX."""
    if not isinstance(detail, dict):
        return "" if detail is None else json.dumps(detail, ensure_ascii=False)
    text = ", ".join(f"{k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
                     for k, v in detail.items())
    return text if len(text) <= DETAIL_MAX else text[:DETAIL_MAX - 1] + "…"


@bp.get("/admin/audit")
def admin_audit():
    actor = (request.args.get("actor") or "").strip()
    action = request.args.get("action") or ""
    found, more = audit.entries(AUDIT_PAGE, cursor("before"), actor or None, action or None)
    rows = [{"id": e.id, "when": e.created.strftime("%Y-%m-%d %H:%M:%S"), "actor": e.actor, "action": e.action,
             "target": e.target or "", "detail": _detail(e.detail), "ip": e.ip or ""} for e in found]
    return page("admin_audit.html", rows=rows, actor=actor, action=action, actions=audit.ACTIONS,
                older=found[-1].id if more else None, paged=cursor("before") is not None,
                filters={"actor": actor or None, "action": action or None})
