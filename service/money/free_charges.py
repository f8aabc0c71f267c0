"""A free cache hit's ledger row (SPEC §16: a `charge` of 0 with `cache_hit`), written off the
call's path by a writer thread per process (service/store/batches.py), a batch every
LOG_WRITE_SECONDS (0.5 s), as the request log's rows are.

Such a row moves no balance and no budget: the answer does not wait for it. The balance still
equals top-ups minus charges whatever happens to the row. Rows are unique by request id, so a
batch written again adds nothing. A full queue sends the hit back to the synchronous charge
(service/pipeline/answer_cache.py). A process killed outright loses the rows it had not written
yet, the last LOG_WRITE_SECONDS': the record of hits that cost nothing, never money.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import weakref

from service.money.billing import write_tx
from service.store import batches, bulk
from service.store.db import DB_ERRORS, LedgerEntry, utcnow

log = logging.getLogger("tollgate")

COLUMNS = ("request_id", "account_id", "model", "prompt_tokens", "completion_tokens", "delta", "kind",
           "estimated", "cached_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "reasoning_tokens",
           "prices", "created", "key_id", "cache_hit")
QUEUE = 20_000  # rows waiting at most; beyond, a hit is charged on its own path
_writers: weakref.WeakSet = weakref.WeakSet()  # this process's writers (flush_all)


class FreeCharges(batches.Batches):
    name = "free charges"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _writers.add(self)

    def submit(self, item) -> bool:
        """Queue a row, only while this process's writer runs (else the hit pays on its own path:
        a forked child's inherited writer has no thread)."""
        thread = self._thread
        if thread is None or self._pid != os.getpid() or not thread.is_alive() or self.stop.is_set():
            return False
        return super().submit(item)

    def write(self, items: list) -> None:
        """The batch in one transaction; a row the database refuses for itself (not for being
        away) is left out, named in the log, and the others written one by one."""
        try:
            with write_tx():
                bulk.append(LedgerEntry, COLUMNS, items)
        except DB_ERRORS:
            raise  # away: the batch is kept and retried
        except Exception:
            if len(items) == 1:
                log.exception("free charges: the row of %s could not be written", items[0][0])
                return
            for item in items:
                self.write([item])


def row(account_id: int, request_id: str, model: str, tokens, unit_prices: dict | None, key_id: int | None) -> tuple:
    """The ledger row of a free hit, in COLUMNS order (`tokens`: core.usage.Usage)."""
    return (request_id, account_id, model, tokens.prompt, tokens.completion, 0, "charge", False, tokens.cached,
            tokens.cache_write_5m, tokens.cache_write_1h, tokens.reasoning,
            None if unit_prices is None else json.dumps(unit_prices), utcnow(), key_id, True)


def flush_all() -> None:
    """Write every row this process's writers hold (before the ledger is read whole: tests)."""
    for writer in list(_writers):
        writer.flush()


def start(conf: dict) -> FreeCharges:
    """This process's writer, started; its last rows written at exit."""
    writer = FreeCharges(QUEUE, conf.get("LOG_BATCH_SIZE", 500), conf.get("LOG_RETRY_SECONDS", 1.0),
                         conf.get("LOG_WRITE_SECONDS", 0.5))
    writer.start()
    ref = weakref.ref(writer)
    atexit.register(lambda: ref() is not None and ref().close())
    return writer
