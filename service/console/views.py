"""Console pages. Every change goes through the functions the JSON API uses (auth.create_key,
billing.credit, seed.validate/upsert, the chat call), under the session's CSRF token."""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, url_for

from core import prices as price_classes
from service import billing, chat, reports, seed
from service.account import breakdown
from service.auth import LINEAGE_MAX, create_key, lineage
from service.console import i18n, keys as minting, session, signin
from service.db import Account, ApiKey, Hold, LedgerEntry, epoch, utcnow
from service.errors import AuthenticationFailed, GatewayError, RateLimited
from service.health import readiness

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static", static_url_path="/static")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PUBLIC = {"console.login", "console.login_post", "console.static"}
JSON_ENDPOINTS = {"console.playground_chat"}  # fetched by script: errors in the contract's body


@bp.record_once
def _wire(state) -> None:
    """The sign-in throttle, counting in Redis when the app has it."""
    conf = state.app.config
    state.app.extensions["tollgate_signin"] = signin.Throttle(
        state.app.extensions["tollgate"].cache, conf["CONSOLE_SIGNIN_BACKOFF_SECONDS"],
        conf["CONSOLE_SIGNIN_BACKOFF_MAX_SECONDS"], conf["CONSOLE_SIGNIN_WINDOW_SECONDS"])


@bp.before_request
def guard():
    g.console = session.current()
    if request.endpoint in PUBLIC:
        return None
    if g.console is None:
        if request.endpoint in JSON_ENDPOINTS:
            raise AuthenticationFailed("No console session (it ended with its credential, or never began); "
                                       "sign in again")
        return redirect(url_for("console.login", ended=1 if g.get("session_ended") else None))
    if request.method == "POST":
        sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token")
        if not session.csrf_ok(g.console, sent):
            return page("message.html", 403, message=i18n.t("bad_csrf"))
    if request.endpoint.startswith("console.admin") and not g.admin:
        return page("message.html", 403, message=i18n.t("forbidden"))
    return None


@bp.after_request
def harden(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response


def page(template: str, status: int = 200, **values):
    return render_template(f"console/{template}", t=i18n.t, lang=i18n.lang(), s=g.get("console"),
                           admin=g.get("admin", False), **values), status


def credits(micro: int) -> str:
    return reports.exact(micro).rstrip("0").rstrip(".") if micro else "0"


@bp.app_template_filter("credits")
def _credits_filter(micro):
    return credits(micro)


def _login_page(status: int = 200, headers: dict | None = None, **values):
    """The sign-in form with a fresh signed token, also set in a cookie only this site's pages
    send back: a sign-in posted from another site (to log the victim into the attacker's account)
    has no cookie and is refused, and each token is good for one try."""
    token = signin.form_token()
    if request.args.get("ended"):
        values.setdefault("error", i18n.t("session_ended"))
    body, status = page("login.html", status, login_token=token, **values)
    response = current_app.make_response((body, status, headers or {}))
    response.set_cookie(session.LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure,
                        path="/console/login", max_age=signin.FORM_TOKEN_SECONDS)
    return response


@bp.get("/login")
def login():
    return _login_page()


def _too_many(wait: int):
    """429 too_many_sign_ins with Retry-After: the contract's body for a client that asks for
    JSON, the form with a readable message otherwise."""
    err = RateLimited(f"Too many failed sign-ins; try again in {wait} s", code="too_many_sign_ins",
                      arg=str(wait), headers={"Retry-After": str(wait)})
    if request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json":
        raise err
    g.error_headers, g.error_code = err.headers, err.code  # keep_error_headers keeps Retry-After
    return _login_page(429, err.headers, error=err.body(i18n.lang())["message"])


@bp.post("/login")
def login_post():
    throttle = current_app.extensions["tollgate_signin"]
    credential = (request.form.get("credential") or "").strip()
    tries = signin.identities(request.remote_addr, credential)
    wait = throttle.wait(tries)
    if wait:
        return _too_many(wait)
    if not signin.form_token_ok(throttle, request.cookies.get(session.LOGIN_COOKIE), request.form.get("csrf_token")):
        return _login_page(403, error=i18n.t("bad_csrf"))
    try:
        token, _ = session.sign_in(credential)
    except GatewayError as err:
        throttle.failed(tries)
        return _login_page(401, error=err.body(i18n.lang())["message"])
    throttle.cleared(list(tries)[1])
    response = redirect(url_for("console.overview"))
    response.delete_cookie(session.LOGIN_COOKIE, path="/console/login")
    response.set_cookie(session.COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure,
                        path="/console", max_age=current_app.config.get("CONSOLE_SESSION_HOURS", 12) * 3600)
    return response


@bp.post("/logout")
def logout():
    session.sign_out()
    response = redirect(url_for("console.login"))
    response.delete_cookie(session.COOKIE, path="/console")
    return response


def _month() -> tuple[dt.datetime, dt.datetime]:
    end = utcnow() + dt.timedelta(seconds=1)
    return end - dt.timedelta(days=30), end


def _bars(days: list[dict]) -> list[dict]:
    """Spend per day as SVG bars (heights in the 0-100 box), no script needed."""
    top = max([d["micro"] for d in days] + [1])
    return [{"x": i * 24, "h": round(90 * d["micro"] / top, 2), "label": d["day"], "cost": credits(d["micro"])}
            for i, d in enumerate(days)]


@bp.get("/")
def overview():
    acct = Account.get_by_id(g.account.id)
    start, end = _month()
    by_day = reports.spend(acct.id, "day", start, end)["data"]
    by_model = reports.spend(acct.id, "model", start, end)["data"]
    days = [{"day": d["day"], "micro": round(d["cost"] * 1_000_000)} for d in by_day]
    return page("overview.html", account=acct, bars=_bars(days), by_model=by_model)


def _ledger(account_id: int, limit: int = 50) -> list[dict]:
    rows = (LedgerEntry.select().where(LedgerEntry.account == account_id)
            .order_by(LedgerEntry.id.desc()).limit(limit))
    return [{"when": e.created.strftime("%Y-%m-%d %H:%M:%S"), "kind": e.kind, "model": e.model or "",
             "request_id": e.request_id, "micro": -e.delta, "estimated": e.estimated,
             **(breakdown(e) if e.kind == "charge" else {})} for e in rows]


@bp.get("/ledger")
def ledger():
    return page("ledger.html", rows=_ledger(g.account.id))


def _keys(account_id: int) -> list[ApiKey]:
    return list(ApiKey.select().where(ApiKey.account == account_id).order_by(ApiKey.id.desc()))


@bp.get("/keys")
def keys(error: str | None = None, status: int = 200):
    return page("keys.html", status, keys=_keys(g.account.id), new_key=session.take_flash(g.console),
                error=error, form=request.form, parent=g.api_key)


@bp.post("/keys")
def create_key_post():
    """A new key (no broader than the session's own key, service/console/keys.py), shown once on
    the page the answer redirects to: a refresh there makes no second key."""
    try:
        asked = minting.parse(request.form)
        limits = minting.narrowed(asked, g.api_key, current_app.config["MAX_CONCURRENT_PER_KEY"])
    except GatewayError as err:
        return keys(err.body(i18n.lang())["message"], 400)
    _, plain = create_key(Account.get_by_id(g.account.id), limits["name"], limits["rpm"], limits["models"],
                          limits["expires_at"], limits["max_concurrent"],
                          g.api_key.id if g.api_key is not None else None)
    session.flash(g.console, plain)
    return redirect(url_for("console.keys"))


def _revocable(key_id: int) -> bool:
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
    if not _revocable(key_id):
        return page("message.html", 403, message=i18n.t("not_your_key"))
    (ApiKey.update(revoked_at=utcnow())
     .where((ApiKey.id == key_id) & (ApiKey.account == g.account.id) & ApiKey.revoked_at.is_null()).execute())
    return redirect(url_for("console.keys"))


def _models():
    ext = current_app.extensions["tollgate"]
    now = utcnow()
    return [{"row": r, "prices": ext.registry.prices_at(r, now)} for r in ext.registry.enabled()]


@bp.get("/models")
def models():
    return page("models.html", models=_models(), classes=price_classes.COLUMNS)


def _allowed(name: str) -> bool:
    """The session's key (and the keys it was minted under) may use this model."""
    return all(not k.models or name in k.models for k in lineage(g.api_key))


@bp.get("/playground")
def playground():
    return page("playground.html", models=[m["row"] for m in _models()
                                           if getattr(m["row"], "kind", "chat") == "chat" and _allowed(m["row"].name)])


@bp.post("/playground/chat")
def playground_chat():
    """The chat call itself (streamed), paid by the signed-in account, admitted as the API admits
    it: a key's session takes the key's models, rpm and caps (counted with its API calls)."""
    body = request.get_json(silent=True) or {}
    chat.prepare_body({"model": body.get("model"), "messages": [{"role": "user", "content": body.get("prompt") or ""}],
                       "stream": True, "stream_options": {"include_usage": True}})
    return chat.admitted(g.chat, chat.chat_rates("chat.completions"))


# operators


@bp.get("/admin/accounts")
def admin_accounts():
    query = (request.args.get("q") or "").strip()
    rows = Account.select().order_by(Account.name).limit(100)
    if query:
        rows = rows.where(Account.name.contains(query))
    return page("admin_accounts.html", accounts=list(rows), q=query)


def _account(name: str) -> Account:
    found = Account.get_or_none(Account.name == name)
    if found is None:
        abort(404)
    return found


@bp.get("/admin/accounts/<name>")
def admin_account(name: str, error: str | None = None, status: int = 200):
    acct = _account(name)
    holds = list(Hold.select().where(Hold.account == acct.id))
    return page("admin_account.html", status, account=acct, holds=holds, rows=_ledger(acct.id), error=error)


@bp.post("/admin/accounts/<name>/credits")
def admin_credit(name: str):
    acct = _account(name)
    try:
        note = (request.form.get("note") or "").strip() or None
        billing.credit(acct.id, billing.to_micro(request.form.get("amount", ""), "amount"), note, g.account.name)
    except GatewayError as err:
        return admin_account(name, err.message, 400)
    return redirect(url_for("console.admin_account", name=name))


@bp.get("/admin/models")
def admin_models(error: str | None = None, status: int = 200):
    rows = list(current_app.extensions["tollgate"].registry.rows())
    return page("admin_models.html", status, rows=rows, error=error, fields=seed.PRICES)


@bp.post("/admin/models/<int:model_id>")
def admin_model_update(model_id: int):
    from service.admin import model_body

    ext = current_app.extensions["tollgate"]
    row = next((r for r in ext.registry.rows() if r.id == model_id), None)
    if row is None:
        abort(404)
    changes = {f: request.form.get(f) or None for f in seed.PRICES if f in request.form}
    changes["enabled"] = request.form.get("enabled") == "on"
    for field in ("aliases", "fallbacks"):
        if field in request.form:
            changes[field] = [v.strip() for v in request.form[field].split(",") if v.strip()]
    try:
        merged = seed.validate({**model_body(row), **changes}, f"model {model_id}")
        seed.upsert([merged])
    except GatewayError as err:
        return admin_models(err.message, 400)
    ext.registry.invalidate()
    return redirect(url_for("console.admin_models"))


@bp.get("/admin/live")
def admin_live():
    ext = current_app.extensions["tollgate"]
    holds = list(Hold.select(Hold, Account).join(Account).order_by(Hold.id.desc()).limit(200))
    return page("admin_live.html", holds=holds, breakers=ext.transport.breakers.states(), ready=readiness(),
                epoch=epoch)
