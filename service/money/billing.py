"""Credits (SPEC §9): hold before a call, settle after, release on failure, reap what crashed.

Every balance change is one guarded UPDATE inside a transaction; nothing is
read, changed in Python and written back.
"""
from __future__ import annotations

import datetime as dt
import os
import json
import re
import uuid

from peewee import IntegrityError, PostgresqlDatabase, __exception_wrapper__

from service.store.db import Account, AlertOutbox, Hold, LedgerEntry, db, is_postgres, utcnow
from service.store.db import DB_ERRORS, reconnect  # noqa: F401 - billing's callers use them as billing's
from core.errors import InsufficientCredits, InvalidRequest
from service.money import budgets
from service.money import credits
from service.money.group_commit import GroupCommit

# billing.to_credits and the rest, as callers know them (the conversions live in credits.py)
to_credits, to_micro, limit_micro = credits.to_credits, credits.to_micro, credits.limit_micro
MAX_BALANCE = 2 ** 62  # micro-credits: far above any real balance, far below overflow
CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def check_name(name, param: str = "account") -> str:
    """An account name: 1 to 255 characters, none of them control characters or NUL."""
    if not isinstance(name, str) or not 1 <= len(name) <= 255 or CONTROL.search(name):
        raise InvalidRequest(f"'{param}' must be 1 to 255 characters without control characters",
                             param=param)
    return name


def write_tx():
    """A transaction that takes the write lock at once (SQLite) so writers queue, not fail."""
    if not is_postgres(db):
        return db.atomic("IMMEDIATE")
    return db.atomic()


def _postgres() -> bool:
    return is_postgres(db)


# On PostgreSQL holds and settles go through group commit: whatever concurrent calls of one
# process have queued runs as one statement calling the batch functions of migration 3, which
# make exactly the guarded single-row changes of the SQLite transactions below, item by item.
# A batch of holds only commits without waiting for its WAL flush: if the database crashed
# before the flush, the holds and their `held` increments vanish together, nothing stays
# locked, and each call's settle then charges without a hold. So does a batch whose charges
# are all free (cache hits at the default hit price, 0): such a row moves no balance and no
# budget, so a crash before the flush loses only the record of a hit that cost nothing, never
# money, and the balance still equals top-ups minus charges. Settles and priced charges wait
# for the flush.
PG_HOLD = ("tollgate_hold(%s::text[], %s::bigint[], %s::bigint[], %s::timestamp[], %s::text[], %s::text[], "
           "%s::timestamp[], %s::bigint[], %s::timestamp[], %s::bigint[])")
PG_SETTLE = ("tollgate_settle(%s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::bigint[], "
             "%s::bigint[], %s::boolean[], %s::timestamp[], %s::bigint[], %s::bigint[], %s::bigint[], "
             "%s::bigint[], %s::bigint[], %s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::timestamp[])")
PG_CHARGE = ("tollgate_charge(%s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[], "
             "%s::timestamp[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::text[], %s::bigint[], "
             "%s::bigint[], %s::timestamp[], %s::bigint[], %s::boolean[])")
PG_CHARGE_FIELDS = ("rid", "account", "model", "prompt", "completion", "amount", "now", "cached",
                    "cache_write_5m", "cache_write_1h", "reasoning", "prices", "threshold", "key", "period",
                    "budget", "cache_hit")
PG_HOLD_FIELDS = ("rid", "account", "amount", "expires", "owner", "model", "now", "key", "period", "budget")
PG_SETTLE_FIELDS = ("rid", "account", "model", "prompt", "completion", "charge", "estimated", "now",
                    "overrun", "cached", "cache_write_5m", "cache_write_1h", "reasoning", "prices",
                    "threshold", "deployment", "key_id", "period")


class _BatchLink:
    """The group commit's own PostgreSQL connection, outside the pool. One batch runs at a time
    in a process, so one connection serves every leader; taking it from the pool could wait for
    ever: the callers queued behind a leader may hold every pooled connection (a request takes
    one for its lookups before it holds), and they wait for that leader."""

    def __init__(self):
        self.conn = self.database = None
        os.register_at_fork(after_in_child=self.forget)  # the parent's socket is not ours

    def forget(self) -> None:
        self.conn = None

    def execute(self, sql: str, params: list) -> tuple:
        with __exception_wrapper__:  # psycopg2's errors as peewee's (DB_ERRORS)
            try:
                if self.conn is None or self.conn.closed or self.database is not db.obj:
                    self.close()
                    self.conn = PostgresqlDatabase._connect(db.obj)  # autocommit, as the pool's
                    self.database = db.obj
                with self.conn.cursor() as cursor:
                    cursor.execute(sql, params)
                    return cursor.fetchone()
            except Exception:
                self.close()  # a broken link: the next batch opens a new one
                raise

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a dead link may fail too
                pass


_link = _BatchLink()


def _pg_write(jobs: list) -> None:
    """Run queued holds, settles and charges as one statement (on the group commit's own
    connection). A batch of holds and free charges only commits without waiting for its WAL
    flush."""
    holds = [j for j in jobs if j.kind == "hold"]
    settles = [j for j in jobs if j.kind == "settle"]
    charges = [j for j in jobs if j.kind == "charge"]
    calls, params = [], []
    groups = ((holds, PG_HOLD, PG_HOLD_FIELDS), (settles, PG_SETTLE, PG_SETTLE_FIELDS),
              (charges, PG_CHARGE, PG_CHARGE_FIELDS))
    for group, call, fields in groups:
        if group:
            calls.append(call)
            params += [[j.args[f] for j in group] for f in fields]
    durable = settles or any(j.args["amount"] for j in charges)
    sql = ("" if durable else "SET LOCAL synchronous_commit TO off; ") + "SELECT " + ", ".join(calls)
    results = iter(_link.execute(sql, params))
    for group in (holds, settles, charges):
        if group:
            for job, ok in zip(group, next(results)):
                job.result = ok


_group = GroupCommit(_pg_write)


def account(name: str, new_credits: int = 0) -> Account:
    """The account for a name, created on first sight with `new_credits`."""
    check_name(name)
    found = Account.get_or_none(Account.name == name)
    if found is not None:
        return found
    try:
        with write_tx():
            created = Account.create(name=name)
            if new_credits:
                _credit(created.id, new_credits, "topup", "new account credits")
        return Account.get_by_id(created.id)
    except IntegrityError:  # another request created it first
        return Account.get(Account.name == name)


def retrying(fn, *args, **kwargs):
    """fn() once more on a fresh connection when the first try found the link broken (a
    database that restarted leaves every thread's old connection dead)."""
    try:
        return fn(*args, **kwargs)
    except DB_ERRORS:
        reconnect()
        return fn(*args, **kwargs)


def hold(account_id: int, request_id: str, amount: int, ttl: int, owner: str | None = None,
         model: str | None = None, key: budgets.Reservation | None = None, key_id: int | None = None) -> None:
    """Reserve `amount` if balance - held covers it, else 402; a zero amount needs no hold.
    `owner` (the process making the call) keeps extending it while the call runs; `model` is
    the call's, for operators to see. With `key` the amount must also fit in that API key's
    budget for the period, in the same statement (402 key_budget_exceeded)."""
    if amount <= 0:
        return
    if amount > MAX_BALANCE:
        raise InsufficientCredits()  # no balance can cover it
    now = utcnow()
    expires = now + dt.timedelta(seconds=ttl)
    key_id = key.key_id if key else key_id
    if _postgres():
        code = _group.submit("hold", {"amount": amount, "account": account_id, "rid": request_id,
                                      "expires": expires, "owner": owner, "model": model, "now": now,
                                      "key": key_id, "period": key.period if key else None,
                                      "budget": key.budget if key else None})
        if code:
            raise budgets.KeyBudgetExceeded() if code == 2 else InsufficientCredits()
        return
    with write_tx():
        taken = (Account.update(held=Account.held + amount)
                 .where((Account.id == account_id) & (Account.balance - Account.held >= amount))
                 .execute())
        if not taken:
            raise InsufficientCredits()
        if key is not None:
            budgets.take(key, amount)  # raises, and the transaction takes nothing
        Hold.create(request_id=request_id, account=account_id, amount=amount, expires_at=expires,
                    owner=owner, model=model, created=now, key_id=key_id,
                    period_start=key.period if key else None)


def extend(owner: str, ttl: int) -> int:
    """Push back the expiry of every hold `owner`'s calls still have (its heartbeat); how many."""
    expires = utcnow() + dt.timedelta(seconds=ttl)
    with write_tx():
        return Hold.update(expires_at=expires).where(Hold.owner == owner).execute()


def _take_hold(request_id: str) -> int:
    """Delete a request's hold (inside a transaction), giving back what it took from its key's
    budget; the amount it held, 0 if none."""
    found = Hold.get_or_none(Hold.request_id == request_id)
    if found is None:
        return 0
    if not Hold.delete().where(Hold.id == found.id).execute():
        return 0
    budgets.release(found.key_id, found.period_start, found.amount)
    return found.amount


DETAIL = ("cached", "cache_write_5m", "cache_write_1h", "reasoning")


def settle(account_id: int, request_id: str, model: str, prompt_tokens: int,
           completion_tokens: int, charge: int, estimated: bool = False, cap: int | None = None,
           detail: dict | None = None, unit_prices: dict | None = None, threshold: int = -1,
           deployment: str | None = None, key_id: int | None = None, period: str | None = None) -> bool:
    """Charge, release the hold and write the ledger row, at once; False if already settled.
    A charge above `cap` (what the call held) is cut to it; the rest is an `overrun` row that
    the gateway absorbs. `detail` holds the tokens of the classes beyond input and output and
    `unit_prices` the prices applied (both kept on the row). A charge that takes the balance
    below the account's low-balance threshold (else `threshold`; negative: alerts off) writes
    an alert to the outbox in the same transaction. `deployment`: the model's deployment that
    answered (SPEC §15), named on the row. `key_id` (the API key that made the call) is written
    on the ledger row; with `period` (ISO time) the charge counts as that key's spend in its
    budget period."""
    overrun = 0
    if cap is not None and charge > cap:
        charge, overrun = max(cap, 0), charge - max(cap, 0)
    detail = {k: int((detail or {}).get(k) or 0) for k in DETAIL}
    if _postgres():
        return _group.submit("settle", {
            "rid": request_id, "account": account_id, "model": model, "prompt": prompt_tokens,
            "completion": completion_tokens, "charge": charge, "estimated": estimated,
            "now": utcnow(), "overrun": overrun, **detail,
            "prices": None if unit_prices is None else json.dumps(unit_prices), "threshold": threshold,
            "deployment": deployment, "key_id": key_id, "period": period})
    try:
        with write_tx():
            LedgerEntry.create(account=account_id, request_id=request_id, model=model,
                               prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                               delta=-charge, kind="charge", estimated=estimated, prices=unit_prices,
                               deployment=deployment, key_id=key_id,
                               **{f"{k}_tokens": v for k, v in detail.items()})
            if overrun:
                LedgerEntry.create(account=account_id, request_id=f"{request_id}:overrun", model=model,
                                   delta=0, kind="overrun", estimated=estimated, absorbed=overrun,
                                   key_id=key_id)
            released = _take_hold(request_id)
            budgets.settle(key_id, budgets.parse(period), charge)
            (Account.update(balance=Account.balance - charge, held=Account.held - released)
             .where(Account.id == account_id).execute())
            if threshold >= 0 and charge > 0:
                _alert_if_crossed(account_id, request_id, charge, threshold)
    except IntegrityError:
        release(request_id)
        return False
    return True


def charge(account_id: int, request_id: str, model: str, prompt_tokens: int, completion_tokens: int,
           amount: int, detail: dict | None = None, unit_prices: dict | None = None, threshold: int = -1,
           key: budgets.Reservation | None = None, key_id: int | None = None, cache_hit: bool = True) -> bool:
    """A call whose price is known before it starts (a cache hit, SPEC §16) paid in one guarded
    transaction, with no hold: `amount` is debited only if balance - held covers it (else 402
    insufficient_credits), counted in the key's period budget only if it fits (else 402
    key_budget_exceeded), and the ledger row (`charge`, with `cache_hit` and the key) is written
    by the same statement; a refused charge changes nothing. A charge that takes the balance
    below the low-balance threshold writes its alert in the same transaction, as a settle does.
    Free (0) takes no balance and no budget but still writes its row. False: the request was
    already charged (a retry after a lost answer), and nothing changed."""
    if amount < 0 or amount > MAX_BALANCE:
        raise InsufficientCredits()  # no balance can cover it
    detail = {k: int((detail or {}).get(k) or 0) for k in DETAIL}
    key_id = key.key_id if key else key_id
    now = utcnow()
    if _postgres():
        code = _group.submit("charge", {
            "rid": request_id, "account": account_id, "model": model, "prompt": prompt_tokens,
            "completion": completion_tokens, "amount": amount, "now": now, **detail,
            "prices": None if unit_prices is None else json.dumps(unit_prices), "threshold": threshold,
            "key": key_id, "period": key.period if key else None, "budget": key.budget if key else None,
            "cache_hit": cache_hit})
        if code in (1, 2):
            raise budgets.KeyBudgetExceeded() if code == 2 else InsufficientCredits()
        return code == 0
    if LedgerEntry.select().where(LedgerEntry.request_id == request_id).exists():
        return False
    try:
        _charge_sqlite(account_id, request_id, model, prompt_tokens, completion_tokens, amount, detail,
                       unit_prices, threshold, key, key_id, cache_hit, now)
    except IntegrityError:
        if LedgerEntry.select().where(LedgerEntry.request_id == request_id).exists():
            return False  # charged meanwhile by another try; this one took nothing
        raise
    return True


def _charge_sqlite(account_id, request_id, model, prompt_tokens, completion_tokens, amount, detail,
                   unit_prices, threshold, key, key_id, cache_hit, now) -> None:
    with write_tx():
        if amount:
            taken = (Account.update(balance=Account.balance - amount)
                     .where((Account.id == account_id) & (Account.balance - Account.held >= amount))
                     .execute())
            if not taken:
                raise InsufficientCredits()
            if key is not None:
                budgets.spend(key, amount)  # raises, and the transaction takes nothing
        LedgerEntry.create(account=account_id, request_id=request_id, model=model, prompt_tokens=prompt_tokens,
                           completion_tokens=completion_tokens, delta=-amount, kind="charge", estimated=False,
                           prices=unit_prices, key_id=key_id, cache_hit=cache_hit, created=now,
                           **{f"{k}_tokens": v for k, v in detail.items()})
        if threshold >= 0 and amount > 0:
            _alert_if_crossed(account_id, request_id, amount, threshold)


def void(request_id: str, period: str | None = None) -> int:
    """Give back a charge whose answer never reached the client: a cache hit whose commit went
    unanswered while the database stayed away (journalled as `void`). An `adjust` row
    `<request id>:void` credits the amount back once (its request id is unique), and the key's
    period spend drops by it; the amount given back (0: it was never charged, or is given back
    already)."""
    with write_tx():
        found = LedgerEntry.get_or_none((LedgerEntry.request_id == request_id) & (LedgerEntry.kind == "charge"))
        back = f"{request_id}:void"
        if found is None or LedgerEntry.select().where(LedgerEntry.request_id == back).exists():
            return 0
        amount = -found.delta
        LedgerEntry.create(account=found.account_id, request_id=back, model=found.model, delta=amount,
                           kind="adjust", note="answer not delivered: the database did not confirm its charge",
                           key_id=found.key_id)
        if amount:
            Account.update(balance=Account.balance + amount).where(Account.id == found.account_id).execute()
            budgets.settle(found.key_id, budgets.parse(period), -amount, give_back=True)
    return amount


def _alert_if_crossed(account_id: int, request_id: str, charge: int, default: int) -> None:
    """Inside a settle's transaction: an outbox row when this charge crossed the threshold."""
    acct = Account.get_by_id(account_id)
    line = default if acct.low_balance_threshold is None else acct.low_balance_threshold
    if line > 0 and acct.balance < line <= acct.balance + charge:
        now = utcnow()
        AlertOutbox.create(account=account_id, request_id=request_id, balance=acct.balance,
                           threshold=line, created=now, next_attempt=now)


def release(request_id: str) -> int:
    """Give back a request's hold with no charge; the amount released."""
    with write_tx():
        found = Hold.get_or_none(Hold.request_id == request_id)
        amount = _take_hold(request_id)
        if amount:
            Account.update(held=Account.held - amount).where(Account.id == found.account_id).execute()
    return amount


def apply_journalled(entry: dict) -> None:
    """Apply one journal line (service/money/journal.py): a settle or a release, each idempotent."""
    if entry.get("op") == "settle":
        retrying(settle, **entry["args"])
    elif entry.get("op") == "void":
        retrying(void, entry["rid"], entry.get("period"))
    elif entry.get("op") == "release":
        retrying(release, entry["rid"])


def reap(now: dt.datetime | None = None) -> int:
    """Release every hold past its expiry (left by a crashed process); how many."""
    now = now or utcnow()
    ids = [h.request_id for h in Hold.select(Hold.request_id).where(Hold.expires_at < now)]
    return sum(1 for rid in ids if release(rid))


def _credit(account_id: int, amount: int, kind: str, note: str | None, operator: str | None = None) -> None:
    taken = (Account.update(balance=Account.balance + amount)
             .where((Account.id == account_id) & (Account.balance - Account.held + amount >= 0)
                    & (Account.balance + amount <= MAX_BALANCE))
             .execute())
    if not taken:
        raise InvalidRequest("A correction cannot take the balance below what is held or zero, "
                             "nor a top-up above the largest balance", param="amount")
    LedgerEntry.create(account=account_id, request_id=f"{kind}-{uuid.uuid4().hex}", delta=amount,
                       kind=kind, note=note, operator=operator)


def credit(account_id: int, amount: int, note: str | None = None, operator: str | None = None) -> Account:
    """Top up (positive) or correct (negative, never below zero) a balance, with its ledger row
    (which keeps the note and the operator who made it)."""
    if amount == 0:
        raise InvalidRequest("'amount' must not be zero", param="amount")
    if note is not None and (len(note) > 255 or CONTROL.search(note)):
        raise InvalidRequest("'note' must be at most 255 characters without control characters",
                             param="note")
    with write_tx():
        _credit(account_id, amount, "topup" if amount > 0 else "adjust", note, operator)
    return Account.get_by_id(account_id)
