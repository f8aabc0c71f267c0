"""One call through the gateway, the same for every front door (SPEC §13): admission (rate limits,
token budget, caps in flight), idempotency, the response cache, then the relay's hold → call →
settle; the outcome record that the request log, metrics and traces read. Flask-free: a view
parses its door's request, builds a Call with everything it needs, and renders the Answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.embedding import EmbeddingRequest
from service.limits.rates import Limits
from service.pipeline import answer_cache, deployments, idempotency, parallel, relay, router, traces
from service.pipeline.answer import Answer


@dataclass
class Call:
    """A parsed request (a ChatRequest, a PassThrough, an EmbeddingRequest or a parallel Plan) and
    what it is answered with: who pays, which key, the limits, the idempotency key with the
    request's fingerprint, the client's Cache-Control, the outcome record; the process's shared
    state (`ext`: the app factory's Tollgate), the response cache's store and the settings."""

    request: object
    account: object  # who pays: .id, .name
    key: object  # the API key the call came with (None: a JWT or no credential)
    limits: Limits
    record: dict  # the outcome record: logs, metrics and traces read it
    ext: object
    answers: answer_cache.Store
    conf: dict
    idempotency_key: str | None = None
    digest: str | None = None  # the request's fingerprint (service/pipeline/idempotency.py), with a key
    cache_control: str | None = None
    rate_headers: dict = field(default_factory=dict)  # the limit shown, once admission has run
    model: object = None  # the row whose limits were taken last (a plan's: its last leg's)

    def run(self) -> Answer:
        """The answer: admitted, then run once per idempotency key; the call's slots are given back
        however it ends (a stream's when its response closes)."""
        if isinstance(self.request, parallel.Plan):
            return self._plan(self.request)
        req = self.request
        cached = answer_cache.Lookup(self.answers, req, self.account.id, self.cache_control, read=False,
                                     free=self.ext.free_charges)
        with cached.said():
            with traces.step(self.record, "admission"):
                lease = self._admit(req, cached.peek(), cached.instant())
            return self._once(req, lambda: self._answer(req, lease, cached),
                              [lambda: self.ext.slots.give_back(lease)])

    def _admit(self, req, peek: str | None = None, waive: bool = False):
        """Take the call's limits for its model (its rpm), or 429; on a lone Redis, a routed row's
        first deployment and the call's cached answer (`peek`) in the same script
        (service/pipeline/router.py tries the call on that deployment first)."""
        self.model = req.model
        fleet, ahead = self.ext.fleet, None
        if (not isinstance(req, EmbeddingRequest) and req.model is not None and deployments.of(req.model)
                and fleet.folds()):
            ahead = router.ahead(req, req.model, fleet)
        lease = self.ext.admission.admit(req.request_id, self.limits.rates(req.model), self.account.name,
                                         self.limits.caps(), self.rate_headers, ahead[1] if ahead else None, peek,
                                         waive)
        if ahead and lease is not None and lease.deployment:
            fleet.taken(req.model, ahead[0], lease, ahead[2])
        return lease

    def _once(self, req, run, undo: list) -> Answer:
        """run() under the idempotency key; undo when it never ran (a replay, a refused key)."""
        ran = False

        def first():
            nonlocal ran
            ran = True
            return run()

        try:
            return idempotency.once(req, self.account.id, self.idempotency_key, self.digest, self.ext.owner,
                                    self.conf["HOLD_TTL_SECONDS"], first)
        finally:
            if not ran:
                for each in undo:
                    each()

    def _context(self, lease, record: dict | None = None) -> relay.Context:
        """What the relay needs besides the request: who pays, the tokens counted under the
        account's minute when it ends, the lease, the key (its budget, its spend)."""
        ext, name = self.ext, self.account.name
        return relay.Context(self.account.id, ext, self.conf, lambda tokens: ext.budget.spend(name, tokens, lease),
                             {} if record is None else record, lease=lease, key=self.key)

    def _answer(self, req, lease, cached: answer_cache.Lookup) -> Answer:
        """The admitted call, through the cache: a body, or the stream (its lease and deployment
        given back when its response closes)."""
        slots = self.ext.slots
        self.record.update(request_id=req.request_id, model=req.model.name)
        cached.read(lease)
        if cached.entry is None:  # an answer read along that proved none: a call after all
            try:
                self.ext.admission.take_waived(lease)
            except BaseException:
                slots.give_back(lease)
                raise
        ctx = self._context(lease, self.record)
        headers = {"X-Request-ID": req.request_id, **cached.headers}
        if not req.stream:
            complete = relay.embed if isinstance(req, EmbeddingRequest) else relay.complete
            try:
                return Answer(cached.complete(ctx, complete), headers=headers)
            finally:
                ctx.close()
                slots.give_back(lease)
        try:
            events = cached.stream(ctx, relay.stream)
        except BaseException:
            ctx.close()
            slots.give_back(lease)
            raise
        return Answer(events=events, headers=headers, on_close=[ctx.close, lambda: slots.give_back(lease)])

    def _plan(self, plan: parallel.Plan) -> Answer:
        """Several models at once: each model's call admitted on its own (its limits, caps and
        slot), then the plan run once per idempotency key."""
        legs = []
        try:
            for i, chat in enumerate(plan.chats):
                lease = self._admit(chat)
                lookup = answer_cache.Lookup(self.answers, chat, self.account.id, self.cache_control)
                legs.append(parallel.Leg(i, chat, self._context(lease), lookup,
                                         lambda lease=lease: self.ext.slots.give_back(lease)))
        except BaseException:
            for leg in legs:
                leg.give_back()
            raise
        return self._once(plan.group, lambda: self._legs(plan, legs), [leg.give_back for leg in legs])

    def _legs(self, plan: parallel.Plan, legs: list) -> Answer:
        self.record.update(request_id=plan.group.request_id, model=",".join(c.model.name for c in plan.chats))
        answer = parallel.legs_view(plan, legs)
        headers = {"X-Request-ID": plan.group.request_id}
        if isinstance(answer, dict):
            return Answer(answer, headers=headers)
        return Answer(events=answer, headers=headers)
