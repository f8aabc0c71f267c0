"""The one-round-trip moving-window storage agrees with limits' own Redis storage (real Redis)."""
from __future__ import annotations

import time

from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from service.limits.limit_storage import OneTripRedisStorage


def evalsha_calls(proxy) -> int:
    """The scripts run through the test's own proxy (Redis's command stats count every client's)."""
    return proxy.said(b"EVALSHA")


def test_same_entries_and_window_as_limits_own_storage(redis_url):
    ours = storage_from_string(f"tollgate+{redis_url}")
    theirs = RedisStorage(redis_url)
    assert isinstance(ours, OneTripRedisStorage)
    item = RateLimitItemPerMinute(5)
    ours_limiter, their_limiter = MovingWindowRateLimiter(ours), MovingWindowRateLimiter(theirs)
    outcomes = []
    for i in range(7):
        a = ours_limiter.hit(item, "ours")
        b = their_limiter.hit(item, "theirs")
        mine, reference = ours_limiter.get_window_stats(item, "ours"), their_limiter.get_window_stats(item, "theirs")
        assert a == b and mine.remaining == reference.remaining, i
        assert abs(mine.reset_time - reference.reset_time) < 1
        outcomes.append(a)
    assert outcomes == [True] * 5 + [False] * 2
    # a window read with no fresh entry before it goes to Redis, and sees what limits' storage sees
    assert ours.get_moving_window(item.key_for("ours"), 5, 60)[1] == 5
    assert theirs.get_moving_window(item.key_for("ours"), 5, 60)[1] == 5


def test_entries_of_several_units_and_limits_larger_than_the_list(redis_url):
    ours = storage_from_string(f"tollgate+{redis_url}")
    assert ours.acquire_entry("k", 10, 60, amount=4)
    assert ours.get_moving_window("k", 10, 60)[1] == 4
    assert not ours.acquire_entry("k", 10, 60, amount=7)  # 4 + 7 > 10: nothing taken
    assert ours.get_moving_window("k", 10, 60)[1] == 4
    assert not ours.acquire_entry("k", 3, 60, amount=4)  # more than the limit at once
    assert ours.acquire_entry("big", 10 ** 8, 60)
    start, count = ours.get_moving_window("big", 10 ** 8, 60)
    assert count == 1 and abs(start - time.time()) < 5


def test_a_stale_or_other_keys_window_is_not_reused(redis_proxy):
    ours = storage_from_string(f"tollgate+{redis_proxy.url}")
    client = redis_proxy
    ours.acquire_entry("a", 10, 60)
    before = evalsha_calls(client)
    assert ours.get_moving_window("b", 10, 60)[1] == 0  # another key: read from Redis
    assert ours.get_moving_window("a", 10, 60)[1] == 1  # the fresh window was dropped: read again
    assert evalsha_calls(client) - before == 2
    ours.acquire_entry("a", 10, 60)
    before = evalsha_calls(client)
    assert ours.get_moving_window("a", 10, 60)[1] == 2  # fresh: no round trip
    assert evalsha_calls(client) == before
