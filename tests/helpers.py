"""Small helpers shared by tests."""
from __future__ import annotations

import json
import sqlite3
import time

from service.money import billing, free_charges
from service.store.db import Account, Hold, LedgerEntry, db, open_database
from tests.fakes.tcp_proxy import TcpProxy


def ledger(name: str) -> list[LedgerEntry]:
    free_charges.flush_all()  # free cache hits' rows are written after their answers
    acct = Account.get(Account.name == name)
    return list(LedgerEntry.select().where(LedgerEntry.account == acct.id).order_by(LedgerEntry.id))


def charges(name: str) -> list[LedgerEntry]:
    return [e for e in ledger(name) if e.kind == "charge"]


def account(name: str) -> Account:
    return Account.get(Account.name == name)


def holds() -> int:
    return Hold.select().count()


def invariant(name: str) -> None:
    """SPEC §9: balance = sum of ledger deltas, held = sum of holds, balance - held >= 0."""
    acct = account(name)
    assert acct.balance == sum(e.delta for e in ledger(name))
    assert acct.held == sum(h.amount for h in Hold.select().where(Hold.account == acct.id))
    assert acct.balance - acct.held >= 0


def wait_for(condition, timeout: float = 5.0):
    """Await a condition another thread brings about (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def basic(usage: dict) -> dict:
    """A client usage object's counts and cost, after checking the token-class parts agree:
    cost_details sum to the cost, and the cached/reasoning details are present."""
    assert round(sum(usage["cost_details"].values()), 6) == usage["cost"], usage
    assert isinstance(usage["prompt_tokens_details"]["cached_tokens"], int)
    assert isinstance(usage["completion_tokens_details"]["reasoning_tokens"], int)
    return {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens", "cost")}


def json_answer(body):
    """A fake upstream handler answering `body` (a dict or JSON bytes) as application/json."""
    import json

    from werkzeug import Response

    return lambda request: Response(json.dumps(body) if isinstance(body, dict) else body,
                                    content_type="application/json")


def events(response) -> list:
    """The data events of an SSE answer (a test client's response), [DONE] as the string."""
    out = []
    for block in response.get_data().split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[6:]
            out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


def anthropic_shape(kind: str, obj: dict) -> None:
    """`obj` is what Anthropic documents (the anthropic SDK's pydantic types, validated strictly:
    required fields present, literals and types exact, no field the type does not know):
    kind is `message`, `event` (a stream event) or `error` (an error body)."""
    import pydantic
    from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent

    if kind == "message":
        parsed = Message.model_validate(obj, strict=True)
    elif kind == "error" or obj.get("type") == "error":  # an error event is an error body
        parsed = ErrorResponse.model_validate(obj, strict=True)
    else:
        parsed = pydantic.TypeAdapter(RawMessageStreamEvent).validate_python(obj, strict=True)
    _known_only(parsed, obj)


def _known_only(model, obj) -> None:
    """Every key of `obj` is a field of its parsed model, all the way down."""
    import pydantic

    if isinstance(model, pydantic.BaseModel):
        assert isinstance(obj, dict), obj
        unknown = set(obj) - set(type(model).model_fields)
        assert not unknown, f"{type(model).__name__} has no field {sorted(unknown)}"
        for name in obj:
            _known_only(getattr(model, name), obj[name])
    elif isinstance(model, list):
        for m, o in zip(model, obj):
            _known_only(m, o)


class Outage:
    """Makes the database unreachable for the app and brings it back: PostgreSQL behind a TCP
    proxy that is cut; SQLite write-locked by another connection (the app waits 200 ms)."""

    def __init__(self, db_url: str, tmp_path):
        self.sqlite = db_url.startswith("sqlite")
        if self.sqlite:
            self.url = f"{db_url}?busy_timeout=200"
            self.path = db_url.split(":///", 1)[1]
            self.locker = None
        else:
            self.direct = db_url
            self.proxy = TcpProxy("127.0.0.1", 5432)
            self.url = db_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.proxy.port}")

    def cut(self) -> None:
        if self.sqlite:
            self.locker = sqlite3.connect(self.path, timeout=30, check_same_thread=False,
                                          isolation_level=None)
            self.locker.execute("BEGIN IMMEDIATE")
        else:
            self.proxy.cut()

    def restore(self) -> None:
        if self.sqlite:
            self.locker.execute("ROLLBACK")
            self.locker.close()
        else:
            self.proxy.restore()
        billing.reconnect()  # this test thread's own connection died with the outage

    def close(self) -> None:
        if not self.sqlite:
            self.proxy.close()
            billing.reconnect()
            db.initialize(open_database(self.direct))  # the fixtures' clean-up goes direct
