"""Redis for shared caches, used only while it answers; callers fall back when it does not."""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import redis

log = logging.getLogger("tollgate")
RETRY_AFTER = 2.0  # seconds between attempts while Redis is down


TIMEOUT = 0.25  # seconds a Redis command may take before the call goes on without Redis


class KernelTimedConnection(redis.Connection):
    """A blocking socket whose send and receive deadlines the kernel keeps (SO_SNDTIMEO,
    SO_RCVTIMEO). With a Python-level timeout CPython polls before every send and receive: two
    more places per command where a request thread lets go of the interpreter, each a context
    switch under load. A deadline that passes is an OSError, which redis-py raises as a
    ConnectionError."""

    def __init__(self, *args, deadline: float = TIMEOUT, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def _connect(self):
        sock = super()._connect()
        seconds = int(self.deadline)
        limit = struct.pack("ll", seconds, int((self.deadline - seconds) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        return sock


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")  # limits' spelling, and ours


def client(url: str) -> redis.Redis:
    """redis-py on kernel-timed sockets (redis:// only; rediss:// and unix sockets keep Python's
    timeout); a Redis Cluster client for redis+cluster://host:port (any seed node), whose
    scripts must keep their keys in one hash slot (every caller tags its keys: `{acct:…}`)."""
    if url.startswith(CLUSTER_SCHEMES):
        plain = url.replace("+cluster", "", 1)
        return redis.RedisCluster.from_url(plain, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    if url.startswith("redis://"):
        pool = redis.ConnectionPool.from_url(url, connection_class=KernelTimedConnection,
                                             socket_timeout=None, socket_connect_timeout=TIMEOUT)
        return redis.Redis(connection_pool=pool)
    return redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)


class Cache:
    """A thin guard around redis-py: short timeouts, one warning per outage, quick recovery."""

    def __init__(self, url: str | None):
        self.url = url
        self.client = client(url) if url else None
        self.down_since: float | None = None
        self.on_recovery: list = []
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.client is not None

    @property
    def cluster(self) -> bool:
        """A Redis Cluster: a script's keys must share a slot, so what lies in other slots (an
        account's limits, a deployment's counters, a cached answer) cannot go in one script."""
        return isinstance(self.client, redis.RedisCluster)

    @property
    def up(self) -> bool:
        return self.client is not None and self.down_since is None

    def status(self) -> str:
        """`off` (not configured), `ok`, or `down`."""
        if self.client is None:
            return "off"
        self.call(lambda r: r.ping())
        return "ok" if self.down_since is None else "down"

    def call(self, fn, default=None):
        """Run fn(redis) unless Redis is known down; mark it down on failure."""
        if self.client is None:
            return default
        if self.down_since is not None and time.monotonic() - self.down_since < RETRY_AFTER:
            return default
        try:
            result = fn(self.client)
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            self.failed(exc)
            return default
        if self.down_since is not None:
            with self._lock:
                if self.down_since is not None:
                    log.warning("redis is back")
                    for callback in self.on_recovery:
                        callback()
                self.down_since = None
        return result

    def failed(self, exc: Exception) -> None:
        """Mark Redis down (one warning per outage)."""
        with self._lock:
            if self.down_since is None:
                log.warning("redis unavailable (%s); serving without it", type(exc).__name__)
            self.down_since = time.monotonic()

    def get(self, key: str):
        return self.call(lambda r: r.get(key))

    def set(self, key: str, value, ttl: int) -> None:
        self.call(lambda r: r.set(key, value, ex=ttl))

    def incr(self, key: str):
        return self.call(lambda r: r.incr(key))
