"""flask-limiter's Redis storage with one round trip per limit instead of two.

For each limit flask-limiter takes a moving-window entry (one Lua call), then reads the
window again for the X-RateLimit-* headers (a second call). The script here takes the
entry and reads the window in the same call; the window it saw answers that thread's next
read of the same key, if it comes within a second (the header read comes right after).
The entry is taken and the window read by limits' own two scripts, so limits stay exact
across processes. Selected by the URI scheme `tollgate+redis://` (see service/app.py).
"""
from __future__ import annotations

import threading
import time

from limits.storage import RedisStorage

# limits' own two scripts, unchanged, called one after the other in one round trip
ACQUIRE_AND_READ = f"""
local function acquire(ARGV)
{RedisStorage.SCRIPT_ACQUIRE_MOVING_WINDOW.decode()}
end
local function window(ARGV)
{RedisStorage.SCRIPT_MOVING_WINDOW.decode()}
end
local acquired = acquire(ARGV) and 1 or 0
local seen = window({{tonumber(ARGV[1]) - tonumber(ARGV[3]), ARGV[2]}})
if seen then
    return {{acquired, seen[1], seen[2]}}
end
return {{acquired, false, 0}}
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
