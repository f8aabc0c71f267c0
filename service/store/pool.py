"""Peewee's connection pools, with waiters woken when a connection comes back.

playhouse.pool waits for a free connection by sleeping 100 ms between tries: when a thousand
calls start at once and 32 connections serve them, most calls queue for the pool, and every
wait is rounded up to a multiple of 100 ms. Here a thread that finds the pool empty sleeps on
a condition that each returned connection notifies; the pool's limits and its wait timeout
are peewee's own.
"""
from __future__ import annotations

import threading
import time

from peewee import Database
from playhouse.pool import MaxConnectionsExceeded, PooledPostgresqlDatabase, PooledSqliteDatabase


class _WakingPool:
    def __init__(self, *args, **kwargs):
        self._freed = threading.Condition()
        self._returns = 0  # connections given back so far: a wait ends when it moves
        super().__init__(*args, **kwargs)

    def connect(self, reuse_if_open=False):
        deadline = time.monotonic() + (self._wait_timeout or 0)
        while True:
            seen = self._returns
            try:
                return Database.connect(self, reuse_if_open)  # one try, no sleeping loop
            except MaxConnectionsExceeded:
                with self._freed:
                    while self._returns == seen:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise
                        self._freed.wait(None if left == float("inf") else left)  # timeout=0: for ever

    def discard(self) -> None:
        """Close this thread's connection for good (after an error it may be dead). peewee's
        manual_close() takes the pool's lock, then the database's; connect() takes them the
        other way round, and the two deadlock. Here: the database's first, as connect()."""
        with self._lock:
            if self._state.closed:
                return
            conn = self._state.conn
            with self._pool_lock:
                self._in_use.pop(self.conn_key(conn), None)
            self._state.reset()
        try:
            self._close(conn, close_conn=True)
        except Exception:  # noqa: BLE001 - closing a dead link may fail too; it is forgotten
            pass

    def _close(self, conn, close_conn=False):
        super()._close(conn, close_conn)
        with self._freed:
            self._returns += 1
            self._freed.notify()


class WakingPostgresqlDatabase(_WakingPool, PooledPostgresqlDatabase):
    pass


class WakingSqliteDatabase(_WakingPool, PooledSqliteDatabase):
    pass
