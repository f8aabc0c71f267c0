"""The Logs pages (SPEC §17): the account's calls, filtered by time, model, status and key and
paged by cursor, and one call's detail (its timings, tokens per class, cost and, when they were
kept, its redacted bodies). Both read the log through the functions `GET /api/v1/logs` uses
(service/web/logs_api.py), so a page is the API's indexed query and shows only the session's
account. A key's session sees what its key sees on the API: the account's calls."""
from __future__ import annotations

from flask import current_app, g, request, url_for

from service.store.db import ApiKey
from service.web import logs_api
from service.web.console import i18n
from service.web.console.views import bp, page
from service.web.errors import GatewayError, NotFound

PAGE = 50
FILTERS = ("from", "to", "model", "status", "key_id")
STATUSES = (200, 400, 401, 402, 403, 404, 408, 413, 422, 429, 499, 500, 502, 503, 504)


def _keys(account_id: int) -> dict[int, ApiKey]:
    rows = ApiKey.select(ApiKey.id, ApiKey.name, ApiKey.prefix).where(ApiKey.account == account_id)
    return {k.id: k for k in rows.order_by(ApiKey.id.desc())}


def _models() -> list[str]:
    return sorted(r.name for r in current_app.extensions["tollgate"].registry.enabled())


@bp.get("/logs")
def logs():
    """A page of the account's calls, newest first; a bad filter is a message on the form."""
    shown = {f: request.args.get(f, "") for f in FILTERS}
    try:
        rows, more = logs_api.query(g.account.id, PAGE)
        error, status = None, 200
    except GatewayError as err:
        rows, more, error, status = [], False, i18n.error(err), 400
    kept = {f: v for f, v in shown.items() if v}
    older = url_for("console.logs", **kept, before=rows[-1].id) if more and rows else None
    return page("logs.html", status, rows=rows, older=older, keys=_keys(g.account.id), models=_models(),
                statuses=STATUSES, shown=shown, error=error, newest=url_for("console.logs", **kept),
                paged=bool(request.args.get("before")))


@bp.get("/logs/<request_id>")
def log_detail(request_id: str):
    """One call of the account's (another account's is the same 404 as a missing one)."""
    try:
        row, body = logs_api.find(g.account.id, request_id)
    except NotFound:
        return page("message.html", 404, message=i18n.t("no_such_call"))
    key = ApiKey.get_or_none(ApiKey.id == row.key_id) if row.key_id else None
    return page("log.html", row=row, body=body, key=key, classes=logs_api.CLASSES)
