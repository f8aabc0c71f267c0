"""Several models at once (SPEC §16): `models` (2 to 8 names or ids) instead of `model`, with
`parallel: "all"` (every model answers; one `chat.completion` whose choice i is models[i]'s) or
`"first"` (the first complete answer, streamed: the first to send content, is the answer; the
other calls are closed at once).

Each model's call is a leg: an ordinary call of its own (admitted against the limits, held,
settled, one ledger row) run on a thread of its own; the legs' rows share `parallel_group`, the
answer's id. A leg closed early pays for what it consumed, as a client that hung up does: its
upstream socket is shut, so a read that waits for the next token ends at once, and the relay
settles what it had relayed. Flask-free: service/pipeline/call.py admits the legs, a view renders the answer.
"""
from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from core import chat as chat_request
from core import sse, transcript
from core.chat import ChatRequest, bad
from core.errors import GatewayError, ProviderError
from service.metrics import CHARGED, TOKENS
from service.money import billing
from service.money.ledger_marks import mark
from service.pipeline import relay
from service.store.db import give_back

log = logging.getLogger("tollgate")
MODES = ("all", "first")
MIN_MODELS, MAX_MODELS = 2, 8
JOIN_SECONDS = 10.0  # how long an answer waits for its closed legs to settle


@dataclass
class Plan:
    """A validated `models` request: the legs' calls, the mode, and the group's own call (its id
    is the answer's; idempotency and logs see it)."""

    chats: list[ChatRequest]
    mode: str
    group: ChatRequest

    @classmethod
    def of(cls, body: dict, force_stream: bool, find) -> Plan:
        """The plan of a body naming `models`; find(ref) is the usable catalogue row of a ref."""
        refs = body["models"]
        if (not isinstance(refs, list) or not MIN_MODELS <= len(refs) <= MAX_MODELS
                or not all(isinstance(r, (str, int)) and not isinstance(r, bool) and r != "" for r in refs)):
            raise bad("models", f"'models' must be a list of {MIN_MODELS} to {MAX_MODELS} model names or ids")
        if body.get("model") is not None or body.get("id") is not None:
            raise bad("models", "'models' replaces 'model': send one of them")
        mode = body.get("parallel", "all")
        if mode not in MODES:
            raise bad("parallel", "'parallel' must be \"all\" or \"first\"")
        if body.get("n", 1) != 1:
            raise bad("n", "'n' must be 1 with 'models'")
        rest = {k: v for k, v in body.items() if k not in ("models", "parallel")}
        messages = chat_request.messages_of(rest)
        stream, include_usage = chat_request.stream_flags(rest, force_stream)
        params = chat_request.params_of(rest)
        options = rest.get("stream_options") or {}
        rows = [find(ref) for ref in refs]
        chats = [ChatRequest(row, messages, dict(params), stream, include_usage, f"chatcmpl-{uuid.uuid4().hex}",
                             options) for row in rows]
        group = ChatRequest(rows[0], messages, params, stream, include_usage, f"chatcmpl-{uuid.uuid4().hex}",
                            options)
        return cls(chats, mode, group)


@dataclass
class Leg:
    """One model's call: its request, context (who pays, its own outcome record), the cache's
    view of it, and how to give back its admission slots."""

    index: int
    chat: ChatRequest
    ctx: relay.Context
    lookup: object  # answer_cache.Lookup
    give_back: object  # () -> None: the leg's concurrency slots
    opened: list = field(default_factory=list)  # the upstream streams it opened
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    group_id: str = ""

    def __post_init__(self):
        self.ctx.ext = _Watched(self.ctx.ext, self.opened, self.stop)

    def close(self) -> None:
        """Close the leg at once: its loop stops at the next piece, and a read waiting for one
        ends now (its socket shut)."""
        self.stop.set()
        for stream in list(self.opened):
            _cut(stream)

    @property
    def name(self) -> str:
        return self.chat.model.name


class _Watched:
    """The gateway's shared state as a leg's relay sees it: the same, but for a transport that
    remembers the streams it opens (so that the leg can be closed from another thread)."""

    def __init__(self, ext, opened: list, stop: threading.Event):
        self._ext, self.transport = ext, _Opening(ext.transport, opened, stop)

    def __getattr__(self, name):
        return getattr(self._ext, name)


class _Opening:
    def __init__(self, transport, opened: list, stop: threading.Event):
        self._transport, self._opened, self._stop = transport, opened, stop

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def open_stream(self, call):
        stream = self._transport.open_stream(call)
        self._opened.append(stream)
        if self._stop.is_set():  # closed while it was opening (close() set stop, then saw no stream)
            _cut(stream)
        return stream


def _cut(stream) -> None:
    """Shut an upstream stream's socket: a read blocked on it returns at once (a close from
    another thread would not wake it). The socket is the connection's, or, once http.client
    has let go of it (an answer that ends at close), the one under the response's reader."""
    sock = getattr(getattr(stream.resp, "connection", None), "sock", None)
    if sock is None:
        reader = getattr(getattr(stream.resp, "_fp", None), "fp", None)
        sock = getattr(getattr(reader, "raw", None), "_sock", None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _finish(leg: Leg, gid: str) -> None:
    """A leg has ended: its ledger row (if it was charged) joins the group, its tokens and
    credits are counted under its model; its slots go back."""
    try:
        record = leg.ctx.record
        if "prompt_tokens" in record:
            TOKENS.labels(leg.name, "prompt").inc(record["prompt_tokens"])
            TOKENS.labels(leg.name, "completion").inc(record["completion_tokens"])
            CHARGED.labels(leg.name).inc(record.get("cost_micro", 0))
        mark(leg.chat.request_id, parallel_group=gid)
    finally:
        leg.give_back()
        give_back()


def _failure(exc: BaseException) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    log.exception("parallel leg failed", exc_info=exc)
    return GatewayError("Internal error")


# --- "all", not streamed ---------------------------------------------------------------------

def complete_all(plan: Plan, legs: list[Leg], answer=relay.complete) -> dict:
    """Every leg's plain answer at once; one `chat.completion` (HTTP 200 while one answered)."""
    results: list = [None] * len(legs)
    for leg in legs:
        leg.group_id = plan.group.request_id

    def run(leg: Leg) -> None:
        try:
            results[leg.index] = leg.lookup.complete(leg.ctx, answer)
        except BaseException as exc:  # noqa: BLE001 - a leg's failure is its choice's
            results[leg.index] = _failure(exc)
        finally:
            _finish(leg, plan.group.request_id)

    _start(legs, run)
    for leg in legs:
        leg.thread.join()
    if all(isinstance(r, GatewayError) for r in results):
        raise results[0]
    choices = [_error_choice(leg, r) if isinstance(r, GatewayError) else
               {**r["choices"][0], "index": leg.index, "model": leg.name} for leg, r in zip(legs, results)]
    return {"id": plan.group.request_id, "object": "chat.completion", "created": int(time.time()),
            "model": ",".join(leg.name for leg in legs), "choices": choices, "usage": usage(legs)}


def _start(legs: list[Leg], target) -> None:
    for leg in legs:
        leg.thread = threading.Thread(target=target, args=(leg,), daemon=True,
                                      name=f"parallel-{leg.chat.request_id[-8:]}")
        leg.thread.start()


def _error_choice(leg: Leg, err: GatewayError) -> dict:
    return {"index": leg.index, "model": leg.name,
            "message": {"role": "assistant", "content": None, "refusal": None},
            "logprobs": None, "finish_reason": "error", "error": err.body()["error"]}


def usage(legs: list[Leg]) -> dict:
    """The legs' usage summed, with `by_model`: what each leg's record says it was charged."""
    rows = []
    for leg in legs:
        r = leg.ctx.record
        prompt, completion = r.get("prompt_tokens", 0), r.get("completion_tokens", 0)
        rows.append({"model": leg.name, "prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion, "cost": billing.to_credits(r.get("cost_micro", 0))})
    prompt = sum(r["prompt_tokens"] for r in rows)
    completion = sum(r["completion_tokens"] for r in rows)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "cost": billing.to_credits(sum(leg.ctx.record.get("cost_micro", 0) for leg in legs)),
            "by_model": rows}


# --- streams: "all" streamed, and "first" ------------------------------------------------------

class _Begun:
    """How many legs' streams have begun, and how many failed before they could."""

    def __init__(self, legs: int):
        self.legs, self.opened, self.failed = legs, 0, 0
        self.cond = threading.Condition()

    def count(self, opened: bool) -> None:
        with self.cond:
            self.opened += opened
            self.failed += not opened
            self.cond.notify_all()

    def wait(self) -> bool:
        """Until one leg has begun (True) or every leg failed (False)."""
        with self.cond:
            self.cond.wait_for(lambda: self.opened or self.failed == self.legs)
            return bool(self.opened)


def _pump(leg: Leg, out: queue.Queue, begun: _Begun) -> None:
    """A leg's thread: open its stream (through the cache), put each piece on `out` until it
    ends or the leg is closed, then ("end", None)."""
    try:
        events = leg.lookup.stream(leg.ctx, relay.stream)
    except BaseException as exc:  # noqa: BLE001
        out.put((leg.index, "failed", _failure(exc)))
        begun.count(False)
        try:
            _finish(leg, leg.group_id)
        finally:
            out.put((leg.index, "end", None))
        return
    begun.count(True)
    try:
        for piece in events:  # the first piece is the relay's role chunk: the stream has begun
            if leg.stop.is_set():
                break
            out.put((leg.index, "piece", piece))
    except BaseException as exc:  # noqa: BLE001
        out.put((leg.index, "failed", _failure(exc)))
    finally:
        try:
            events.close()  # closed early: the relay bills what it relayed
        finally:
            _finish(leg, leg.group_id)
            out.put((leg.index, "end", None))


def open_legs(plan: Plan, legs: list[Leg]) -> queue.Queue:
    """Start every leg's stream; return once one has begun (every leg failed first: the first
    model's error, as an ordinary JSON answer)."""
    out: queue.Queue = queue.Queue()
    begun = _Begun(len(legs))
    for leg in legs:
        leg.group_id = plan.group.request_id
        leg.chat.include_usage = True  # each leg's counts come back in its usage chunk
    _start(legs, lambda leg: _pump(leg, out, begun))
    if not begun.wait():
        _join(legs)
        failures = [item for item in out.queue if item[1] == "failed"]
        raise min(failures, key=lambda item: item[0])[2]
    return out


def _join(legs: list[Leg]) -> None:
    for leg in legs:
        leg.close()
    for leg in legs:
        leg.thread.join(JOIN_SECONDS)


def _event(piece: bytes) -> dict | None:
    """A data event as JSON; None for [DONE]."""
    return None if piece == sse.DONE else json.loads(piece[6:])


def stream_all(plan: Plan, legs: list[Leg], out: queue.Queue):
    """The legs' chunks interleaved: each names its model and carries its index; a failed model
    a chunk with finish_reason "error"; one usage chunk (when asked); one [DONE]."""
    gid, created = plan.group.request_id, int(time.time())
    live = {leg.index for leg in legs}
    try:
        while live:
            index, what, value = out.get()
            leg = legs[index]
            if what == "end":
                live.discard(index)
            elif what == "failed":
                yield _error_chunk(gid, created, leg, value.body()["error"])
            elif what == "piece":
                event = _event(value)
                if event is None or (event.get("choices") == [] and "usage" in event):
                    continue  # each leg's end and counts: the group's come once, below
                if "error" in event:
                    yield _error_chunk(gid, created, leg, event["error"])
                    continue
                for c in event.get("choices") or ():
                    c["index"] = index
                yield sse.event({**event, "id": gid, "model": leg.name})
    finally:
        _join(legs)  # a client gone: every leg closed, each pays for what it consumed
    if plan.group.include_usage:
        yield sse.chunk(gid, created, ",".join(leg.name for leg in legs), [], usage=usage(legs))
    yield sse.DONE


def _error_chunk(gid: str, created: int, leg: Leg, error: dict) -> bytes:
    choice = {**sse.delta_choice(leg.index, {}, "error"), "error": error}
    return sse.chunk(gid, created, leg.name, [choice])


def _has_content(event: dict | None) -> bool:
    return bool(event) and any((c.get("delta") or {}).get("content") or (c.get("delta") or {}).get("tool_calls")
                               for c in event.get("choices") or ())


def stream_first(plan: Plan, legs: list[Leg], out: queue.Queue):
    """The first leg to send content (or to end properly) is the answer, its events as they
    are; the others are closed at once. None answered: the last error event."""
    winner, held, error = None, {leg.index: [] for leg in legs}, None
    live = {leg.index for leg in legs}
    try:
        while live:
            index, what, value = out.get()
            if what == "end":
                live.discard(index)
                if index == winner:
                    break
                continue
            if what == "failed":
                error = sse.event(value.body())
                if index == winner:
                    yield error
                continue
            if what != "piece":
                continue
            if winner is not None:
                if index == winner:
                    yield value
                continue
            event = _event(value)
            if event is not None and "error" in event:
                error = value
                continue
            held[index].append(value)
            if _has_content(event) or value == sse.DONE:
                winner = index
                for leg in legs:
                    if leg.index != winner:
                        leg.close()
                yield from held[index]
        if winner is None and error is not None:
            yield error
    finally:
        _join(legs)  # the others closed at once; a client gone: the winner too


def complete_first(plan: Plan, legs: list[Leg], out: queue.Queue) -> dict:
    """The first leg whose stream ended properly, as a plain `chat.completion`; the others are
    closed at once (each pays for what it consumed)."""
    heard = {leg.index: transcript.Transcript() for leg in legs}
    live, error = {leg.index for leg in legs}, None
    try:
        while live:
            index, what, value = out.get()
            if what == "end":
                live.discard(index)
            elif what == "failed":
                error = error or value
            elif what == "piece":
                heard[index].feed(value)
                event = _event(value)
                if event is not None and "error" in event:
                    error = error or ProviderError(event["error"].get("message", "failed"))
                if heard[index].finished:
                    legs[index].thread.join(JOIN_SECONDS)  # its ledger row marked
                    return heard[index].body()
    finally:
        _join(legs)
    raise error or ProviderError("No model answered")


def prepare_first(plan: Plan) -> None:
    """`first` runs each leg as a stream (a stream can be closed at once, whatever has come)."""
    for chat in plan.chats:
        chat.stream = True


def legs_view(plan: Plan, legs: list[Leg]):
    """The answer of a plan whose legs are admitted: a body, or an iterator of SSE events."""
    if plan.mode == "all" and not plan.group.stream:
        return complete_all(plan, legs)
    if plan.mode == "first":
        prepare_first(plan)
    out = open_legs(plan, legs)
    if plan.mode == "all":
        return stream_all(plan, legs, out)
    if plan.group.stream:
        return stream_first(plan, legs, out)
    return complete_first(plan, legs, out)


