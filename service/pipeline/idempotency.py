"""`Idempotency-Key` on chat calls: a retried call returns the stored answer and pays nothing more.

A key belongs to an account and lives 24 hours. The first call with a key claims it (a row, so
every process sees it) and runs; when it answers, the answer is stored with the row. The same
key with the same body returns the stored answer (a stream replays it as events), the same key
with another body is 422, and a duplicate while the first call still runs is 409 (which SDKs
retry). A call that fails gives its key back so the retry runs anew; a claim whose process
died expires like a hold (its owner extends it while the call runs).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json

from peewee import IntegrityError

from core import transcript
from core.errors import GatewayError, InvalidRequest
from service.pipeline.answer import Answer
from service.store.db import IdempotentCall, give_back, utcnow

WINDOW = dt.timedelta(hours=24)
HEADER = "Idempotency-Key"


class KeyInUse(GatewayError):
    status, type, code = 409, "invalid_request_error", "idempotency_key_in_flight"

    def __init__(self):
        super().__init__("A call with this Idempotency-Key is still running; retry shortly to get its "
                         "answer", param=HEADER, headers={"x-should-retry": "true"})


class KeyReused(GatewayError):
    status, type, code = 422, "invalid_request_error", "idempotency_key_reused"

    def __init__(self):
        super().__init__("This Idempotency-Key was used with a different request body; use a new key "
                         "for a new request", param=HEADER)


def check_key(key: str) -> str:
    if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise InvalidRequest(f"'{HEADER}' must be 1 to 255 printable ASCII characters", param=HEADER)
    return key


def digest(body: dict, stream: bool) -> str:
    """The request's fingerprint: its JSON body in canonical form, and whether it streams."""
    canonical = json.dumps({"body": body, "stream": stream}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def claim(account_id: int, key: str, fingerprint: str, owner: str, ttl: int) -> dict | None:
    """None when this call now owns the key (run it, then `finish` or `abandon`); the stored
    answer when the key already answered this same request; 409 or 422 otherwise."""
    for _ in range(3):
        now = utcnow()
        try:
            IdempotentCall.create(account=account_id, key=key, body_hash=fingerprint, owner=owner,
                                  lease_until=now + dt.timedelta(seconds=ttl), created=now)
            return None
        except IntegrityError:
            pass
        found = IdempotentCall.get_or_none((IdempotentCall.account == account_id) & (IdempotentCall.key == key))
        if found is None:
            continue  # given back meanwhile: claim again
        stale = found.created < now - WINDOW or (not found.done and found.lease_until < now)
        if stale:
            IdempotentCall.delete().where((IdempotentCall.id == found.id)
                                          & (IdempotentCall.done == found.done)).execute()
            continue
        if found.body_hash != fingerprint:
            raise KeyReused()
        if not found.done:
            raise KeyInUse()
        return json.loads(found.response)
    raise KeyInUse()


def finish(account_id: int, key: str, answer: dict) -> None:
    """Store the answer: later calls with the key get it."""
    (IdempotentCall.update(done=True, response=json.dumps(answer, ensure_ascii=False), owner=None)
     .where((IdempotentCall.account == account_id) & (IdempotentCall.key == key)
            & (IdempotentCall.done == False)).execute())  # noqa: E712 - peewee expression


def abandon(account_id: int, key: str) -> None:
    """The call failed: give the key back so that a retry runs."""
    (IdempotentCall.delete()
     .where((IdempotentCall.account == account_id) & (IdempotentCall.key == key)
            & (IdempotentCall.done == False)).execute())  # noqa: E712


def extend(owner: str, ttl: int) -> int:
    """Keep the claims of `owner`'s running calls alive (its heartbeat, with its holds)."""
    return (IdempotentCall.update(lease_until=utcnow() + dt.timedelta(seconds=ttl))
            .where((IdempotentCall.owner == owner) & (IdempotentCall.done == False)).execute())  # noqa: E712


def reap(now: dt.datetime | None = None) -> int:
    """Forget answers older than the window."""
    now = now or utcnow()
    return IdempotentCall.delete().where(IdempotentCall.created < now - WINDOW).execute()


def once(req, account_id: int, key: str | None, fingerprint: str | None, owner: str, ttl: int, run) -> Answer:
    """run() once per `Idempotency-Key` (when the call has one): the stored answer for a repeat of
    the same request, 409/422 for a clash; a stream is stored when it ended properly."""
    if key is None:
        return run()
    stored = claim(account_id, check_key(key), fingerprint, owner, ttl)
    if stored is not None:
        return _replayed(req, stored)
    try:
        answer = run()
    except BaseException:
        abandon(account_id, key)
        raise
    if answer.streamed:  # a stream: its answer is known when it ends
        answer.events = _recorded(answer.events, account_id, key, req.request_id, getattr(req, "transcript", None))
    else:
        finish(account_id, key, answer.body)
    return answer


def _replayed(req, stored: dict) -> Answer:
    """The stored answer of an earlier call with the same key and body; nothing is charged."""
    # (an embeddings list has no id of its own: the retry's request id names it)
    headers = {"X-Request-ID": stored.get("id") or req.request_id, "Idempotent-Replayed": "true"}
    if not req.stream:
        return Answer(stored, headers=headers)
    replay = getattr(req, "replay", None) or transcript.replay  # a pass-through call's own format
    return Answer(events=replay(stored, req.include_usage), headers=headers)


def _recorded(events, account_id: int, key: str, request_id: str, listener=None):
    """The stream's events as they go; a stream that ended properly is stored for its key, any
    other gives the key back (`listener`: a pass-through call's own transcript)."""
    heard = listener() if listener else transcript.Transcript()
    try:
        for piece in events:
            heard.feed(piece)
            yield piece
    finally:
        try:
            if heard.finished:
                finish(account_id, key, {"id": request_id, **heard.body()})
            else:
                abandon(account_id, key)
        finally:
            give_back()
