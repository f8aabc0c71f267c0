"""Reading the request log (SPEC §17): the caller's own calls, and any account's for admins.

`GET /api/v1/logs?limit=&before=&from=&to=&model=&status=&key_id=` answers newest first (by
the order rows were written, `id`); `before` is the `cursor` of the last row seen. A row's
bodies, when kept, are shown by `GET /api/v1/logs/<request_id>` to its account and to admins.
"""
from __future__ import annotations

from flask import Blueprint, g, request

from service.money import billing
from service.store.db import Account, RequestBody, RequestLog, epoch
from service.web import reports
from service.web.auth import authenticate, require_admin
from service.web.errors import InvalidRequest, NotFound

bp = Blueprint("logs", __name__)
CLASSES = ("cached", "cache_write_5m", "cache_write_1h", "reasoning")


def log_row(r: RequestLog) -> dict:
    return {"request_id": r.request_id, "created": epoch(r.created), "endpoint": r.endpoint, "model": r.model,
            "deployment": r.deployment, "key_id": r.key_id, "status": r.status, "error_code": r.error_code,
            "latency_ms": r.latency_ms, "upstream_ms": r.upstream_ms, "ttft_ms": r.ttft_ms,
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "tokens": {c: getattr(r, f"{c}_tokens") for c in CLASSES}, "cost": billing.to_credits(r.cost),
            "cache_hit": r.cache_hit, "estimated": r.estimated, "stream": r.stream,
            "client_request_id": r.client_request_id, "cursor": r.id}


def _int(name: str, low: int, high: int, default: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise InvalidRequest(f"'{name}' must be an integer between {low} and {high}", param=name)
    return int(raw)


def page(account_id: int) -> dict:
    """One page of an account's log rows, filtered by the query string."""
    rows, more = query(account_id)
    return {"data": [log_row(r) for r in rows], "has_more": more}


def query(account_id: int, default_limit: int = 20) -> tuple[list[RequestLog], bool]:
    """One page of an account's rows, filtered by the query string (`limit`, `before`, `from`,
    `to`, `model`, `status`, `key_id`), newest first, and whether older rows follow: one range
    scan of an `(account_id, …, id)` index read backwards. The API and the console's Logs page
    both read the log through this."""
    limit, before = _int("limit", 1, 100, default_limit), _int("before", 1, 2 ** 62)
    q = RequestLog.select().where(RequestLog.account_id == account_id)
    if before is not None:
        q = q.where(RequestLog.id < before)
    start, end = reports._time("from"), reports._time("to")
    if start is not None:
        q = q.where(RequestLog.created >= start)
    if end is not None:
        q = q.where(RequestLog.created < end)
    if request.args.get("model"):
        q = q.where(RequestLog.model == request.args["model"])
    status = _int("status", 100, 599)
    if status is not None:
        q = q.where(RequestLog.status == status)
    key_id = _int("key_id", 1, 2 ** 62)
    if key_id is not None:
        q = q.where(RequestLog.key_id == key_id)
    rows = list(q.order_by(RequestLog.id.desc()).limit(limit + 1))
    return rows[:limit], len(rows) > limit


def find(account_id: int | None, request_id: str) -> tuple[RequestLog, RequestBody | None]:
    """A row and its bodies (None: not kept); None for account_id: any account's (admins).
    Another account's row is NotFound, as a missing one is."""
    q = RequestLog.select().where(RequestLog.request_id == request_id[:255])
    if account_id is not None:
        q = q.where(RequestLog.account_id == account_id)
    row = q.first()
    if row is None:
        raise NotFound(f"No logged call with request id {request_id}", code="log_not_found")
    return row, RequestBody.get_or_none(RequestBody.request_id == row.request_id)


def one(account_id: int | None, request_id: str) -> dict:
    """A row with its bodies (when kept); None for account_id: any account's (admins)."""
    row, body = find(account_id, request_id)
    out = log_row(row)
    if body is not None:
        out["request_body"], out["response_body"] = body.request, body.response
    return out


@bp.get("/api/v1/logs")
def my_logs():
    authenticate()
    return page(g.account.id)


@bp.get("/api/v1/logs/<request_id>")
def my_log(request_id: str):
    authenticate()
    return one(None if g.admin else g.account.id, request_id)


@bp.get("/api/admin/logs")
def account_logs():
    require_admin()
    name = request.args.get("account")
    if not name:
        raise InvalidRequest("'account' is required", param="account")
    acct = Account.get_or_none(Account.name == billing.check_name(name))
    if acct is None:
        raise NotFound(f"No account named {name}", code="account_not_found")
    return page(acct.id)
