"""Console sessions: a random token in an HttpOnly, SameSite=Strict cookie; the database keeps
only its hash, the account, the role, the API key it was opened with and the session's CSRF
token. A session is its credential (SPEC §14): it ends when its JWT expires or its key is revoked
or expires (checked on every request), and a key's session carries that key into every call."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets

from flask import current_app, g, request

from service.money.billing import write_tx
from service.store.db import Account, ConsoleSession, utcnow
from service.web.auth import Caller, _claims, _from_jwt, _from_key, live_key
from service.web.console import signin_audit

COOKIE = "tollgate_console"
LOGIN_COOKIE = "tollgate_login"  # the sign-in form's token (double submit: cookie and field)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _ends(credential_expiry: dt.datetime | None) -> dt.datetime:
    """CONSOLE_SESSION_HOURS from now, or the credential's own expiry when that comes first."""
    longest = utcnow() + dt.timedelta(hours=current_app.config.get("CONSOLE_SESSION_HOURS", 12))
    return min(longest, credential_expiry) if credential_expiry else longest


def sign_in(credential: str) -> tuple[str, ConsoleSession]:
    """A new session for an API key or a JWT (checked as the JSON API checks them); the
    cookie value and the row. A bad credential raises AuthenticationFailed."""
    credential = credential.strip()
    key = None
    if credential.startswith("sk-"):
        account, key = _from_key(credential)
        admin, expiry = False, key.expires_at
    else:
        account, admin = _from_jwt(credential)
        exp = _claims(credential).get("exp")
        expiry = (dt.datetime.fromtimestamp(exp, dt.timezone.utc).replace(tzinfo=None)
                  if isinstance(exp, (int, float)) else None)
    token = secrets.token_urlsafe(32)
    with write_tx():  # the session and its audit row commit together
        row = ConsoleSession.create(token_hash=_hash(token), account=account.id, admin=admin,
                                    key_id=key.id if key else None, csrf=secrets.token_urlsafe(32),
                                    expires_at=_ends(expiry))
        signin_audit.succeeded(account.name, key, admin)
    return token, row


def seconds_left(row: ConsoleSession) -> int:
    return max(0, int((row.expires_at - utcnow()).total_seconds()))


def current() -> ConsoleSession | None:
    """The request's live session (and g.account, g.admin and g.api_key set from it), or None.
    A session whose key is revoked or expired is deleted here (g.session_ended says so)."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    row = (ConsoleSession.select(ConsoleSession, Account).join(Account)
           .where(ConsoleSession.token_hash == _hash(token)).first())
    if row is None:
        return None
    key = live_key(row.key_id, row.account.id) if row.key_id is not None else None
    if row.expires_at <= utcnow() or (row.key_id is not None and key is None):
        ConsoleSession.delete().where(ConsoleSession.id == row.id).execute()
        g.session_ended = True
        return None
    acct = row.account
    g.account, g.admin, g.api_key = Caller(acct.id, acct.name), row.admin, key
    return row


def sign_out() -> None:
    token = request.cookies.get(COOKIE)
    if token:
        ConsoleSession.delete().where(ConsoleSession.token_hash == _hash(token)).execute()


def _matches(expected: str | None, sent: str | None) -> bool:
    return bool(expected) and bool(sent) and hmac.compare_digest(expected, sent)


def csrf_ok(row: ConsoleSession, sent: str | None) -> bool:
    return _matches(row.csrf, sent)


def _keystream(n: int) -> bytes:
    """n bytes only this session's cookie can make (the database keeps only the cookie's hash)."""
    token, out = request.cookies.get(COOKIE, "").encode(), b""
    while len(out) < n:
        out += hmac.new(token, f"flash:{len(out)}".encode(), hashlib.sha256).digest()
    return out[:n]


def flash(row: ConsoleSession, text: str) -> None:
    """Keep a message (a new key) for the session's next page, sealed with its cookie's token."""
    data = text.encode()
    sealed = bytes(a ^ b for a, b in zip(data, _keystream(len(data))))
    ConsoleSession.update(flash=base64.b64encode(sealed).decode()).where(ConsoleSession.id == row.id).execute()


def take_flash(row: ConsoleSession) -> str | None:
    """The kept message, once: the next page shows it and it is gone."""
    if not row.flash or not ConsoleSession.update(flash=None).where(
            (ConsoleSession.id == row.id) & (ConsoleSession.flash == row.flash)).execute():
        return None
    sealed = base64.b64decode(row.flash)
    return bytes(a ^ b for a, b in zip(sealed, _keystream(len(sealed)))).decode(errors="replace")
