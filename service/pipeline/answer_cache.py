"""The response cache (SPEC §16): complete answers of a catalogue row with `cache_ttl`, kept in
Redis (or in process without it) and served again, at the row's cache-hit price, to the same
request.

The key is the row and the request as it goes upstream, as canonical JSON: every field of the
validated request (messages, every parameter, the output cap the gateway decides, an
embedding's inputs...) but those that cannot change the answer (`user`, `metadata`, `stream`,
`stream_options`, the request id), plus the account unless the row's scope is `global`. A new
field a front door adds to its request object is part of the key by default.

A hit is answered after admission, limits and idempotency, like any call, and paid in one
guarded statement (its price is known before it is answered): the balance and the key's budget
checked and debited and its `charge` row, marked `cache_hit`, written together; a free hit's row
is written after its answer (service/money/free_charges.py). Flask-free: the Call passes the
client's `Cache-Control`.

On a lone Redis the cache adds no round trip to a call: the admission script reads the entry
(Lookup.peek, then read with the lease), and a plain answer is stored by the pipeline that gives
the call's slots back before it answers (Store.put with the lease). A free plain hit takes no slot
there (Lookup.instant), so it makes that one round trip only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict


from core import prices, transcript
from core.sse import DONE
from core.errors import GatewayError
from core.usage import CLASSES, from_openai
from service.metrics import CACHE_HITS, CACHE_MISSES, CACHE_SAVED
from service.money import billing, budgets, free_charges
from service.pipeline.relay import Bill
from service.store.db import give_back

log = logging.getLogger("tollgate")
HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"
PREFIX = "tollgate:answer:"
UNANSWERING = ("user", "metadata")  # parameters that cannot change the answer
OWN_FIELDS = {"request_id", "stream", "include_usage", "stream_options", "model", "_size", *UNANSWERING}
KEPT = ("chat.completion", "list")  # the bodies a hit can rebuild: chat answers, embeddings
MAX_ENTRY_BYTES = 1 << 20  # CACHE_MAX_ENTRY_BYTES' default
MEMORY_BYTES = 64 << 20  # CACHE_MEMORY_BYTES' default: the in-process cache's bound


class Memory:
    """The in-process cache: entries with their expiry, least recently used dropped first
    once they hold more than `limit` bytes."""

    def __init__(self, limit: int):
        self.limit, self.size = limit, 0
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            found = self.entries.get(key)
            if found is None:
                return None
            if found[0] < time.monotonic():
                self._drop(key)
                return None
            self.entries.move_to_end(key)
            return found[1]

    def put(self, key: str, value: bytes, ttl: int) -> None:
        with self._lock:
            if key in self.entries:
                self._drop(key)
            self.entries[key] = (time.monotonic() + ttl, value)
            self.size += len(value)
            while self.size > self.limit:
                self._drop(next(iter(self.entries)))

    def _drop(self, key: str) -> None:
        self.size -= len(self.entries.pop(key)[1])


class Store:
    """Where entries live: Redis when the gateway has it (shared by every process; a Redis that
    is down is a miss and no store), else this process's memory."""

    def __init__(self, cache, max_entry: int = MAX_ENTRY_BYTES, memory: int = MEMORY_BYTES):
        self.cache, self.max_entry = cache, max_entry
        self.memory = None if cache.enabled else Memory(memory)
        self.lone = cache.enabled and not cache.cluster

    def get(self, key: str) -> bytes | None:
        if self.memory is not None:
            return self.memory.get(key)
        return self.cache.get(PREFIX + key)

    def peek(self, key: str) -> str | None:
        """The Redis key of an entry when the admission script can read it with the call's limits
        (a lone Redis: on a Cluster it lies in another slot than the account's keys)."""
        return PREFIX + key if self.lone else None

    def put(self, key: str, value: bytes, ttl: int, lease=None) -> bool:
        """Keep an entry for `ttl` seconds; False when it is over the size bound. With the call's
        lease on a lone Redis (taken there, not yet given back) the SET rides on the lease's
        give-back, the round trip the call makes anyway, and costs the call no wait of its own."""
        if len(value) > self.max_entry:
            return False
        if self.memory is not None:
            self.memory.put(key, value, ttl)
        elif self.lone and lease is not None and lease.remote and not lease.returned:
            lease.also.append(lambda pipe: pipe.set(PREFIX + key, value, ex=ttl))
        else:
            self.cache.set(PREFIX + key, value, ttl)
        return True


def init_app(app) -> None:
    """The process's answer store, next to the gateway's Redis guard."""
    conf = app.config
    app.extensions["tollgate_answers"] = Store(app.extensions["tollgate"].cache,
                                               conf.get("CACHE_MAX_ENTRY_BYTES", MAX_ENTRY_BYTES),
                                               conf.get("CACHE_MEMORY_BYTES", MEMORY_BYTES))


def policy(cache_control: str | None) -> tuple[bool, bool]:
    """(look up, store) for the client's `Cache-Control`: `no-cache` skips the lookup, `no-store`
    skips both."""
    directives = {d.strip().split("=")[0].lower() for d in (cache_control or "").split(",")}
    if "no-store" in directives:
        return False, False
    return "no-cache" not in directives, True


_NAMES: dict[type, tuple] = {}  # a request dataclass -> the names of its fields that make the key


def _names(kind: type) -> tuple:
    names = _NAMES.get(kind)
    if names is None:
        names = _NAMES.setdefault(kind, tuple(f.name for f in dataclasses.fields(kind) if f.name not in OWN_FIELDS))
    return names


def key_of(req, row, account_id: int) -> str:
    """The cache key of a request on a row (see the module's docstring)."""
    if dataclasses.is_dataclass(req):
        fields = {name: getattr(req, name) for name in _names(type(req))}
    else:
        fields = {k: v for k, v in vars(req).items() if k not in OWN_FIELDS}
    if isinstance(fields.get("params"), dict):
        fields["params"] = {k: v for k, v in fields["params"].items() if k not in UNANSWERING}
    material = {"kind": type(req).__name__, "row": [row.id, row.api, row.upstream_model, row.base_url],
                "cap": req.output_cap(row) if hasattr(req, "output_cap") else None, "account": None if row.cache_scope == "global" else account_id,
                "request": fields}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Lookup:
    """One call's dealings with the cache: what it found (`status`, the `X-Cache` header), then
    the answer, from the cache or from `answer`/`open_stream`, stored when it is complete."""

    def __init__(self, store: Store, req, account_id: int, cache_control: str | None, read: bool = True,
                 free=None):
        """The call's key; the entry read now, or (read=False) by read() once the call is admitted
        (its admission script may have read it along: peek()). `free`: the writer that takes a
        free hit's ledger row off the call's path (service/money/free_charges.py), if any."""
        self.store, self.req, self.row, self.free = store, req, req.model, free
        self.status, self.key, self.entry, self.keep, self.look, self.lease = None, None, None, False, False, None
        if not getattr(self.row, "cache_ttl", None):
            return  # not a cached row: no header, no work
        self.look, self.keep = policy(cache_control)
        self.status = MISS if self.look else BYPASS  # until read(): a call refused first is not served from the cache
        self.key = key_of(req, self.row, account_id)
        if read:
            self.read()

    def peek(self) -> str | None:
        """The Redis key for the admission script to read with the call's limits, if any."""
        return self.store.peek(self.key) if self.look else None

    def instant(self) -> bool:
        """Whether a hit of this call ends as it starts: free (nothing to charge) and not streamed
        (a replay to a slow reader takes a thread); its admission then takes no slot under the caps."""
        return not self.req.stream and not getattr(self.row, "cost_per_1k_cache_hit_tokens", None)

    def read(self, lease=None) -> None:
        """Look the entry up (what the admission script read with `lease`, else the store), once
        the call is admitted; an entry kept later rides on the lease's give-back (Store.put)."""
        self.lease = lease
        if self.key is None:
            return
        if self.look:
            peeked = getattr(lease, "peeked", None)
            self.entry = _entry(peeked[0] if peeked is not None else self.store.get(self.key))
            (CACHE_HITS if self.entry else CACHE_MISSES).labels(self.row.name).inc()
        self.status = HIT if self.entry else MISS if self.look else BYPASS

    @property
    def headers(self) -> dict:
        return {"X-Cache": self.status} if self.status else {}

    def complete(self, ctx, answer) -> dict:
        """The answer body: the cached one, or answer(req, ctx)'s, then kept."""
        with self.said():
            if self.entry is not None:
                return self._hit(ctx)
            body = answer(self.req, ctx)
        if self.keep and self._this_rows() and body.get("object") in KEPT:
            self._put(body, self.lease)  # (a fallback's answer is not this row's)
        return body

    def stream(self, ctx, open_stream):
        """The stream's events: the cached answer replayed, or open_stream(req, ctx)'s, gathered
        and kept once it ended normally."""
        with self.said():
            return self._stream(ctx, open_stream)

    @contextlib.contextmanager
    def said(self):
        """An error answer of a cached row says X-Cache too (a refusal before the lookup: MISS, or
        BYPASS for the client's no-cache or no-store)."""
        try:
            yield
        except GatewayError as err:
            if self.status:
                err.headers.setdefault("X-Cache", self.status)
            raise

    def _stream(self, ctx, open_stream):
        if self.entry is not None:
            body = self._hit(ctx)
            return transcript.replay(body, self.req.include_usage)
        if not self.keep:
            return open_stream(self.req, ctx)
        wanted = self.req.include_usage
        self.req.include_usage = True  # the usage chunk carries the counts a hit reports
        events = open_stream(self.req, ctx)
        return self._kept(events, wanted)

    def _kept(self, events, wanted: bool):
        heard, size = transcript.Transcript(), 0
        try:
            for piece in events:
                size += len(piece)
                if size <= self.store.max_entry:
                    heard.feed(piece)
                if piece == DONE and self._complete(heard, size):
                    self._put(heard.body())
                if not wanted and piece.startswith(b"data: {") and b'"choices":[],"usage":' in piece:
                    continue  # the usage chunk the client did not ask for
                yield piece
        finally:
            events.close()  # a client gone: the relay bills what was delivered; nothing is kept

    def _complete(self, heard, size: int) -> bool:
        """Whether a stream that sent [DONE] is this row's whole answer, with its counts."""
        return (size <= self.store.max_entry and heard.finished and bool(heard.usage)
                and self._this_rows())

    def _this_rows(self) -> bool:
        """Whether the answer is this row's: its own, or one of its deployments' (a deployment's
        view of the row, service/pipeline/deployments.py), not a fallback's."""
        model = self.req.model
        return model is self.row or getattr(model, "row", None) is self.row

    def _put(self, body: dict, lease=None) -> None:
        value = json.dumps({"body": body}, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        if not self.store.put(self.key, value, self.row.cache_ttl, lease):
            log.info("answer of %s not cached: %d bytes is over CACHE_MAX_ENTRY_BYTES",
                     self.req.request_id, len(value))

    def _hit(self, ctx) -> dict:
        """Charge the hit (one guarded statement) and the body to send: the
        original with a new id, its token counts and the hit's price."""
        req, row = self.req, self.row
        body = dict(self.entry["body"])
        tokens = from_openai(body.get("usage") or {})
        unit = {c: row.cost_per_1k_cache_hit_tokens or 0 for c in CLASSES}
        costs = prices.costs(unit, tokens)
        charge = sum(costs.values())
        _charge(req, ctx, tokens, unit, charge, self.free)
        CACHE_SAVED.labels(row.name).inc(max(prices.charge(ctx.prices_of(row), tokens) - charge, 0))
        if body.get("object") == "list":  # embeddings
            body["usage"] = {**body.get("usage", {}), "cost": billing.to_credits(charge)}
            return body
        body.update(id=req.request_id, created=int(time.time()), model=row.name,
                    usage=Bill(tokens, unit, costs, charge).usage(body.get("usage")))
        return body


def _entry(found: bytes | None) -> dict | None:
    """A stored entry, or None (nothing, or not an entry: then it is a miss, never a failure)."""
    if not found:
        return None
    try:
        entry = json.loads(found)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("body"), dict) else None


def _charge(req, ctx, tokens, unit: dict, charge: int, free=None) -> None:
    """Pay the hit: its price is known before it is answered, so one guarded statement debits it
    (402 when the balance or the key's budget cannot cover it, and nothing changes) and writes
    its `charge` row with `cache_hit` and the key; no hold, no settle (service/money/billing.charge).
    The database away: the call fails as a hold would, and the journal gives the charge back in
    case its commit went through unanswered. A free hit moves nothing: its row goes to `free`, the
    writer that writes it after the answer (service/money/free_charges.py), while it has room."""
    key_id = getattr(ctx.key, "id", None)
    if charge or free is None or not free.submit(free_charges.row(ctx.account_id, req.request_id, req.model.name,
                                                                  tokens, unit, key_id)):
        _pay(req, ctx, tokens, unit, charge, key_id)
    ctx.record.update(model=req.model.name, prompt_tokens=tokens.prompt, completion_tokens=tokens.completion,
                      cost=billing.to_credits(charge), cost_micro=charge, estimated=False, cache_hit=True)


def _pay(req, ctx, tokens, unit: dict, charge: int, key_id: int | None) -> None:
    conf = ctx.conf
    ctx.reserved = budgets.reservation(ctx.key)  # a hit counts against its key's budget like any call
    try:
        billing.retrying(billing.charge, ctx.account_id, req.request_id, req.model.name, tokens.prompt,
                         tokens.completion, charge, tokens.detail, unit, conf.get("LOW_BALANCE_ALERTS_MICRO", -1),
                         ctx.reserved, key_id)
    except billing.DB_ERRORS:
        ctx.ext.journal.append({"op": "void", "rid": req.request_id,
                                "period": budgets.iso(ctx.reserved.period) if ctx.reserved else None})
        raise
    finally:
        give_back()
