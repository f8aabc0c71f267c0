"""The connection pool wakes a waiting thread when a connection comes back (no 100 ms naps)."""
from __future__ import annotations

import threading

import pytest
from playhouse.pool import MaxConnectionsExceeded

from service.store.db import open_database
from tests.helpers import wait_for


@pytest.fixture
def pool(db_url):
    database = open_database(db_url, pool_size=1)
    database.init(database.database, max_connections=1, timeout=2)  # one connection, 2 s wait
    yield database
    database.close_all()


def test_a_waiter_gets_the_connection_given_back(pool):
    pool.connect()  # this thread holds the only connection
    got = []

    def waiter():
        pool.connect()
        got.append(pool.execute_sql("SELECT 1").fetchone()[0])
        pool.close()

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_for(lambda: len(pool._freed._waiters) == 1)  # asleep on the condition, not polling
    assert got == []
    pool.close()  # given back: the waiter wakes and takes it
    thread.join(5)
    assert got == [1]


def test_a_waiter_gives_up_after_the_pool_timeout(pool):
    pool.connect()
    failed = []

    def waiter():
        try:
            pool.connect()
        except MaxConnectionsExceeded as exc:
            failed.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    thread.join(10)
    assert len(failed) == 1
    pool.close()


def _max_connections(db_url) -> int:
    from service.store.db import db

    # make_app opened the PostgreSQL database already
    return int(db.execute_sql("SHOW max_connections").fetchone()[0]) if db_url.startswith("postgres") else 0


def test_a_start_warns_when_the_pools_exceed_max_connections(make_app, db_url, caplog):
    """WORKERS x (DB_POOL_SIZE + 3) over PostgreSQL's max_connections: one warning line at start,
    naming both numbers; within it (and on SQLite): none."""
    import logging

    most = _max_connections(db_url)
    pool = max(most // 4, 1)  # 4 x (pool + 3) > most
    with caplog.at_level(logging.WARNING, logger="tollgate"):
        make_app(WORKERS=4, DB_POOL_SIZE=pool)
    warned = [r.getMessage() for r in caplog.records if "max_connections" in r.getMessage()]
    if not most:
        assert warned == []
        return
    assert len(warned) == 1 and f"allows {most} connections" in warned[0] and f"= {4 * (pool + 3)}" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tollgate"):
        make_app(WORKERS=1, DB_POOL_SIZE=most - 3)  # exactly the budget
    assert not [r for r in caplog.records if "max_connections" in r.getMessage()]
