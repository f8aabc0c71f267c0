"""Spend reports: totals by model or by day, and the ledger as a streamed CSV file.

Both read a time range `from`..`to` (unix seconds or ISO 8601, UTC; `to` excluded; by default
the last 30 days). The export reads the ledger in pages of PAGE rows by id, each page on a
pooled connection given back before the page is sent, so its memory stays flat at any size.
"""
from __future__ import annotations

import csv
import datetime as dt
import io

from flask import Response, request
from peewee import fn

from core.usage import Usage
from service.money.billing import to_credits
from service.store.db import Account, LedgerEntry, db, utcnow
from service.web.errors import InvalidRequest

PAGE = 1000
DEFAULT_SPAN = dt.timedelta(days=30)
COLUMNS = ("created", "account", "request_id", "kind", "model", "prompt_tokens", "completion_tokens",
           "input_tokens", "cached_input_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens",
           "output_tokens", "reasoning_tokens", "amount", "estimated", "note", "key_id")


EARLIEST = dt.datetime(1970, 1, 1)  # no ledger row is older; and a range's bounds stay representable
LATEST = dt.datetime(9999, 12, 31)


def _time(name: str) -> dt.datetime | None:
    """The query's `name` as a naive UTC time, or 400 (not a time, or outside 1970..9999-12-31)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    bad = InvalidRequest(f"'{name}' must be a unix time or an ISO 8601 date or time between "
                         f"1970-01-01 and 9999-12-31 (UTC)", param=name)
    try:
        if raw.isascii() and raw.isdigit():
            parsed = dt.datetime.fromtimestamp(int(raw), dt.timezone.utc)
        else:
            parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if parsed.tzinfo:  # to UTC: may leave the years a datetime can hold (0001-01-01T00:00+01:00)
            parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError, OSError):
        raise bad from None
    if not EARLIEST <= parsed <= LATEST:
        raise bad
    return parsed


def time_range() -> tuple[dt.datetime, dt.datetime]:
    end = _time("to") or utcnow()
    start = _time("from") or max(end - DEFAULT_SPAN, EARLIEST)
    if start >= end:
        raise InvalidRequest("'from' must be before 'to'", param="from")
    return start, end


def summary(account_id: int) -> dict:
    """Charges per model or per day (UTC) in the request's range: calls, tokens per class, cost."""
    group_by = request.args.get("group_by", "model")
    if group_by not in GROUPS:
        raise InvalidRequest("'group_by' must be model, day or key", param="group_by")
    start, end = time_range()
    return spend(account_id, group_by, start, end)


def spend(account_id: int, group_by: str, start: dt.datetime, end: dt.datetime, key_id: int | None = None) -> dict:
    """Charges per model or per day (UTC) from start to end (excluded); of one API key's calls
    when `key_id` is given."""
    key = {"model": LedgerEntry.model, "day": fn.DATE(LedgerEntry.created).coerce(False),
           "key": LedgerEntry.key_id}[group_by]
    e = LedgerEntry
    where = [e.account == account_id, e.kind == "charge", e.created >= start, e.created < end]
    if key_id is not None:
        where.append(e.key_id == key_id)
    rows = (e.select(key.alias("key"), fn.COUNT(e.id).alias("calls"),
                     fn.SUM(e.prompt_tokens).alias("prompt"), fn.SUM(e.completion_tokens).alias("completion"),
                     fn.SUM(e.cached_tokens).alias("cached"), fn.SUM(e.cache_write_5m_tokens).alias("w5"),
                     fn.SUM(e.cache_write_1h_tokens).alias("w1"), fn.SUM(e.reasoning_tokens).alias("reasoning"),
                     fn.SUM(e.delta).alias("delta"))
            .where(*where).group_by(key).order_by(key).dicts())
    data = []
    for r in rows:
        tokens = Usage(int(r["prompt"] or 0), int(r["completion"] or 0), int(r["cached"] or 0),
                       int(r["w5"] or 0), int(r["w1"] or 0), int(r["reasoning"] or 0))
        data.append({group_by: _group_value(group_by, r["key"]), "calls": r["calls"], "prompt_tokens": tokens.prompt,
                     "completion_tokens": tokens.completion, "tokens": tokens.classes(),
                     "cost": to_credits(-int(r["delta"] or 0))})
    return {"group_by": group_by, "from": _iso(start), "to": _iso(end), "data": data,
            "total": {"calls": sum(d["calls"] for d in data),
                      "cost": to_credits(-sum(int(r["delta"] or 0) for r in rows))}}


GROUPS = ("model", "day", "key")


def _group_value(group_by: str, value):
    """A group's name: the model, the day, or the API key's id (None: calls made with a JWT)."""
    if group_by == "key":
        return None if value is None else int(value)
    return str(value)


def _iso(value: dt.datetime) -> str:
    return value.replace(microsecond=0).isoformat() + "Z"


def exact(micro: int) -> str:
    """Micro-credits as an exact decimal text with six places (no float in a bill)."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


def _line(e: LedgerEntry, name: str) -> list:
    classes = e.usage.classes()
    return [_iso(e.created), name, e.request_id, e.kind, e.model or "", e.prompt_tokens, e.completion_tokens,
            *classes.values(), exact(e.delta), "true" if e.estimated else "false", e.note or "",
            "" if e.key_id is None else e.key_id]


def _pages(account_id: int | None, start: dt.datetime, end: dt.datetime, key_id: int | None = None):
    """CSV text, a page of ledger rows at a time (keyset pagination: each page a fresh query)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    yield out.getvalue()
    last, names = 0, {}
    while True:
        out.seek(0)
        out.truncate()
        with db.connection_context():
            query = LedgerEntry.select().where((LedgerEntry.id > last) & (LedgerEntry.created >= start)
                                               & (LedgerEntry.created < end))
            if account_id is not None:
                query = query.where(LedgerEntry.account == account_id)
            if key_id is not None:
                query = query.where(LedgerEntry.key_id == key_id)
            page = list(query.order_by(LedgerEntry.id).limit(PAGE))
            missing = {e.account_id for e in page} - set(names)
            if missing:
                names.update((a.id, a.name) for a in Account.select(Account.id, Account.name)
                             .where(Account.id.in_(list(missing))))
        if not page:
            return
        for e in page:
            writer.writerow(_line(e, names.get(e.account_id, "")))
        last = page[-1].id
        yield out.getvalue()
        if len(names) > 10_000:
            names.clear()  # bounded, whatever the number of accounts


def export(account_id: int | None, filename: str) -> Response:
    """The ledger rows of one account (or all: None) in the range, as a streamed CSV download."""
    start, end = time_range()
    raw = request.args.get("key_id")
    if raw is not None and not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 2 ** 62):
        raise InvalidRequest("'key_id' must be a positive integer", param="key_id")
    key_id = int(raw) if raw is not None else None
    return Response(_pages(account_id, start, end, key_id), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})
