"""Marks on a settled ledger row that the money code does not need: `parallel_group` (SPEC §16).
(A cache hit's `cache_hit` is written by the statement that charges it: billing.charge.)

They are written by one more UPDATE right after the settle, not inside it: on PostgreSQL a
settle is one item of a group commit's batch function, and the marks change no amount. A
settle that went to the journal (database away) leaves its row unmarked; its money is right.
"""
from __future__ import annotations

import logging

from service.money import billing
from service.store.db import LedgerEntry, give_back

log = logging.getLogger("tollgate")


def mark(request_id: str, **columns) -> None:
    """Set `columns` on the request's charge row (never failing the call that asks)."""
    try:
        billing.retrying(lambda: LedgerEntry.update(**columns)
                         .where(LedgerEntry.request_id == request_id).execute())
    except billing.DB_ERRORS:
        log.warning("ledger marks for %s not written: database unavailable", request_id)
    finally:
        give_back()
