"""The user's pages: overview (balance, the spend chart), the ledger, API keys, models and the
playground. A session opened with an API key sees and does no more than that key."""
from __future__ import annotations

import datetime as dt
import re

from flask import current_app, g, redirect, request, url_for

from core import prices as price_classes
from service.money import budgets
from service.store.db import Account, ApiKey, LedgerEntry, utcnow
from service.web import calls, reports
from service.web.account import breakdown
from service.web.auth import LINEAGE_MAX, create_key, lineage
from service.web.body import json_object
from service.web.console import chart, i18n, keys as minting, session
from service.web.console.views import bp, credits, page
from service.web.errors import GatewayError, InvalidRequest

LEDGER_PAGE = 50
COMPARE_MIN, COMPARE_MAX = 2, 4  # models side by side in the playground
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@bp.get("/")
def overview():
    acct = Account.get_by_id(g.account.id)
    today = utcnow().date()
    start = dt.datetime.combine(today - dt.timedelta(days=chart.DAYS - 1), dt.time())
    end = utcnow() + dt.timedelta(seconds=1)
    by_day = reports.spend(acct.id, "day", start, end)["data"]
    try:
        first, last = model_range(start, end)
        by_model, error, status = reports.spend(acct.id, "model", first, last)["data"], None, 200
    except GatewayError as err:
        by_model, error, status = [], i18n.error(err), 400
    shown = {f: request.args.get(f) or "" for f in ("from", "to")} if error else {
        "from": first.date().isoformat(), "to": (last - dt.timedelta(microseconds=1)).date().isoformat()}
    return page("overview.html", status, account=acct, chart=chart.bars(chart.days(by_day, today), credits),
                by_model=by_model, range_error=error, shown=shown)


def model_range(start: dt.datetime, end: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The range of the overview's spend by model: the form's `from` and `to` (UTC dates, both
    days included, or times, `to` excluded; read as the reports API reads them), else `start`
    and `end`. A bad or empty range raises InvalidRequest (a message on the form)."""
    last = reports._time("to")
    if last is None:
        last = end
    elif DATE.fullmatch(request.args["to"]):  # a date: through the end of that day
        last = min(last, reports.LATEST - dt.timedelta(days=1)) + dt.timedelta(days=1)
    first = reports._time("from") or (start if last is end else max(last - dt.timedelta(days=chart.DAYS),
                                                                    reports.EARLIEST))
    if first >= last:
        raise InvalidRequest("'from' must be before 'to'", param="from")
    return first, last


def signed(micro: int) -> str:
    """A ledger amount as the balance saw it: top-ups +, charges and corrections −."""
    return ("+" if micro > 0 else "−" if micro < 0 else "") + credits(abs(micro))


def ledger_rows(account_id: int, before: int | None, limit: int = LEDGER_PAGE) -> tuple[list[dict], int | None]:
    """One page of an account's ledger, newest first, and the cursor of the next (older) page."""
    query = LedgerEntry.select().where(LedgerEntry.account == account_id)
    if before is not None:
        query = query.where(LedgerEntry.id < before)
    found = list(query.order_by(LedgerEntry.id.desc()).limit(limit + 1))
    rows = [{"when": e.created.strftime("%Y-%m-%d %H:%M:%S"), "kind": e.kind, "model": e.model or "",
             "request_id": e.request_id, "amount": signed(e.delta), "estimated": e.estimated,
             "note": e.note or "", "operator": getattr(e, "operator", None) or "",
             **(breakdown(e) if e.kind == "charge" else {})} for e in found[:limit]]
    return rows, (found[limit - 1].id if len(found) > limit else None)


def cursor(name: str) -> int | None:
    text = request.args.get(name, "")
    return int(text) if text.isdigit() and len(text) < 19 else None


@bp.get("/ledger")
def ledger():
    rows, older = ledger_rows(g.account.id, cursor("before"))
    return page("ledger.html", rows=rows, older=older, paged=cursor("before") is not None)


def _keys(account_id: int) -> list[ApiKey]:
    return list(ApiKey.select().where(ApiKey.account == account_id).order_by(ApiKey.id.desc()))


@bp.get("/keys")
def keys(error: str | None = None, status: int = 200):
    rows = _keys(g.account.id)
    return page("keys.html", status, keys=rows, new_key=session.take_flash(g.console), error=error,
                form=request.form, parent=g.api_key, spend={k.id: budgets.this_period(k) for k in rows})


@bp.post("/keys")
def create_key_post():
    """A new key (no broader than the session's own key, service/web/console/keys.py), shown once on
    the page the answer redirects to: a refresh there makes no second key."""
    try:
        minting.may_mint(g.api_key)
        asked = minting.parse(request.form)
        limits = minting.narrowed(asked, g.api_key, current_app.config["MAX_CONCURRENT_PER_KEY"])
    except GatewayError as err:
        return keys(i18n.error(err), 400)
    _, plain = create_key(Account.get_by_id(g.account.id), limits["name"], limits["rpm"], limits["models"],
                          limits["expires_at"], limits["max_concurrent"],
                          g.api_key.id if g.api_key is not None else None)
    session.flash(g.console, plain)
    return redirect(url_for("console.keys"), 303)


def revocable(key_id: int) -> bool:
    """A JWT's session may revoke any of its account's keys; a key's session only itself and the
    keys minted from it (no more than the key could do)."""
    if g.api_key is None:
        return True
    seen, current = 0, ApiKey.get_or_none((ApiKey.id == key_id) & (ApiKey.account == g.account.id))
    while current is not None and seen <= LINEAGE_MAX:
        if current.id == g.api_key.id:
            return True
        current = ApiKey.get_or_none(ApiKey.id == current.parent_id) if current.parent_id else None
        seen += 1
    return False


@bp.post("/keys/<int:key_id>/revoke")
def revoke_key(key_id: int):
    if not revocable(key_id):
        return page("message.html", 403, message=i18n.t("not_your_key"))
    (ApiKey.update(revoked_at=utcnow())
     .where((ApiKey.id == key_id) & (ApiKey.account == g.account.id) & ApiKey.revoked_at.is_null()).execute())
    return redirect(url_for("console.keys"), 303)


def _models():
    ext = current_app.extensions["tollgate"]
    now = utcnow()
    return [{"row": r, "prices": ext.registry.prices_at(r, now)} for r in ext.registry.enabled()]


@bp.get("/models")
def models():
    """The models the session may call (a key's session: the key's), with their prices."""
    return page("models.html", models=[m for m in _models() if _allowed(m["row"].name)], classes=price_classes.COLUMNS)


def _allowed(name: str) -> bool:
    """The session's key (and the keys it was minted under) may use this model."""
    return all(not k.models or name in k.models for k in lineage(g.api_key))


@bp.get("/playground")
def playground():
    return page("playground.html", models=[m["row"] for m in _models()
                                           if getattr(m["row"], "kind", "chat") == "chat" and _allowed(m["row"].name)])


@bp.post("/playground/chat")
def playground_chat():
    """The chat call itself (streamed, with its usage), paid by the signed-in account, admitted as
    the API admits it: a key's session takes the key's models, rpm and caps (counted with its API
    calls). Compare mode names `models` (2 to 4): one call with parallel "all", each model admitted
    as one call (the API's own Call, docs/cache-and-parallel.md)."""
    body = json_object()  # as the API reads one: anything but a JSON object is a 400
    call = {"messages": [{"role": "user", "content": body.get("prompt") or ""}],
            "stream": True, "stream_options": {"include_usage": True}}
    if "models" in body:
        req = calls.parse_chat({**call, "models": _compared(body["models"]), "parallel": "all"})
    else:
        req = calls.parse_chat({**call, "model": body.get("model")})
    return calls.respond(calls.run(req))


def _compared(refs):
    """The compare mode's models: 2 to 4, the page's panels (the API itself takes up to 8)."""
    if not isinstance(refs, list) or not COMPARE_MIN <= len(refs) <= COMPARE_MAX:
        raise InvalidRequest(i18n.t("compare_count", COMPARE_MIN, COMPARE_MAX), param="models")
    return refs
