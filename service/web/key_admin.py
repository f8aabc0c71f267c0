"""Admin API for one API key (SPEC §17): its limits, budget and spend this period.

`POST /api/admin/keys` (service/web/admin.py) takes the same fields through `fields()`.
"""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, request

from service.money import billing, budgets
from service.store.db import Account, ApiKey, epoch
from service.web import audit
from service.web.auth import require_admin
from service.web.body import json_object
from service.web.errors import InvalidRequest, NotFound

bp = Blueprint("key_admin", __name__, url_prefix="/api/admin")
bp.before_request(require_admin)

EDITABLE = ("name", "rpm", "max_concurrent", "models", "expires_at", "budget", "budget_period", "log_bodies")


def _positive(body: dict, name: str):
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 1 <= value <= 2 ** 31 - 1):
        raise InvalidRequest(f"'{name}' must be a positive integer", param=name)
    return value


def budget_fields(body: dict) -> dict:
    """`budget` (credits, null: none), `budget_period` and `log_bodies` from a key's body, as
    column values; only the fields the body names."""
    out = {}
    if "budget" in body:
        out["budget"] = billing.limit_micro(body["budget"], "budget")
    if "budget_period" in body:
        period = body["budget_period"]
        if period is not None and period not in budgets.PERIODS:
            raise InvalidRequest("'budget_period' must be day, week, month or total", param="budget_period")
        out["budget_period"] = period
    if "log_bodies" in body:
        if not isinstance(body["log_bodies"], bool):
            raise InvalidRequest("'log_bodies' must be true or false", param="log_bodies")
        out["log_bodies"] = body["log_bodies"]
    return out


def expiry(value) -> dt.datetime | None:
    """A key's `expires_at` (a unix time or an ISO 8601 time; null: never) as naive UTC."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidRequest("'expires_at' must be a unix time or an ISO 8601 time", param="expires_at")
    try:
        if isinstance(value, int):
            return dt.datetime.fromtimestamp(value, dt.timezone.utc).replace(tzinfo=None)
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest("'expires_at' must be a unix time or an ISO 8601 time",
                             param="expires_at") from None
    return parsed.astimezone(dt.timezone.utc).replace(tzinfo=None) if parsed.tzinfo else parsed


def fields(body: dict) -> dict:
    """Every editable field the body names, validated, as column values."""
    unknown = sorted(set(body) - set(EDITABLE))
    if unknown:
        raise InvalidRequest(f"'{unknown[0]}' is not an API key field", param=unknown[0])
    out = {f: _positive(body, f) for f in ("rpm", "max_concurrent") if f in body}
    if "models" in body:
        models = body["models"]
        if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
            raise InvalidRequest("'models' must be a list of model names", param="models")
        out["models"] = models
    if "name" in body:
        if body["name"] is not None and not isinstance(body["name"], str):
            raise InvalidRequest("'name' must be a string", param="name")
        out["name"] = body["name"]
    if "expires_at" in body:
        out["expires_at"] = expiry(body["expires_at"])
    return out | budget_fields(body)


def key_body(row: ApiKey) -> dict:
    """A key as the admin API shows it (never the key itself): limits, budget, spend this period."""
    return {"id": row.id, "account": Account.get_by_id(row.account_id).name, "name": row.name,
            "prefix": row.prefix, "rpm": row.rpm, "max_concurrent": row.max_concurrent, "models": row.models,
            "expires_at": epoch(row.expires_at) or None, "revoked": row.revoked_at is not None,
            "created": epoch(row.created), "log_bodies": row.log_bodies, **budgets.usage(row)}


def _key(key_id: int) -> ApiKey:
    row = ApiKey.get_or_none(ApiKey.id == key_id) if key_id <= 2 ** 31 - 1 else None
    if row is None:
        raise NotFound(f"No API key with id {key_id}", code="key_not_found")
    return row


@bp.get("/keys")
def list_keys():
    """An account's keys (`?account=`), newest first."""
    name = request.args.get("account")
    if not name:
        raise InvalidRequest("'account' is required", param="account")
    acct = Account.get_or_none(Account.name == billing.check_name(name))
    rows = [] if acct is None else ApiKey.select().where(ApiKey.account == acct.id).order_by(ApiKey.id.desc())
    return {"data": [key_body(r) for r in rows]}


@bp.get("/keys/<int:key_id>")
def get_key(key_id: int):
    return key_body(_key(key_id))


@bp.patch("/keys/<int:key_id>")
def update_key(key_id: int):
    """Change a key's limits, budget or body logging; a new budget (or period) starts from what
    the key already charged in the current period."""
    _key(key_id)
    return key_body(change(key_id, fields(json_object())))


def change(key_id: int, changes: dict) -> ApiKey:
    """Write validated changes (from `fields()`) to a key and audit them (the API's PATCH and the
    console's key page); a new budget (or period) starts from what the key already charged in the
    current period. The key's row, as it is now."""
    row = _key(key_id)
    if changes.get("budget") is not None:
        _mints_nothing(row)
    if "budget" in changes and changes["budget"] is not None and "budget_period" not in changes:
        changes["budget_period"] = row.budget_period or "total"
    if changes:
        with billing.write_tx():
            ApiKey.update(**changes).where(ApiKey.id == key_id).execute()
            row = _key(key_id)
            if "budget" in changes or "budget_period" in changes:
                budgets.open_period(row)
        audit.record_admin("key.update", f"key:{key_id}", shown(changes))
    return row


def _mints_nothing(row: ApiKey) -> None:
    """A budget binds its own key's calls only (the hold counts one key's budget), so a key that
    live keys were minted from (in its console session) takes none: they would spend past it."""
    minted = ApiKey.select().where((ApiKey.parent_id == row.id) & ApiKey.revoked_at.is_null()).count()
    if minted:
        raise InvalidRequest(f"'budget' cannot be set on a key that {minted} live key(s) were minted from: "
                             "a budget binds its own key's calls only; revoke them first", param="budget")


def shown(changes: dict) -> dict:
    """Changed fields for the audit detail, in the API's units."""
    out = {}
    for k, v in changes.items():
        if k == "budget" and v is not None:
            v = billing.to_credits(v)
        elif k == "expires_at" and v is not None:
            v = epoch(v)
        out[k] = v
    return out
