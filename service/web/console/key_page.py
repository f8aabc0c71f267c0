"""One API key's page: its limits (editable), its budget and period (settable), what it spent
this period and a chart of its spend by day. Changes go through the functions the admin API's
`PATCH /api/admin/keys/<id>` uses (key_admin.fields, key_admin.change); a key's session may edit
only its own key and the keys minted from it, and never make one broader than its own
(service/web/console/keys.py)."""
from __future__ import annotations

import datetime as dt

from flask import current_app, g, redirect, request, url_for

from service.money import budgets
from service.store.db import ApiKey, utcnow
from service.web import key_admin, reports
from service.web.console import chart, i18n, keys as rules
from service.web.console.user import revocable
from service.web.console.views import bp, credits, page
from service.web.errors import GatewayError


def _own(key_id: int) -> ApiKey | None:
    """The account's key with this id (None: no such key, or another account's)."""
    if key_id > 2 ** 31 - 1:
        return None
    return ApiKey.get_or_none((ApiKey.id == key_id) & (ApiKey.account == g.account.id))


def _chart(key: ApiKey) -> dict:
    today = utcnow().date()
    start = dt.datetime.combine(today - dt.timedelta(days=chart.DAYS - 1), dt.time())
    by_day = reports.spend(g.account.id, "day", start, utcnow() + dt.timedelta(seconds=1), key.id)["data"]
    return chart.bars(chart.days(by_day, today), credits)


@bp.get("/keys/<int:key_id>")
def key_page(key_id: int, error: str | None = None, status: int = 200):
    key = _own(key_id)
    if key is None:
        return page("message.html", 404, message=i18n.t("not_found"))
    return page("key.html", status, key=key, now=budgets.this_period(key), chart=_chart(key), error=error,
                form=request.form if error else None, editable=key.revoked_at is None and revocable(key.id),
                periods=budgets.PERIODS, parent=g.api_key)


@bp.post("/keys/<int:key_id>")
def key_edit(key_id: int):
    """Save the form (POST/redirect/GET); an error comes back on the form with what was typed."""
    key = _own(key_id)
    if key is None:
        return page("message.html", 404, message=i18n.t("not_found"))
    if key.revoked_at is not None or not revocable(key.id):
        return page("message.html", 403, message=i18n.t("not_your_key_edit"))
    try:
        changes = key_admin.fields(rules.edit_body(request.form))
        changes = rules.edited(changes, g.api_key, current_app.config["MAX_CONCURRENT_PER_KEY"])
        key_admin.change(key_id, changes)
    except GatewayError as err:
        return key_page(key_id, i18n.error(err), 400)
    return redirect(url_for("console.key_page", key_id=key_id), 303)
