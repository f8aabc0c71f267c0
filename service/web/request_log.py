"""The request log (SPEC §17): one row per call on the chat, Messages, Responses and embeddings
doors whose account is known, answered, failed or refused.

The row is built from what service/web/observe.py's access line is built from (`g.outcome`, which
the relay fills) when the response is done (a stream: when its body closes): one tuple in the
table's column order, appended to a bounded deque. A call takes no lock and wakes no thread for
it; a writer thread per process (service/store/batches.py) wakes every LOG_WRITE_SECONDS and
writes what gathered in one transaction (one COPY on PostgreSQL). A full deque drops the row and
counts it (`tollgate_request_log_dropped_total`). Rows are unique by request id, so a batch
written again after a lost commit adds nothing.
Bodies, when the account or key asks for them, are redacted and cut by the writer, off the path
(whether they are kept is decided when the call ends: the key's flag is on its row, the
account's is read at most once per FLAG_SECONDS per process).
"""
from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import re
import time
import uuid
import weakref

from flask import current_app, g, request
from prometheus_client import Counter, Gauge

from service.store import batches, bulk, redact
from service.store.db import Account, RequestBody, RequestLog, utcnow

log = logging.getLogger("tollgate")
DROPPED = Counter("tollgate_request_log_dropped_total", "Request log rows dropped because the queue was full")
WRITTEN = Counter("tollgate_request_log_written_total", "Request log rows written")
DEPTH = Gauge("tollgate_request_log_queue", "Request log rows waiting to be written")
_writers: weakref.WeakSet = weakref.WeakSet()  # this process's writers, whose queues DEPTH shows
DEPTH.set_function(lambda: sum(len(w.pending) for w in list(_writers)))  # read at scrape time
DOORS = {"chat.completions": "chat", "messages.create": "messages", "responses.create": "responses",
         "embeddings.create": "embeddings"}
SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
FLAG_SECONDS = 2.0  # how long a process trusts what it read of an account's `log_bodies`
PRUNE_BATCH = 5000
SLACK = 1024  # bytes kept beyond the bound until redaction has run


class Writer(batches.Batches):
    """The request log's rows on a bounded deque (service/store/batches.py), written every
    `interval`, old rows pruned every `prune_every` seconds."""

    name = "request log"

    def __init__(self, size: int = 10_000, batch: int = 500, retry: float = 1.0,
                 prune_every: float = 3600.0, retention: tuple[int, int] = (30, 7), interval: float = 0.5):
        super().__init__(size, batch, retry, interval)
        self.prune_every, self.retention = prune_every, retention
        self.flags: dict[int, tuple[bool, float]] = {}  # account id -> (log_bodies, read at)
        self.known: tuple = ()  # secrets redacted wherever they appear (the provider keys)
        self._pruned = time.monotonic()
        _writers.add(self)

    def submit(self, row: tuple, bodies: dict | None = None) -> bool:
        """Queue a row (and its bodies); False, counted, when the deque is full."""
        if super().submit((row, bodies)):
            return True
        DROPPED.inc()
        return False

    def tick(self) -> None:
        if time.monotonic() - self._pruned >= self.prune_every:
            self._pruned = time.monotonic()
            self.quietly(lambda: prune(*self.retention))

    def write(self, items: list) -> None:
        """Insert rows (and the bodies of accounts or keys that keep them) in one transaction."""
        rows = [row for row, _ in items]
        kept = [_body_row(row, bodies, self.known) for row, bodies in items if bodies]
        from service.money.billing import write_tx

        with write_tx():
            bulk.append(RequestLog, COLUMNS, rows)
            bulk.insert_ignoring_duplicates(RequestBody, kept)
        WRITTEN.inc(len(rows))

    def account_flag(self, account_id: int) -> bool | None:
        """What this process last read of an account's `log_bodies` (None: not read lately)."""
        known = self.flags.get(account_id)
        if known is None or time.monotonic() - known[1] > FLAG_SECONDS:
            return None
        return known[0]

    def read_flag(self, account_id: int) -> bool:
        """An account's `log_bodies` read now (once per FLAG_SECONDS per account and process);
        False when the database cannot say."""
        from service.money.billing import DB_ERRORS

        try:
            flag = bool(Account.select(Account.log_bodies).where(Account.id == account_id).scalar())
        except DB_ERRORS:
            return False
        self.flags[account_id] = (flag, time.monotonic())
        return flag

    def forget(self, account_id: int) -> None:
        self.flags.pop(account_id, None)


def _body_row(row: tuple, bodies: dict, known) -> dict:
    limit = bodies["limit"]
    return {"request_id": row[0], "created": row[3],  # COLUMNS' first and fourth
            "request": redact.cut(redact.scrub(_text(bodies.get("request")), known), limit),
            "response": redact.cut(redact.scrub(_text(bodies.get("response")), known), limit)}


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list):
        return b"".join(value).decode("utf-8", "replace")
    return json.dumps(value, ensure_ascii=False)


def prune(days: int, body_days: int, now: dt.datetime | None = None) -> int:
    """Delete rows older than `days` and bodies older than `body_days`, a chunk at a time;
    how many rows went."""
    now = now or utcnow()
    gone = 0
    for model, keep in ((RequestBody, body_days), (RequestLog, days)):
        cutoff = now - dt.timedelta(days=keep)
        while True:
            ids = [r.id for r in model.select(model.id).where(model.created < cutoff).limit(PRUNE_BATCH)]
            if not ids:
                break
            model.delete().where(model.id.in_(ids)).execute()
            if model is RequestLog:
                gone += len(ids)
    return gone


class _Tee:
    """A streamed body passed through untouched, its first `limit` bytes kept for the log."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit, self.kept, self.size = inner, limit, [], 0

    def __iter__(self):
        for piece in self.inner:
            if self.size < self.limit:
                data = piece if isinstance(piece, bytes) else str(piece).encode()
                self.kept.append(data[: self.limit - self.size])
                self.size += len(self.kept[-1])
            yield piece

    def close(self):
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def _keeps_bodies(writer: Writer, account, key) -> bool:
    """Whether this call's bodies are kept: its key's flag (on the row auth read), else its
    account's (as this process read it in the last FLAG_SECONDS, else read now)."""
    if key is not None and key.log_bodies:
        return True
    flag = getattr(account, "log_bodies", None)
    if flag is None:
        flag = writer.account_flag(account.id)
    if flag is None:
        flag = writer.read_flag(account.id)
    return bool(flag)


def _logged(response):
    """after_request: queue this call's row (a stream's when its body closes). `g` and `request`
    are resolved once: each use of Flask's proxies is a context-variable lookup of its own."""
    req = request._get_current_object()
    endpoint = DOORS.get(req.endpoint)
    if endpoint is None:
        return response
    ctx = g._get_current_object()
    account = ctx.get("account")
    if account is None or "started" not in ctx:
        return response
    writer = current_app.extensions.get("tollgate_log")
    if writer is None:
        return response
    try:
        record = ctx.setdefault("outcome", {})
        if "request_id" not in record:
            record["request_id"] = getattr(ctx.get("chat"), "request_id", None) or f"req-{uuid.uuid4().hex}"
        key = ctx.get("api_key")
        client_id = req.headers.get("X-Request-ID")
        streamed = response.is_streamed
        # what the request context knows; the relay's part of the record is read when the body is done
        known = (account.id, key.id if key is not None else None, endpoint, getattr(ctx.get("model"), "name", None),
                 response.status_code, ctx.get("error_code"), streamed,
                 client_id if client_id and SAFE_ID.fullmatch(client_id) else None)
        started = ctx.started
        bodies = _bodies(req, response, streamed) if _keeps_bodies(writer, account, key) else None
        if streamed:
            response.call_on_close(lambda: _submit(writer, known, record, started, bodies))
        else:
            writer.submit(_row(known, record, started), bodies)
    except Exception:  # noqa: BLE001 - the log never fails a call
        log.exception("request log: could not build a row")
    return response


COLUMNS = ("request_id", "account_id", "key_id", "created", "endpoint", "model", "deployment", "status",
           "error_code", "latency_ms", "upstream_ms", "ttft_ms", "prompt_tokens", "completion_tokens",
           "cached_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "reasoning_tokens", "cost",
           "cache_hit", "estimated", "stream", "client_request_id")  # the order of _row's tuple


def _row(known: tuple, record: dict, started: float) -> tuple:
    """The row, in COLUMNS order: what `_logged` read from the request context, and what the relay
    wrote to `record` by the time the body was done."""
    account_id, key_id, endpoint, model, status, error_code, streamed, client_id = known
    latency = time.perf_counter() - started
    get = record.get
    upstream, ttft = get("upstream_ms"), get("ttft_ms")
    return (record["request_id"], account_id, key_id, utcnow() - dt.timedelta(seconds=latency), endpoint,
            get("model") or model, get("deployment"), status, get("error") or error_code, round(latency * 1000),
            None if upstream is None else round(upstream), None if ttft is None else round(ttft),
            get("prompt_tokens") or 0, get("completion_tokens") or 0, get("cached_tokens") or 0,
            get("cache_write_5m_tokens") or 0, get("cache_write_1h_tokens") or 0, get("reasoning_tokens") or 0,
            get("cost_micro") or 0, bool(get("cache_hit")), bool(get("estimated")), streamed, client_id)


def _bodies(req, response, streamed: bool) -> dict:
    """The request and the answer (a stream's first bytes, as they pass), to be kept."""
    limit = current_app.config.get("LOG_BODY_MAX_BYTES", 65536)
    limit += SLACK  # a secret cut at the bound is still seen whole by the redaction
    bodies = {"limit": limit - SLACK, "request": req.get_data(cache=True)[:limit]}  # as the client sent it
    if streamed:
        tee = _Tee(response.response, limit)
        response.response = tee
        bodies["response"] = tee.kept
    else:
        bodies["response"] = response.get_data()[:limit]
    return bodies


def _submit(writer: Writer, known: tuple, record: dict, started: float, bodies: dict | None) -> None:
    try:
        writer.submit(_row(known, record, started), bodies)
    except Exception:  # noqa: BLE001 - the log never fails a call
        log.exception("request log: could not queue a row")


def init_app(app) -> None:
    """Start this process's writer (unless REQUEST_LOG is off) and queue a row per call."""
    conf = app.config
    if not conf.get("REQUEST_LOG", True):
        return
    writer = Writer(conf.get("LOG_QUEUE_SIZE", 10_000), conf.get("LOG_BATCH_SIZE", 500),
                    retry=conf.get("LOG_RETRY_SECONDS", 1.0), prune_every=conf.get("LOG_PRUNE_SECONDS", 3600.0),
                    retention=(conf.get("LOG_RETENTION_DAYS", 30), conf.get("LOG_BODY_RETENTION_DAYS", 7)),
                    interval=conf.get("LOG_WRITE_SECONDS", 0.5))
    writer.known = tuple(v for v in (conf.get("PROVIDER_KEYS") or {}).values() if v)
    app.extensions["tollgate_log"] = writer
    app.after_request(_logged)
    writer.start()
    ref = weakref.ref(writer)
    atexit.register(lambda: ref() is not None and ref().close())
