"""API key budgets (SPEC §17): credits a key may spend per UTC day, week, month, or in total.

A key's spend in a period is one `key_spend` row (spent, held). A hold counts against it in the
same guarded statement that takes the account's hold (service/money/billing.py), so no number of
concurrent calls in any number of processes takes a key past its budget; a settle moves what
the call held to what it spent; a release frees it. A hold belongs to the period it was taken
in: a call that began before midnight settles into the old period.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from peewee import fn

from core.errors import GatewayError, InsufficientCredits
from service.money.credits import to_credits
from service.store.db import KeySpend, LedgerEntry, utcnow

PERIODS = ("day", "week", "month", "total")
EPOCH = dt.datetime(1970, 1, 1)  # the one period of a `total` budget


class KeyBudgetExceeded(InsufficientCredits):
    code = "key_budget_exceeded"

    def __init__(self):
        GatewayError.__init__(self, "This API key's budget for its period cannot cover this call: what is "
                                    "left after its spend and the calls in flight is less than the call's hold")


def period_start(period: str, now: dt.datetime | None = None) -> dt.datetime:
    """The start (naive UTC) of the budget period that contains `now`."""
    now = now or utcnow()
    day = dt.datetime(now.year, now.month, now.day)
    if period == "day":
        return day
    if period == "week":  # ISO weeks: Monday 00:00 UTC
        return day - dt.timedelta(days=now.weekday())
    if period == "month":
        return dt.datetime(now.year, now.month, 1)
    return EPOCH


def period_end(period: str, start: dt.datetime) -> dt.datetime | None:
    """When the period beginning at `start` ends (None: a `total` budget never resets)."""
    if period == "day":
        return start + dt.timedelta(days=1)
    if period == "week":
        return start + dt.timedelta(days=7)
    if period == "month":
        return dt.datetime(start.year + start.month // 12, start.month % 12 + 1, 1)
    return None


@dataclass(frozen=True)
class Reservation:
    """What a hold must also fit in: a key's budget for the period it is taken in."""

    key_id: int
    period: dt.datetime
    budget: int


def reservation(key, now: dt.datetime | None = None) -> Reservation | None:
    """The budget a call with this API key row must fit in (None: no key, or no budget)."""
    if key is None or key.budget is None:
        return None
    return Reservation(key.id, period_start(key.budget_period or "total", now), key.budget)


def iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def parse(value: str | dt.datetime | None) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)


def _ensure_row(key_id: int, start: dt.datetime) -> None:
    """The key's row for a period, created empty when missing (inside the caller's transaction)."""
    KeySpend.insert(key_id=key_id, period_start=start, spent=0, held=0).on_conflict_ignore().execute()


def take(found: Reservation, amount: int) -> None:
    """Inside the hold's transaction (SQLite): raise the key's held amount if it fits, else 402."""
    _ensure_row(found.key_id, found.period)
    taken = (KeySpend.update(held=KeySpend.held + amount)
             .where((KeySpend.key_id == found.key_id) & (KeySpend.period_start == found.period)
                    & (KeySpend.spent + KeySpend.held + amount <= found.budget))
             .execute())
    if not taken:
        raise KeyBudgetExceeded()


def spend(found: Reservation, amount: int) -> None:
    """Inside a charge's transaction (SQLite; a charge with no hold, service/money/billing.charge):
    raise the key's spend if it fits in the budget, else 402."""
    _ensure_row(found.key_id, found.period)
    taken = (KeySpend.update(spent=KeySpend.spent + amount)
             .where((KeySpend.key_id == found.key_id) & (KeySpend.period_start == found.period)
                    & (KeySpend.spent + KeySpend.held + amount <= found.budget))
             .execute())
    if not taken:
        raise KeyBudgetExceeded()


def settle(key_id: int | None, period: dt.datetime | None, charge: int, give_back: bool = False) -> None:
    """Inside a settle's transaction (SQLite), after its hold was taken back: the charge counts
    as the key's spend in the period its hold was taken in (`give_back`: a voided charge, a
    negative amount, leaves it)."""
    if period is not None and key_id is not None and (charge > 0 or give_back):
        _ensure_row(key_id, period)
        (KeySpend.update(spent=KeySpend.spent + charge)
         .where((KeySpend.key_id == key_id) & (KeySpend.period_start == period)).execute())


def release(hold_key: int | None, hold_period: dt.datetime | None, amount: int) -> None:
    """Inside a release's transaction: the key's period gives back what the hold took."""
    if hold_period is not None and amount:
        (KeySpend.update(held=KeySpend.held - amount)
         .where((KeySpend.key_id == hold_key) & (KeySpend.period_start == hold_period)).execute())


def open_period(key) -> None:
    """When a budget is set or its period changes: the current period's row, if it is new, starts
    from what the key's ledger rows already charged in that period (a budget set mid-month counts
    the month's spend so far)."""
    if key.budget is None:
        return
    start = period_start(key.budget_period or "total")
    spent = -(LedgerEntry.select(fn.COALESCE(fn.SUM(LedgerEntry.delta), 0))
              .where((LedgerEntry.key_id == key.id) & (LedgerEntry.kind == "charge")
                     & (LedgerEntry.created >= start)).scalar() or 0)
    KeySpend.insert(key_id=key.id, period_start=start, spent=max(int(spent), 0), held=0) \
        .on_conflict_ignore().execute()


def this_period(key) -> dict | None:
    """A budgeted key's current period in micro-credits: `budget`, `period`, `spent` (holds
    included, what the budget check compares), `held`, `start` and `end` (None: never resets);
    None when the key has no budget."""
    if key.budget is None:
        return None
    period = key.budget_period or "total"
    start = period_start(period)
    row = KeySpend.get_or_none((KeySpend.key_id == key.id) & (KeySpend.period_start == start))
    spent, held = (row.spent, row.held) if row else (0, 0)
    return {"budget": key.budget, "period": period, "spent": spent + held, "held": held, "start": start,
            "end": period_end(period, start)}


def usage(key) -> dict:
    """A key's budget fields as the admin API shows them (credits): budget, period, what it spent
    this period (holds included) and when the period resets."""
    now = this_period(key)
    if now is None:
        return {"budget": None, "budget_period": key.budget_period, "spent": None, "held": None,
                "period_resets_at": None}
    end = now["end"]
    return {"budget": to_credits(key.budget), "budget_period": now["period"], "spent": to_credits(now["spent"]),
            "held": to_credits(now["held"]), "period_started_at": now["start"].isoformat() + "Z",
            "period_resets_at": None if end is None else end.isoformat() + "Z"}
