"""Small helpers shared by tests."""
from __future__ import annotations

import time

from service.db import Account, Hold, LedgerEntry


def ledger(name: str) -> list[LedgerEntry]:
    acct = Account.get(Account.name == name)
    return list(LedgerEntry.select().where(LedgerEntry.account == acct.id).order_by(LedgerEntry.id))


def charges(name: str) -> list[LedgerEntry]:
    return [e for e in ledger(name) if e.kind == "charge"]


def account(name: str) -> Account:
    return Account.get(Account.name == name)


def holds() -> int:
    return Hold.select().count()


def invariant(name: str) -> None:
    """SPEC §9: balance = sum of ledger deltas, held = sum of holds, balance - held >= 0."""
    acct = account(name)
    assert acct.balance == sum(e.delta for e in ledger(name))
    assert acct.held == sum(h.amount for h in Hold.select().where(Hold.account == acct.id))
    assert acct.balance - acct.held >= 0


def wait_for(condition, timeout: float = 5.0):
    """Await a condition another thread brings about (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
