"""Admin API: catalogue rows, credits, account view, API keys (admin role only)."""
from __future__ import annotations

from flask import Blueprint, current_app, g
from peewee import JOIN, fn

from service import seed
from service.money import billing
from service.store.db import AIModel, Account, AlertOutbox, ApiKey, Hold, ModelPrice, epoch, utcnow
from service.web import audit, key_admin, reports
from service.web.account import account_body, ledger_page
from service.web.auth import create_key, require_admin
from service.web.body import json_object
from core.errors import clip
from service.web.errors import InvalidRequest, NotFound

bp = Blueprint("admin", __name__, url_prefix="/api/admin")
bp.before_request(require_admin)


def _json() -> dict:
    return json_object()


def model_body(row: AIModel) -> dict:
    out = {f: getattr(row, f) for f in seed.FIELDS if f not in seed.PRICES}
    for f in seed.PRICES:
        value = getattr(row, f)
        out[f] = None if value is None else billing.to_credits(value)
    return out


def _model(model_id: int) -> AIModel:
    row = AIModel.get_or_none(AIModel.id == model_id) if model_id <= seed.INT_MAX else None
    if row is None:
        raise NotFound(f"No model with id {model_id}", code="model_not_found")
    return row


def _changed() -> None:
    current_app.extensions["tollgate"].registry.invalidate()


@bp.get("/models")
def list_models():
    return {"data": [model_body(r) for r in AIModel.select().order_by(AIModel.id)]}


@bp.get("/models/<int:model_id>")
def get_model(model_id: int):
    return model_body(_model(model_id))


@bp.post("/models")
def create_model():
    row = seed.validate(_json(), "model")
    if row["id"] is None:
        row["id"] = (AIModel.select(fn.MAX(AIModel.id)).scalar() or 0) + 1
    if AIModel.get_or_none(AIModel.id == row["id"]):
        raise InvalidRequest(f"model id {row['id']} already exists", param="id")
    with billing.write_tx():
        seed.upsert([row])
        audit.record_admin("model.create", f"model:{row['id']}", _json())
    _changed()
    return model_body(_model(row["id"])), 201


@bp.patch("/models/<int:model_id>")
def update_model(model_id: int):
    current = model_body(_model(model_id))
    changes = seed.validate(_json(), f"model {model_id}", partial=True)
    if changes.get("id", model_id) != model_id:
        raise InvalidRequest("a model's id cannot change", param="id")
    merged = {**current, **{k: v for k, v in _json().items()}}
    row = seed.validate(merged, f"model {model_id}")
    with billing.write_tx():
        seed.upsert([row])
        audit.record_admin("model.update", f"model:{model_id}", _json())
    _changed()
    return model_body(_model(model_id))


@bp.get("/models/<int:model_id>/prices")
def model_prices(model_id: int):
    """The row's price history: prices per class (credits per 1k tokens) and when each took effect."""
    _model(model_id)
    rows = (ModelPrice.select().where(ModelPrice.model == model_id)
            .order_by(ModelPrice.effective_from, ModelPrice.id))
    return {"data": [{"effective_from": epoch(p.effective_from),
                      "prices": {c: billing.to_credits(v) for c, v in p.prices.items()}} for p in rows]}


@bp.delete("/models/<int:model_id>")
def delete_model(model_id: int):
    with billing.write_tx():
        _model(model_id).delete_instance()
        audit.record_admin("model.delete", f"model:{model_id}")
    _changed()
    return {"id": model_id, "deleted": True}


def _account(name: str) -> Account:
    billing.check_name(name)
    found = Account.get_or_none(Account.name == name)
    if found is None:
        raise NotFound(f"No account named {clip(name)}", code="account_not_found")
    return found


@bp.post("/accounts/<name>/credits")
def credits(name: str):
    body = _json()
    if "amount" not in body:
        raise InvalidRequest("'amount' is required", param="amount")
    note = body.get("note")
    if note is not None and not isinstance(note, str):
        raise InvalidRequest("'note' must be a string", param="note")
    acct = billing.account(name, current_app.config["NEW_ACCOUNT_CREDITS_MICRO"])
    amount = billing.to_micro(body["amount"])
    with billing.write_tx():  # the audit row commits with the change, or neither does
        done = billing.credit(acct.id, amount, note, g.account.name)
        audit.record_admin("credits.topup" if amount > 0 else "credits.adjust", f"account:{name}",
                           {"amount": billing.to_credits(amount), "note": note})
    return account_body(done)


@bp.get("/accounts/<name>")
def account(name: str):
    acct = _account(name)
    holds = [{"request_id": h.request_id, "amount": billing.to_credits(h.amount),
              "expires_at": h.expires_at.isoformat() + "Z"}
             for h in Hold.select().where(Hold.account == acct.id)]
    return account_body(acct) | {"log_bodies": acct.log_bodies, "holds": holds,
                                 "ledger": ledger_page(acct.id, 50, None)["data"]}


@bp.get("/accounts/<name>/usage/summary")
def account_summary(name: str):
    return reports.summary(_account(name).id)


@bp.get("/accounts/<name>/usage/export.csv")
def account_export(name: str):
    return reports.export(_account(name).id, "tollgate-ledger.csv")


@bp.get("/usage/export.csv")
def export_all():
    """Every account's ledger rows in the range."""
    return reports.export(None, "tollgate-ledger-all.csv")


@bp.patch("/accounts/<name>")
def update_account(name: str):
    """An account's own low-balance threshold (credits; null: the LOW_BALANCE_THRESHOLD setting)
    and whether the request log keeps its calls' bodies (`log_bodies`)."""
    acct = _account(name)
    body = _json()
    unknown = sorted(set(body) - {"low_balance_threshold", "log_bodies"})
    if unknown:
        raise InvalidRequest(f"'{clip(unknown[0])}' is not an account field", param=unknown[0])
    changes = {}
    if "low_balance_threshold" in body:
        changes["low_balance_threshold"] = billing.limit_micro(body["low_balance_threshold"],
                                                               "low_balance_threshold")
    if "log_bodies" in body:
        if not isinstance(body["log_bodies"], bool):
            raise InvalidRequest("'log_bodies' must be true or false", param="log_bodies")
        changes["log_bodies"] = body["log_bodies"]
    with billing.write_tx():
        if changes:
            Account.update(**changes).where(Account.id == acct.id).execute()
        audit.record_admin("account.update", f"account:{name}", body)
    log = current_app.extensions.get("tollgate_log")
    if log is not None:
        log.forget(acct.id)  # this process reads the new flag on the next call
    acct = Account.get_by_id(acct.id)
    threshold = acct.low_balance_threshold
    return account_body(acct) | {"low_balance_threshold": None if threshold is None else billing.to_credits(threshold),
                                 "log_bodies": acct.log_bodies}


@bp.get("/alerts")
def list_alerts():
    """The newest alerts (low balance; deployment_disabled, which is no account's and says what in
    `detail`) and their delivery record."""
    rows = (AlertOutbox.select(AlertOutbox, Account.name).join(Account, JOIN.LEFT_OUTER)
            .order_by(AlertOutbox.id.desc()).limit(100))
    return {"data": [{"id": f"alert_{r.id}", "account": r.account.name if r.account_id else None, "type": r.kind,
                      "request_id": r.request_id, "balance": billing.to_credits(r.balance),
                      "threshold": billing.to_credits(r.threshold), "created": epoch(r.created),
                      "attempts": r.attempts, "delivered": epoch(r.delivered_at) or None,
                      "last_status": r.last_status, "last_error": r.last_error,
                      **({"detail": r.detail} if r.detail is not None else {})} for r in rows]}


@bp.post("/keys")
def create_api_key():
    body = _json()
    name = body.get("account")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("'account' is required", param="account")
    rpm, models, label = body.get("rpm"), body.get("models"), body.get("name")
    for field in ("rpm", "max_concurrent"):
        value = body.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 1 <= value <= 2 ** 31 - 1):
            raise InvalidRequest(f"'{field}' must be a positive integer", param=field)
    if models is not None and (not isinstance(models, list)
                               or not all(isinstance(m, str) for m in models)):
        raise InvalidRequest("'models' must be a list of model names", param="models")
    if label is not None and not isinstance(label, str):
        raise InvalidRequest("'name' must be a string", param="name")
    extra = key_admin.budget_fields(body)
    if extra.get("budget") is not None and extra.get("budget_period") is None:
        extra["budget_period"] = "total"
    acct = billing.account(name, current_app.config["NEW_ACCOUNT_CREDITS_MICRO"])
    with billing.write_tx():
        row, plain = create_key(acct, label, rpm, models, key_admin.expiry(body.get("expires_at")),
                                body.get("max_concurrent"))
        if extra:
            ApiKey.update(**extra).where(ApiKey.id == row.id).execute()
            row = ApiKey.get_by_id(row.id)
        audit.record_admin("key.create", f"key:{row.id}", {"account": acct.name, "name": row.name,
                                                             **key_admin.shown(extra)})
    return {"id": row.id, "key": plain, "account": acct.name, "name": row.name,
            "created": epoch(row.created), "budget": extra.get("budget") and billing.to_credits(extra["budget"]),
            "budget_period": row.budget_period, "log_bodies": row.log_bodies}, 201


@bp.delete("/keys/<int:key_id>")
def revoke_key(key_id: int):
    with billing.write_tx():
        taken = (ApiKey.update(revoked_at=utcnow())
                 .where((ApiKey.id == key_id) & ApiKey.revoked_at.is_null()).execute())
        if not taken and not ApiKey.get_or_none(ApiKey.id == key_id):
            raise NotFound(f"No API key with id {key_id}", code="key_not_found")
        if taken:
            audit.record_admin("key.revoke", f"key:{key_id}")
    return {"id": key_id, "revoked": True}
