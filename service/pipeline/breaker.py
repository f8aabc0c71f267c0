"""Circuit breakers, one per upstream (base URL + model), per process.

closed: calls pass; `threshold` consecutive failures open it. open: calls fail
fast with 503 until `cooldown` seconds pass. half-open: one probe is let
through; success closes the breaker, failure opens it again.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from core.errors import ProviderUnavailable


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class Breakers:
    def __init__(self, threshold: int = 5, cooldown: float = 30.0, clock=time.monotonic):
        self.threshold, self.cooldown, self.clock = threshold, cooldown, clock
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def state(self, key: str) -> str:
        s = self._states.get(key)
        if s is None or s.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - s.opened_at >= self.cooldown else "open"

    def any_open(self, keys: list) -> bool:
        """Whether any of these breakers is open (one call for a row's deployments)."""
        found = self._states.get
        for key in keys:
            s = found(key)
            if s is not None and s.opened_at is not None and self.clock() - s.opened_at < self.cooldown:
                return True
        return False

    def states(self) -> dict[str, str]:
        return {key: self.state(key) for key in list(self._states)}

    def before(self, key: str, provider: str) -> None:
        """Fail fast while open; let one probe through once the cool-down has passed."""
        if self.threshold <= 0:
            return
        s = self._states.get(key)
        if s is None or s.opened_at is None:
            return  # closed (the usual case): no lock, nothing made
        with self._lock:
            s = self._states.setdefault(key, _State())
            if s.opened_at is None:
                return
            if self.clock() - s.opened_at < self.cooldown or s.probing:
                raise ProviderUnavailable(f"{provider} is failing; calls are paused for a moment "
                                          "(circuit open)", code="circuit_open")
            s.probing = True

    def success(self, key: str) -> None:
        s = self._states.get(key)
        if s is None or (not s.failures and s.opened_at is None and not s.probing):
            return  # nothing to reset (the usual case): ordered before any failure racing it
        with self._lock:
            self._states[key] = _State()

    def failure(self, key: str) -> None:
        with self._lock:
            s = self._states.setdefault(key, _State())
            s.failures += 1
            if s.probing or s.failures >= self.threshold:
                s.opened_at, s.probing = self.clock(), False
