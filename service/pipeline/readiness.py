"""Which catalogue rows can answer now (`/v1/models`' `ready`): the provider is configured (its key
variable set, where it needs one), its upstream accepts a TCP connection (probed at most every
PROBE_SECONDS per host, with a short timeout) and its circuit breaker is not open."""
from __future__ import annotations

import socket
import threading
import time
import urllib.parse

from providers import ADAPTERS
from service.pipeline import deployments
from service.pipeline.deployment_health import Fleet

PROBE_SECONDS = 30.0
PROBE_TIMEOUT = 0.3


class Reachability:
    """The last TCP probe of each upstream host, refreshed when older than PROBE_SECONDS."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._seen: dict[tuple[str, int], tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def reachable(self, base: str) -> bool:
        url = urllib.parse.urlsplit(base)
        try:
            where = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
        except ValueError:  # a port out of range
            return False
        with self._lock:
            seen = self._seen.get(where)
        if seen is not None and self.clock() - seen[0] < PROBE_SECONDS:
            return seen[1]
        try:
            socket.create_connection(where, timeout=PROBE_TIMEOUT).close()
            up = True
        except (OSError, UnicodeError):
            up = False
        with self._lock:
            self._seen[where] = (self.clock(), up)
        return up


def base_of(row, conf) -> str | None:
    """The base URL a call on this row goes to, as the relay picks it."""
    adapter = ADAPTERS.get(row.api)
    if adapter is None:
        return None
    return row.base_url or conf.get(adapter.base_setting) or adapter.default_base


def ready(row, conf, reach: Reachability, breakers) -> bool:
    """A row with deployments is ready when one of its enabled deployments is (SPEC §15)."""
    found = deployments.of(row)
    if found:
        return any(d.enabled and _ready(d.target, conf, reach, breakers, Fleet.breaker_key(row.id, d.name))
                   for d in found)
    return _ready(row, conf, reach, breakers, None)


def _ready(row, conf, reach: Reachability, breakers, breaker: str | None) -> bool:
    if row.api_key_env and not conf["PROVIDER_KEYS"].get(row.api_key_env):
        return False
    base = base_of(row, conf)
    if not base or not reach.reachable(base):
        return False
    return breakers.state(breaker or f"{base.rstrip('/')}|{row.upstream_model}") != "open"
