"""Console sessions: a random token in an HttpOnly, SameSite=Strict cookie; the database keeps
only its hash, the account, the role and the session's CSRF token."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from flask import current_app, g, request

from service.auth import Caller, _from_jwt, _from_key
from service.db import ConsoleSession, utcnow

COOKIE = "tollgate_console"
LOGIN_COOKIE = "tollgate_login"  # the sign-in form's token (double submit: cookie and field)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sign_in(credential: str) -> tuple[str, ConsoleSession]:
    """A new session for an API key or a JWT (checked as the JSON API checks them); the
    cookie value and the row. A bad credential raises AuthenticationFailed."""
    credential = credential.strip()
    if credential.startswith("sk-"):
        account, _ = _from_key(credential)
        admin = False
    else:
        account, admin = _from_jwt(credential)
    token = secrets.token_urlsafe(32)
    hours = current_app.config.get("CONSOLE_SESSION_HOURS", 12)
    row = ConsoleSession.create(token_hash=_hash(token), account=account.id, admin=admin,
                                csrf=secrets.token_urlsafe(32), expires_at=utcnow() + dt.timedelta(hours=hours))
    return token, row


def current() -> ConsoleSession | None:
    """The request's live session (and g.account/g.admin set from it), or None."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    row = (ConsoleSession.select(ConsoleSession).where((ConsoleSession.token_hash == _hash(token))
                                                       & (ConsoleSession.expires_at > utcnow())).first())
    if row is None:
        return None
    acct = row.account
    g.account, g.admin, g.api_key = Caller(acct.id, acct.name), row.admin, None
    return row


def sign_out() -> None:
    token = request.cookies.get(COOKIE)
    if token:
        ConsoleSession.delete().where(ConsoleSession.token_hash == _hash(token)).execute()


def _matches(expected: str | None, sent: str | None) -> bool:
    return bool(expected) and bool(sent) and hmac.compare_digest(expected, sent)


def csrf_ok(row: ConsoleSession, sent: str | None) -> bool:
    return _matches(row.csrf, sent)


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def login_token_ok(cookie: str | None, sent: str | None) -> bool:
    """The sign-in form came from this site: its field matches the cookie set with the form."""
    return _matches(cookie, sent)
