"""The connection pool wakes a waiting thread when a connection comes back (no 100 ms naps)."""
from __future__ import annotations

import threading

import pytest
from playhouse.pool import MaxConnectionsExceeded

from service.db import open_database
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
