"""Rows written off the calls' path: a bounded deque that calls append to, and a thread per
process that wakes every `interval`, takes what gathered and writes it in one transaction, so a
transaction's cost is shared by a few hundred calls and the thread takes the interpreter from the
calls a few times a second, not once per call. A call never waits for the database here: a full
deque refuses the row (the caller counts or falls back). While the database is away the writer
keeps its batch and retries it; its rows must be unique by a key (service/store/bulk.py leaves
out a row that is there), so a batch whose commit was not acknowledged and is written again adds
nothing. Used by the request log (service/web/request_log.py) and a free cache hit's ledger row
(service/money/free_charges.py).
"""
from __future__ import annotations

import collections
import logging
import os
import threading

from service.store.db import DB_ERRORS, db, reconnect

log = logging.getLogger("tollgate")


class Batches:
    """The deque, the writing thread, flush() and close(); a subclass says how a batch is
    written (`write`) and what else the thread does now and then (`tick`)."""

    name = "batches"  # the thread's name and the log lines' prefix

    def __init__(self, size: int = 10_000, batch: int = 500, retry: float = 1.0, interval: float = 0.5):
        self.pending: collections.deque = collections.deque()  # rows and flush() marks
        self.size, self.batch, self.retry, self.interval = size, batch, retry, interval
        self.stop = threading.Event()
        self.wake = threading.Event()  # write now (flush, close), not at the next interval
        self._thread: threading.Thread | None = None
        self._pid = None

    def write(self, items: list) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        """After each round of writing, on the writer's thread."""

    def start(self) -> None:
        if self._thread is None or self._pid != os.getpid():  # a forked child starts its own
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def submit(self, item) -> bool:
        """Queue a row; False when the deque is full. No lock: a deque's append is atomic, and the
        bound is checked without one (a few rows over it, at worst, when many calls end at once)."""
        if len(self.pending) >= self.size:
            return False
        self.pending.append(item)
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is written (tests, shutdown); whether it happened in
        time. A mark queued behind them is set once the batch that holds it is done."""
        if self._thread is None or not self._thread.is_alive():
            return not self.pending  # no writer (not started, or stopped): nothing will be written
        done = threading.Event()
        self.pending.append(done)
        self.wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within `timeout`), then stop the thread."""
        self.flush(timeout)
        self.stop.set()
        self.wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            self.wake.wait(self.interval)
            self.wake.clear()  # before taking rows: a mark queued after this is seen now or next time
            stopping = self.stop.is_set()
            left = len(self.pending)  # what gathered; rows that come while it is written wait their turn
            while left > 0:
                items, marks = self._take(min(left, self.batch))
                left -= len(items) + len(marks)
                if not self._write_until_done(items, marks):
                    break  # stopped while the database is away: what is left stays unwritten
            if stopping:
                break
            self.tick()

    def _take(self, count: int) -> tuple[list, list]:
        """The first `count` entries of the deque: rows, and the flush marks among them."""
        items, marks, popleft = [], [], self.pending.popleft
        for _ in range(count):
            item = popleft()
            (marks if item.__class__ is threading.Event else items).append(item)
        return items, marks

    def _write_until_done(self, items: list, marks: list) -> bool:
        """Write a batch, retrying while the database is away (the deque meanwhile fills and
        refuses what does not fit: a call never waits on it); False when stopped meanwhile."""
        try:
            while items and not self.quietly(lambda: self.write(items)):
                if self.stop.wait(self.retry):
                    return False
            return True
        finally:
            for mark in marks:
                mark.set()

    def quietly(self, fn) -> bool:
        """fn() on a connection of the writer's own; False when the database is away (retried)."""
        try:
            with db.connection_context():
                fn()
            return True
        except DB_ERRORS:
            log.warning("%s: database unavailable; the batch is kept and retried", self.name)
            reconnect()
        except Exception:  # noqa: BLE001 - a bad row must not stop the writer
            log.exception("%s: writing failed", self.name)
            return True  # not retried: the same rows would fail again
        return False
