"""The console's frame: the blueprint, its guard (a live session, its CSRF token, the operator
role), its headers, sign-in and sign-out, the language switch and the site's icon. The pages are
in user.py and operator.py; every change goes through the functions the JSON API uses
(auth.create_key, billing.credit, seed.validate/upsert, the chat call)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, redirect, render_template, request, send_from_directory, url_for

from service.web import reports
from service.web.console import i18n, session, signin, signin_audit
from service.web.errors import AuthenticationFailed, GatewayError, RateLimited

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static", static_url_path="/static")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PUBLIC = {"console.login", "console.login_post", "console.static", "console.language"}
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
    """A strict CSP and no framing; the API's CORS headers never reach a console page (flask-cors
    is kept off /console in service/app.py; this is the belt to its braces)."""
    for name in [h for h in response.headers.keys() if h.lower().startswith("access-control-")]:
        del response.headers[name]
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response


def page(template: str, status: int = 200, **values):
    return render_template(f"console/{template}", t=i18n.t, lang=i18n.lang(), s=g.get("console"),
                           admin=g.get("admin", False), here=request.full_path.rstrip("?"), **values), status


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
        token, row = session.sign_in(credential)
    except GatewayError as err:
        throttle.failed(tries)
        signin_audit.failed(credential, err.message)
        return _login_page(401, error=err.body(i18n.lang())["message"])
    throttle.cleared(list(tries)[1])
    response = redirect(url_for("console.overview"))
    response.delete_cookie(session.LOGIN_COOKIE, path="/console/login")
    response.set_cookie(session.COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure,
                        path="/console", max_age=session.seconds_left(row))  # the browser drops it with its credential
    return response


@bp.post("/logout")
def logout():
    session.sign_out()
    response = redirect(url_for("console.login"))
    response.delete_cookie(session.COOKIE, path="/console")
    return response


@bp.get("/language/<code>")
def language(code: str):
    """The language switch: remembered in a cookie for a year, back to the page it was used on."""
    back = request.args.get("next") or ""
    if not back.startswith("/console") or urlsplit(back).netloc:
        back = url_for("console.overview")
    response = redirect(back)
    if code in i18n.LANGS:
        response.set_cookie(i18n.LANG_COOKIE, code, samesite="Strict", secure=request.is_secure, path="/",
                            max_age=365 * 86400)
    return response


@bp.errorhandler(404)
def not_found(exc):
    """A console page that names nothing (an unknown account): a readable page, not JSON."""
    return page("message.html", 404, message=i18n.t("not_found"))


@bp.record_once
def _icon(state) -> None:
    """/favicon.ico for every page (browsers ask for it at the root)."""
    state.app.add_url_rule("/favicon.ico", "favicon", lambda: send_from_directory(
        bp.static_folder, "favicon.ico", mimetype="image/vnd.microsoft.icon", max_age=86400))
