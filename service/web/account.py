"""The caller's own account: balance and ledger."""
from __future__ import annotations

from flask import Blueprint, g

from core import prices
from service.money.billing import to_credits
from service.store.db import Account, LedgerEntry, epoch
from service.web import reports
from service.web.auth import authenticate
from service.web.body import int_arg

bp = Blueprint("account", __name__)
bp.before_request(authenticate)


def account_body(acct: Account) -> dict:
    return {"account": acct.name, "balance": to_credits(acct.balance),
            "held": to_credits(acct.held), "currency": "credits"}


def ledger_row(e: LedgerEntry) -> dict:
    row = {"request_id": e.request_id, "model": e.model, "prompt_tokens": e.prompt_tokens,
           "completion_tokens": e.completion_tokens, "cost": to_credits(-e.delta), "kind": e.kind,
           "estimated": e.estimated, "created": epoch(e.created), "key_id": e.key_id}
    if e.kind == "overrun":
        row["absorbed"] = to_credits(e.absorbed)
    if e.kind == "charge":
        row |= breakdown(e)
        row["cache_hit"] = bool(e.cache_hit)
        if e.parallel_group:
            row["parallel_group"] = e.parallel_group
    return row


def breakdown(e: LedgerEntry) -> dict:
    """A charge's evidence: tokens per class and, when recorded, the unit prices applied (credits
    per 1k tokens) and the cost of each class."""
    tokens = e.usage
    out = {"tokens": tokens.classes()}
    if e.prices:
        out["prices"] = {c: to_credits(v) for c, v in e.prices.items()}
        out["cost_details"] = {c: to_credits(v) for c, v in prices.costs(e.prices, tokens).items()}
    return out


def ledger_page(account_id: int, limit: int, before: int | None) -> dict:
    """Newest first; `before` is a ledger row's position cursor (the `id` of the last seen row)."""
    query = LedgerEntry.select().where(LedgerEntry.account == account_id)
    if before is not None:
        query = query.where(LedgerEntry.id < before)
    rows = list(query.order_by(LedgerEntry.id.desc()).limit(limit + 1))
    data = [ledger_row(e) | {"cursor": e.id} for e in rows[:limit]]
    return {"data": data, "has_more": len(rows) > limit}


@bp.get("/api/v1/account")
def account():
    return account_body(Account.get_by_id(g.account.id))


@bp.get("/api/v1/usage")
def usage():
    limit = int_arg("limit", 20, 1, 100)
    before = int_arg("before", None, 1, 2 ** 62)
    return ledger_page(g.account.id, limit, before)


@bp.get("/api/v1/usage/summary")
def usage_summary():
    return reports.summary(g.account.id)


@bp.get("/api/v1/usage/export.csv")
def usage_export():
    return reports.export(g.account.id, "tollgate-ledger.csv")
