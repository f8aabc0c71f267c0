"""The catalogue in memory: model lookup by id, name or alias, shared invalidation via Redis."""
from __future__ import annotations

import threading
import time

from core import prices
from service.store.db import AIModel, ModelPrice
from core.errors import ModelNotFound

VERSION_KEY = "tollgate:catalogue:version"
LOCAL_TTL = 5.0  # seconds a process trusts its copy when no Redis tells it of changes
CHAT_MAX_AGE = 1.0  # chat calls ask Redis for the catalogue version at most once a second


class Registry:
    """Catalogue rows cached per process; a version counter in Redis tells when to reload."""

    def __init__(self, cache):
        self.cache = cache
        self._lock = threading.Lock()
        self._rows: list[AIModel] | None = None
        self._index: dict = {}
        self._prices: dict = {}  # model id -> [(effective_from, prices)], oldest first
        self._version = None
        self._loaded = 0.0
        self._checked = 0.0

    def _fresh(self, max_age: float) -> bool:
        if self._rows is None:
            return False
        if time.monotonic() - self._checked < max_age:
            return True
        self._checked = time.monotonic()
        if self.cache.up:
            remote = self.cache.get(VERSION_KEY)
            if self.cache.up:
                return remote == self._version
        return time.monotonic() - self._loaded < LOCAL_TTL

    def rows(self, max_age: float = 0.0) -> list[AIModel]:
        """Every catalogue row, enabled or not, ordered by id; `max_age` seconds of trust
        before asking Redis whether the catalogue changed (0: ask now)."""
        if not self._fresh(max_age):
            with self._lock:
                version = self.cache.get(VERSION_KEY)
                rows = list(AIModel.select().order_by(AIModel.id))
                history: dict = {}
                for p in ModelPrice.select().order_by(ModelPrice.effective_from, ModelPrice.id):
                    history.setdefault(p.model_id, []).append((p.effective_from, p.prices))
                index = {}
                for row in rows:
                    index[row.name] = row
                    for alias in row.aliases or []:
                        index.setdefault(alias, row)
                self._rows, self._index, self._version = rows, index, version
                self._prices = history
                self._loaded = self._checked = time.monotonic()  # the version was just read
        return self._rows

    @property
    def version(self):
        self.rows()
        return self._version

    def enabled(self) -> list[AIModel]:
        return [r for r in self.rows() if r.enabled]

    def find(self, ref, max_age: float = 0.0) -> AIModel:
        """The enabled row for an id, a numeric string, a name or an alias."""
        rows = self.rows(max_age)
        row = None
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isascii() and ref.isdigit() and len(ref) < 12):
            row = next((r for r in rows if r.id == int(ref)), None)
        if row is None and isinstance(ref, str):
            row = self._index.get(ref)
        if row is None or not row.enabled:
            raise ModelNotFound(ref)
        return row

    def prices_at(self, row, when) -> dict[str, int]:
        """The row's prices per token class in force at `when` (naive UTC): the newest price
        history entry not after it, else the row's own columns."""
        found = None
        for since, values in self._prices.get(row.id, ()):
            if since > when:
                break
            found = values
        return {**prices.resolve(row), **found} if found else prices.resolve(row)

    def invalidate(self) -> None:
        """Drop this process's copy and tell every other process (and the list caches)."""
        self._rows = None
        self._checked = 0.0
        self.cache.incr(VERSION_KEY)
