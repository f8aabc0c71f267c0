"""flask-limiter's Redis storage with one round trip per limit instead of two.

For each limit flask-limiter takes a moving-window entry (one Lua call), then reads the
window again for the X-RateLimit-* headers (a second call). The script here takes the
entry and reads the window in the same call; the window it saw answers that thread's next
read of the same key, if it comes within a second (the header read comes right after).
The entry is taken exactly as limits' own script takes it, so limits stay exact across
processes. Selected by the URI scheme `tollgate+redis://` (see service/app.py).
"""
from __future__ import annotations

import threading
import time

from limits.storage import RedisStorage

ACQUIRE_AND_READ = """
local timestamp, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local expiry, amount = tonumber(ARGV[3]), tonumber(ARGV[4])
local acquired = 0
if amount <= limit then
    local entry = redis.call('lindex', KEYS[1], limit - amount)
    if not (entry and tonumber(entry) >= timestamp - expiry) then
        for i = 1, amount, 5000 do
            local batch = {}
            for j = i, math.min(i + 4999, amount) do batch[#batch + 1] = timestamp end
            redis.call('lpush', KEYS[1], unpack(batch))
        end
        redis.call('ltrim', KEYS[1], 0, limit - 1)
        redis.call('expire', KEYS[1], expiry)
        acquired = 1
    end
end
-- the window: the oldest entry still inside it (entries are newest first)
local target = timestamp - expiry
local low, high, found = 0, math.min(limit, redis.call('llen', KEYS[1])) - 1, nil
while low <= high do
    local mid = math.floor((low + high) / 2)
    local value = tonumber(redis.call('lindex', KEYS[1], mid))
    if value and value >= target then
        found, low = mid, mid + 1
    else
        high = mid - 1
    end
end
if found then
    return {acquired, redis.call('lindex', KEYS[1], found), found + 1}
end
return {acquired, false, 0}
"""
FRESH_SECONDS = 1.0


class OneTripRedisStorage(RedisStorage):
    STORAGE_SCHEME = ["tollgate+redis", "tollgate+rediss"]

    def __init__(self, uri: str, **options):
        self._seen = threading.local()
        super().__init__(uri.removeprefix("tollgate+"), **options)

    def initialize_storage(self, uri: str) -> None:
        super().initialize_storage(uri)
        self.lua_acquire_and_read = self.get_connection().register_script(ACQUIRE_AND_READ)

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        key = self.prefixed_key(key)
        now = time.time()
        acquired, oldest, count = self.lua_acquire_and_read([key], [now, limit, expiry, amount])
        window = (float(oldest), int(count)) if count else (now, 0)
        self._seen.last = (key, limit, expiry, time.monotonic(), window)
        return bool(acquired)

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        last = getattr(self._seen, "last", None)
        self._seen.last = None
        if (last is not None and last[:3] == (self.prefixed_key(key), limit, expiry)
                and time.monotonic() - last[3] < FRESH_SECONDS):
            return last[4]
        return super().get_moving_window(key, limit, expiry)
