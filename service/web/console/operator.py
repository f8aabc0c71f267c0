"""The operator's pages (admin sessions only, see views.guard): accounts and their top-ups, the
catalogue form, calls in flight and health."""
from __future__ import annotations

import datetime as dt
import json
from urllib.parse import quote

from flask import abort, current_app, g, redirect, request, url_for

from service import seed
from service.money import billing
from service.pipeline.deployments import STRATEGIES
from service.store.db import Account, Hold, utcnow
from service.web import audit
from service.web.console import i18n
from service.web.console.user import cursor, ledger_rows
from service.web.console.views import bp, page
from service.web.errors import GatewayError, InvalidRequest
from service.web.health import readiness

ACCOUNTS_PAGE = 100
HOLDS_PAGE = 100


@bp.app_template_global()
def account_url(name: str, suffix: str = "") -> str:
    """An account's operator page, its name quoted whole ("org/research" -> org%2Fresearch): a
    name with slashes or dot segments ("x/../alice") reaches its own page, never another's (the
    server decodes the path before routing, and <path:name> takes the slashes back)."""
    return f"{url_for('console.admin_accounts')}/{quote(name, safe='')}{suffix}"


@bp.get("/admin/accounts")
def admin_accounts():
    """Accounts by name, a page at a time (`after`: the last name of the page before)."""
    query, after = (request.args.get("q") or "").strip(), request.args.get("after") or ""
    rows = Account.select().order_by(Account.name)
    if query:
        rows = rows.where(Account.name.contains(query))
    if after:
        rows = rows.where(Account.name > after)
    found = list(rows.limit(ACCOUNTS_PAGE + 1))
    more = found[ACCOUNTS_PAGE - 1].name if len(found) > ACCOUNTS_PAGE else None
    return page("admin_accounts.html", accounts=found[:ACCOUNTS_PAGE], q=query, more=more, paged=bool(after))


def _account(name: str) -> Account:
    found = Account.get_or_none(Account.name == name)
    if found is None:
        abort(404)
    return found


# <path:…>: an account name may hold a slash (a JWT `sub` such as "org/research")
def _age(since: dt.datetime | None, now: dt.datetime) -> str:
    """How long ago, as a person says it (seconds, minutes, hours); blank when unknown."""
    if since is None:
        return ""
    seconds = max(0, int((now - since).total_seconds()))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min" if seconds < 7200 else f"{seconds // 3600} h"


def _holds(query) -> list[dict]:
    """Holds as the operator reads them: whose, which call and model, how much, how old, until when."""
    now = utcnow()
    return [{"account": h.account.name, "request_id": h.request_id, "model": h.model or "",
             "amount": h.amount, "age": _age(h.created, now),
             "created": h.created.strftime("%Y-%m-%d %H:%M:%S") + " UTC" if h.created else "",
             "expires": h.expires_at.strftime("%Y-%m-%d %H:%M:%S") + " UTC"} for h in query]


@bp.get("/admin/accounts/<path:name>")
def admin_account(name: str, error: str | None = None, status: int = 200):
    acct = _account(name)
    holds = _holds(Hold.select(Hold, Account).join(Account).where(Hold.account == acct.id).order_by(Hold.id.desc()))
    rows, older = ledger_rows(acct.id, cursor("before"))
    return page("admin_account.html", status, account=acct, holds=holds, rows=rows, older=older,
                paged=cursor("before") is not None, error=error, form=request.form)


@bp.post("/admin/accounts/<path:name>/credits")
def admin_credit(name: str):
    acct = _account(name)
    try:
        note = (request.form.get("note") or "").strip() or None
        amount = billing.to_micro(request.form.get("amount", ""), "amount")
        with billing.write_tx():  # audited as the admin API audits it: with the change, or neither
            billing.credit(acct.id, amount, note, g.account.name)
            audit.record_admin("credits.topup" if amount > 0 else "credits.adjust", f"account:{name}",
                               {"amount": billing.to_credits(amount), "note": note})
    except GatewayError as err:
        return admin_account(name, i18n.error(err), 400)
    return redirect(account_url(name), 303)


@bp.get("/admin/models")
def admin_models(failed: int | None = None, error: str | None = None, status: int = 200):
    """Every catalogue row as its own form; a refused save comes back on its row, as typed."""
    rows = list(current_app.extensions["tollgate"].registry.rows())
    return page("admin_models.html", status, rows=rows, failed=failed, error=error, form=request.form,
                fields=seed.PRICES, strategies=STRATEGIES,
                deployments={r.id: json.dumps(r.deployments, indent=2, ensure_ascii=False) if r.deployments else ""
                             for r in rows})


def _deployments(text: str) -> list | None:
    """The form's deployments field: JSON, a list of tables as in models.toml (blank: none); the
    catalogue's validator (seed.validate) then checks each as `make seed-models` does."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    except RecursionError:
        where = "nested too deeply"
    raise InvalidRequest(i18n.t("deployments_not_json", where), param="deployments")


def _changes(form) -> dict:
    """The form's fields as catalogue values; a cleared base price is an error (not 0), a cleared
    class price falls back to its class's default, a fallback must name a model."""
    if "cost_per_1k_tokens" in form and not form["cost_per_1k_tokens"].strip():
        raise InvalidRequest(i18n.t("base_price_required"), param="cost_per_1k_tokens")
    changes = {f: form.get(f).strip() or None for f in seed.PRICES if f in form}
    changes["enabled"] = form.get("enabled") == "on"
    for field in ("aliases", "fallbacks"):
        if field in form:
            changes[field] = [v.strip() for v in form[field].split(",") if v.strip()]
    if "deployments" in form:
        changes["deployments"] = _deployments(form["deployments"])
    if "routing" in form:
        changes["routing"] = form["routing"].strip() or None
    known = {n for r in current_app.extensions["tollgate"].registry.rows() for n in [r.name, *(r.aliases or [])]}
    unknown = [n for n in changes.get("fallbacks", []) if n not in known]
    if unknown:
        raise InvalidRequest(i18n.t("unknown_fallback", ", ".join(unknown)), param="fallbacks")
    return changes


@bp.post("/admin/models/<int:model_id>")
def admin_model_update(model_id: int):
    from service.web.admin import model_body

    ext = current_app.extensions["tollgate"]
    row = next((r for r in ext.registry.rows() if r.id == model_id), None)
    if row is None:
        abort(404)
    try:
        changes = _changes(request.form)
        merged = seed.validate({**model_body(row), **changes}, row.name)
        with billing.write_tx():  # audited as the admin API's PATCH: the fields sent
            seed.upsert([merged])
            audit.record_admin("model.update", f"model:{model_id}", changes)
    except GatewayError as err:
        return admin_models(model_id, i18n.t("row_error", i18n.error(err)), 400)
    ext.registry.invalidate()
    return redirect(url_for("console.admin_models", _anchor=f"model-{model_id}"), 303)


def _checks(ready: dict) -> list[tuple[str, str]]:
    """Readiness as lines a person reads (not a dict)."""
    checks = ready["checks"]
    said = {"ok", "down", "off"}
    breakers = ", ".join(f"{k}: {v}" for k, v in checks.get("breakers", {}).items()) or i18n.t("none")
    return [(i18n.t("check_database"), i18n.t(checks["database"]) if checks["database"] in said else checks["database"]),
            (i18n.t("check_redis"), i18n.t(checks["redis"]) if checks["redis"] in said else checks["redis"]),
            (i18n.t("check_catalogue"), i18n.said(str(checks["catalogue"]))),
            (i18n.t("check_breakers"), breakers),
            (i18n.t("check_journal"), str(checks["journal"]))]


@bp.get("/admin/live")
def admin_live():
    """Readiness, breakers, and the calls in flight newest first, a page at a time (`before`)."""
    ext = current_app.extensions["tollgate"]
    query = Hold.select(Hold, Account).join(Account)
    if cursor("before") is not None:
        query = query.where(Hold.id < cursor("before"))
    found = list(query.order_by(Hold.id.desc()).limit(HOLDS_PAGE + 1))
    older = found[HOLDS_PAGE - 1].id if len(found) > HOLDS_PAGE else None
    ready = readiness()
    return page("admin_live.html", holds=_holds(found[:HOLDS_PAGE]), older=older, paged=cursor("before") is not None,
                breakers=ext.transport.breakers.states(), ready=ready, checks=_checks(ready),
                reasons=[i18n.said(r) for r in ready["reasons"]])
