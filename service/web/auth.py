"""Who is calling (SPEC §5): a JWT (HS256 shared secret or RS256/ES256 public key) or an `sk-` API key."""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from dataclasses import dataclass

import jwt as pyjwt
from flask import current_app, g, request
from flask_jwt_extended import create_access_token, decode_token
from flask_jwt_extended.exceptions import JWTExtendedException

from service.money import billing
from service.store.db import Account, ApiKey, utcnow
from service.store.prepared import Prepared
from service.web.errors import AuthenticationFailed, Forbidden

LOCAL_ACCOUNT = "local"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        return None
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Authorization header must be 'Bearer <token>'")
    return token.strip()


VERIFIED_MAX = 10_000  # tokens remembered per process


def _claims(token: str) -> dict:
    """Verified claims; a token verified once is remembered (same bytes, same key, same answer)
    and only its expiry is checked again."""
    verified = current_app.extensions["tollgate"].verified
    claims = verified.get(token)
    if claims is None:
        try:
            claims = decode_token(token)
        except pyjwt.ExpiredSignatureError:
            raise AuthenticationFailed("Token has expired", code="token_expired") from None
        except (pyjwt.InvalidTokenError, JWTExtendedException, ValueError):
            raise AuthenticationFailed("Invalid token") from None
        _acceptable(claims, current_app.config)
        if len(verified) >= VERIFIED_MAX:
            verified.clear()
        verified[token] = claims
    elif isinstance(claims.get("exp"), (int, float)) and claims["exp"] <= time.time():
        verified.pop(token, None)
        raise AuthenticationFailed("Token has expired", code="token_expired")
    return claims


def _acceptable(claims: dict, conf) -> None:
    """An access token with an expiry (unless JWT_ALLOW_NO_EXP) no further off than
    JWT_MAX_LIFETIME_SECONDS; refresh tokens are refused."""
    if claims.get("type", "access") != "access":
        raise AuthenticationFailed("Only access tokens are accepted (this is a refresh token)")
    exp = claims.get("exp")
    if exp is None:
        if not conf["JWT_ALLOW_NO_EXP"]:
            raise AuthenticationFailed("Token has no expiry (exp claim)")
        return
    longest = conf["JWT_MAX_LIFETIME_SECONDS"]
    start = claims.get("iat") if isinstance(claims.get("iat"), (int, float)) else time.time()
    if longest and exp - start > longest:
        raise AuthenticationFailed(f"Token lives longer than the allowed {longest} seconds")


def _from_jwt(token: str) -> tuple[Account, bool]:
    claims = _claims(token)
    name = claims.get("sub")
    if not isinstance(name, str) or not name or len(name) > 255 or billing.CONTROL.search(name):
        raise AuthenticationFailed("Token has no valid subject")
    return _account_named(name), claims.get("role") == "admin"


@dataclass(frozen=True)
class Caller:
    """Who pays for this request (accounts are never renamed or deleted, so ids can be cached)."""

    id: int
    name: str


def _account_named(name: str) -> Caller:
    """The account for a JWT subject, created on first sight; cached per app (process)."""
    known = current_app.extensions["tollgate"].accounts
    caller = known.get(name)
    if caller is None:
        acct = billing.account(name, current_app.config["NEW_ACCOUNT_CREDITS_MICRO"])
        caller = known.setdefault(name, Caller(acct.id, acct.name))
    return caller


_BY_HASH = Prepared(lambda digest: ApiKey.select(ApiKey, Account).join(Account)
                    .where(ApiKey.key_hash == digest).limit(1))
_BY_ID = Prepared(lambda key_id: ApiKey.select().where(ApiKey.id == key_id).limit(1))


def _from_key(token: str) -> tuple[Account, ApiKey]:
    key = _BY_HASH.first(key_hash(token))
    _check_live(key)
    key.ancestors = _ancestors(key)
    return key.account, key


def _check_live(key: ApiKey | None) -> None:
    if key is None or key.revoked_at is not None:
        raise AuthenticationFailed("Invalid API key")
    if key.expires_at is not None and key.expires_at <= utcnow():
        raise AuthenticationFailed("API key has expired", code="token_expired")


LINEAGE_MAX = 16  # keys minted from a key's console session, from that key's session, ...


def _ancestors(key: ApiKey) -> list[ApiKey]:
    """The keys this one was minted under (from a key's console session), nearest first: a key
    lives only while they do, and their limits bind it too (service/web/console/keys.py)."""
    found, parent_id = [], key.parent_id
    while parent_id is not None and len(found) < LINEAGE_MAX:
        parent = _BY_ID.first(parent_id)
        if parent is None or parent.revoked_at is not None or (
                parent.expires_at is not None and parent.expires_at <= utcnow()):
            raise AuthenticationFailed("Invalid API key (the key it was made from is revoked or expired)")
        found.append(parent)
        parent_id = parent.parent_id
    return found


def live_key(key_id: int, account_id: int) -> ApiKey | None:
    """The account's key `key_id` with its ancestors while it and they are live, else None."""
    key = ApiKey.get_or_none((ApiKey.id == key_id) & (ApiKey.account == account_id))
    try:
        _check_live(key)
        key.ancestors = _ancestors(key)
    except AuthenticationFailed:
        return None
    return key


def lineage(key: ApiKey | None) -> list[ApiKey]:
    """A key and the keys it was minted under (empty without a key)."""
    return [] if key is None else [key, *getattr(key, "ancestors", [])]


def allowed_models(key: ApiKey | None) -> set | None:
    """The model names a key (and every key it was minted under) may use; None: any."""
    allowed = None
    for each in lineage(key):
        if each.models:
            allowed = set(each.models) if allowed is None else allowed & set(each.models)
    return allowed


def authenticate() -> None:
    """Set g.account, g.admin and g.api_key for this request, or answer 401."""
    if request.method == "OPTIONS":  # CORS preflight carries no credentials
        return
    token = _bearer()
    g.api_key, g.admin = None, False
    if token is None:
        if current_app.config["AUTH_REQUIRED"]:
            raise AuthenticationFailed("Missing bearer token", code="missing_token")
        g.account = _account_named(LOCAL_ACCOUNT)
        return
    if token.startswith("sk-"):
        g.account, g.api_key = _from_key(token)
    else:
        g.account, g.admin = _from_jwt(token)


def require_admin() -> None:
    if request.method == "OPTIONS":
        return
    authenticate()
    if not g.admin:
        raise Forbidden("Admin role required")


def issue_token(name: str, admin: bool = False, expires_in: int | None = 86400) -> str:
    """Mint an HS256 token for an account (needs an app context with JWT_SECRET_KEY)."""
    claims = {"role": "admin"} if admin else {}
    delta = dt.timedelta(seconds=expires_in) if expires_in else False
    return create_access_token(identity=name, additional_claims=claims, expires_delta=delta)


def create_key(account: Account, name: str | None = None, rpm: int | None = None,
               models: list | None = None, expires_at: dt.datetime | None = None,
               max_concurrent: int | None = None, parent_id: int | None = None) -> tuple[ApiKey, str]:
    """A new API key; the plain key is returned here only."""
    plain = new_key()
    row = ApiKey.create(account=account, name=name, key_hash=key_hash(plain), prefix=plain[:7],
                        rpm=rpm, models=models, expires_at=expires_at, max_concurrent=max_concurrent,
                        parent_id=parent_id)
    return row, plain
