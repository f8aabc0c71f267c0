"""Peewee models: the catalogue, accounts, holds, the ledger and API keys.

Money columns are integer micro-credits (1 credit = 1 000 000).
"""
from __future__ import annotations

import datetime as dt
import json

from peewee import (
    Check, DatabaseProxy, InterfaceError, OperationalError, PostgresqlDatabase, BigIntegerField, BooleanField,
    CharField, DateTimeField, ForeignKeyField, IntegerField, Model, SQL, TextField,
)
from playhouse.db_url import parse

from core.usage import Usage
from service.store.pool import WakingPostgresqlDatabase, WakingSqliteDatabase

db = DatabaseProxy()  # bound to a pooled database by create_app (service/app.py)
DB_ERRORS = (OperationalError, InterfaceError)  # the database is unreachable or the link broke


def utcnow() -> dt.datetime:
    """Naive UTC now (stored the same way on SQLite and PostgreSQL)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class JSONField(TextField):
    """A list or dict stored as JSON text (portable across SQLite and PostgreSQL)."""

    def db_value(self, value):
        return None if value is None else json.dumps(value)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class Base(Model):
    class Meta:
        database = db


class AIModel(Base):
    """One catalogue row (SPEC §4)."""

    id = IntegerField(primary_key=True)
    name = CharField(unique=True)
    provider = CharField()
    api = CharField()
    upstream_model = CharField()
    base_url = CharField(null=True)
    api_key_env = CharField(null=True)
    cost_per_1k_tokens = BigIntegerField(default=0)
    cost_per_1k_input_tokens = BigIntegerField(null=True)
    cost_per_1k_output_tokens = BigIntegerField(null=True)
    cost_per_1k_cached_input_tokens = BigIntegerField(null=True)  # unset: the input price
    cost_per_1k_cache_write_5m_tokens = BigIntegerField(null=True)  # unset: the input price
    cost_per_1k_cache_write_1h_tokens = BigIntegerField(null=True)  # unset: the input price
    cost_per_1k_reasoning_tokens = BigIntegerField(null=True)  # unset: the output price
    max_output_tokens = IntegerField(default=4096)
    rpm = IntegerField(null=True)
    aliases = JSONField(default=list)
    fallbacks = JSONField(default=list)
    enabled = BooleanField(default=True)
    connect_timeout = IntegerField(null=True)
    read_timeout = IntegerField(null=True)
    image_tokens = IntegerField(null=True)  # prompt tokens held per image part (None: IMAGE_TOKENS)
    kind = CharField(default="chat", constraints=[SQL("DEFAULT 'chat'")])  # chat | embedding
    cache_ttl = IntegerField(null=True)  # seconds answers are cached (None or 0: no cache; SPEC §16)
    cache_scope = CharField(default="account", constraints=[SQL("DEFAULT 'account'")])  # account | global
    cost_per_1k_cache_hit_tokens = BigIntegerField(null=True)  # a cache hit's price (None: free)
    deployments = JSONField(null=True)  # SPEC §15: [{name, weight, priority, ...}] (service/pipeline/deployments.py)
    routing = CharField(null=True)  # weighted (None) | least_busy | latency
    updated = DateTimeField(default=utcnow)

    class Meta:
        table_name = "ai_model"


class ModelPrice(Base):
    """A catalogue row's prices per token class from `effective_from` on (resolved: every class
    priced); a call is billed at the prices in force when it started."""

    model = ForeignKeyField(AIModel, backref="prices", on_delete="CASCADE")
    effective_from = DateTimeField(index=True)
    prices = JSONField()
    created = DateTimeField(default=utcnow)

    class Meta:
        table_name = "model_price"


class Account(Base):
    name = CharField(unique=True)
    balance = BigIntegerField(default=0)
    held = BigIntegerField(default=0)
    low_balance_threshold = BigIntegerField(null=True)  # micro-credits; None: the setting
    created = DateTimeField(default=utcnow)
    log_bodies = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])  # request log keeps bodies


class Hold(Base):
    request_id = CharField(unique=True)
    account = ForeignKeyField(Account, backref="holds", on_delete="CASCADE")
    amount = BigIntegerField()
    expires_at = DateTimeField(index=True)
    owner = CharField(null=True, index=True)  # the process whose call holds it; it extends the expiry
    model = CharField(null=True)  # the call's model (shown to operators)
    created = DateTimeField(null=True)  # when the call took it (its age, for operators)
    key_id = IntegerField(null=True)  # the API key whose period budget this hold also counts against
    period_start = DateTimeField(null=True)  # ... and that budget period (service/money/budgets.py)


class LedgerEntry(Base):
    """One row per balance change; `delta` is signed (charges negative)."""

    account = ForeignKeyField(Account, backref="ledger", on_delete="CASCADE")
    request_id = CharField(unique=True)
    model = CharField(null=True)
    prompt_tokens = IntegerField(default=0)
    completion_tokens = IntegerField(default=0)
    delta = BigIntegerField()
    kind = CharField()  # charge | topup | adjust | overrun
    estimated = BooleanField(default=False)
    note = CharField(null=True)
    operator = CharField(null=True)  # top-ups and corrections: the operator (account name) who made it
    # overrun rows: cost beyond the hold, paid by the gateway (DEFAULT 0 in the schema, as migration 4 adds it)
    absorbed = BigIntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    cached_tokens = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])  # prompt tokens read from a cache
    cache_write_5m_tokens = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    cache_write_1h_tokens = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    reasoning_tokens = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])  # completion tokens spent thinking
    prices = JSONField(null=True)  # the unit prices applied, per class (micro-credits per 1k)
    cache_hit = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])  # answered from the cache
    parallel_group = CharField(null=True)  # the calls of one `models` request share it (SPEC §16)
    deployment = CharField(null=True)  # the model's deployment that answered (None: the row itself)
    created = DateTimeField(default=utcnow, index=True)
    key_id = IntegerField(null=True, index=True)  # the API key that made the call (None: a JWT)

    @property
    def usage(self) -> Usage:
        """The row's tokens per class."""
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens,
                     self.cache_write_5m_tokens, self.cache_write_1h_tokens, self.reasoning_tokens)


class ApiKey(Base):
    account = ForeignKeyField(Account, backref="keys", on_delete="CASCADE")
    name = CharField(null=True)
    key_hash = CharField(unique=True)
    prefix = CharField()
    rpm = IntegerField(null=True)
    max_concurrent = IntegerField(null=True)  # calls in flight at once with this key (None: the setting)
    models = JSONField(null=True)
    expires_at = DateTimeField(null=True)
    revoked_at = DateTimeField(null=True)
    parent_id = IntegerField(null=True)  # minted from this key's console session: bound by it too
    created = DateTimeField(default=utcnow)
    budget = BigIntegerField(null=True)  # micro-credits per period (None: no budget)
    budget_period = CharField(null=True)  # day | week | month (UTC) | total
    log_bodies = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])

    class Meta:
        table_name = "api_key"


class IdempotentCall(Base):
    """A chat call made with an `Idempotency-Key`: running, then its stored answer for 24 hours."""

    account = ForeignKeyField(Account, on_delete="CASCADE")
    key = CharField()
    body_hash = CharField()
    done = BooleanField(default=False)
    response = TextField(null=True)  # the chat.completion body, as JSON
    owner = CharField(null=True)  # the process running it; it extends `lease_until`
    lease_until = DateTimeField()
    created = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "idempotent_call"
        indexes = ((("account", "key"), True),)


class StoredResponse(Base):
    """A Responses API answer kept (`store`, the default) so that `previous_response_id` can
    continue its conversation, and GET/DELETE can find it."""

    account = ForeignKeyField(Account, on_delete="CASCADE")
    response_id = CharField(unique=True)
    conversation = JSONField()  # chat messages so far, this answer included (instructions excluded)
    input_items = JSONField()  # this request's input items, with ids
    body = JSONField()  # the Response object
    created = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "stored_response"


class AlertOutbox(Base):
    """A low-balance alert: written with the charge that crossed the threshold, delivered by
    webhook (retried with backoff) and kept as the delivery record."""

    account = ForeignKeyField(Account, null=True, on_delete="CASCADE")  # None: not an account's alert
    kind = CharField(default="low_balance")
    request_id = CharField(null=True)
    balance = BigIntegerField()
    threshold = BigIntegerField()
    created = DateTimeField(default=utcnow)
    next_attempt = DateTimeField(index=True)
    attempts = IntegerField(default=0)
    delivered_at = DateTimeField(null=True)
    last_status = IntegerField(null=True)
    last_error = CharField(null=True)
    detail = JSONField(null=True)  # what an alert that is not about a balance says (deployment_disabled)

    class Meta:
        table_name = "alert_outbox"


class ConsoleSession(Base):
    """A signed-in console browser: the hash of its cookie, who, with which credential, and its
    CSRF token."""

    token_hash = CharField(unique=True)
    account = ForeignKeyField(Account, on_delete="CASCADE")
    admin = BooleanField(default=False)
    key_id = IntegerField(null=True)  # the API key it was opened with (None: a JWT)
    csrf = CharField()
    flash = TextField(null=True)  # a message for the next page (a new key: sealed with the cookie's token)
    expires_at = DateTimeField(index=True)  # the credential's own expiry when that comes sooner
    created = DateTimeField(default=utcnow)

    class Meta:
        table_name = "console_session"


class KeySpend(Base):
    """What an API key with a budget spent and holds in one budget period; a hold may only raise
    `held` while spent + held stays within the key's budget (service/money/billing.py)."""

    key_id = IntegerField()
    period_start = DateTimeField()
    spent = BigIntegerField(default=0, constraints=[SQL("DEFAULT 0"), Check("spent >= 0")])
    held = BigIntegerField(default=0, constraints=[SQL("DEFAULT 0"), Check("held >= 0")])

    class Meta:
        table_name = "key_spend"
        indexes = ((("key_id", "period_start"), True),)


class RequestLog(Base):
    """One call on a front door (SPEC §17): answered, failed or refused. Written in batches by
    service/web/request_log.py; `request_id` is unique, so a batch written twice adds nothing."""

    request_id = CharField(unique=True)
    account_id = IntegerField()
    key_id = IntegerField(null=True)
    created = DateTimeField(default=utcnow, index=True)
    endpoint = CharField()
    model = CharField(null=True)
    deployment = CharField(null=True)
    status = IntegerField()
    error_code = CharField(null=True)
    latency_ms = IntegerField()
    upstream_ms = IntegerField(null=True)
    ttft_ms = IntegerField(null=True)
    prompt_tokens = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    completion_tokens = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    cached_tokens = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    cache_write_5m_tokens = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    cache_write_1h_tokens = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    reasoning_tokens = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    cost = BigIntegerField(default=0, constraints=[SQL("DEFAULT 0")])  # micro-credits charged
    cache_hit = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])
    estimated = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])
    stream = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])
    client_request_id = CharField(null=True)

    class Meta:
        table_name = "request_log"
        indexes = ((("account_id", "id"), False), (("account_id", "model", "id"), False),
                   (("account_id", "key_id", "id"), False), (("account_id", "status", "id"), False))


class RequestBody(Base):
    """A logged call's request and answer, redacted and cut (kept fewer days than its row)."""

    request_id = CharField(unique=True)
    created = DateTimeField(default=utcnow, index=True)
    request = TextField(null=True)
    response = TextField(null=True)

    class Meta:
        table_name = "request_body"


class AuditEntry(Base):
    """An operator's action or a console sign-in; rows are only ever added (pruned never)."""

    created = DateTimeField(default=utcnow)
    actor = CharField()
    action = CharField()
    target = CharField(null=True)
    detail = JSONField(null=True)
    ip = CharField(null=True)

    class Meta:
        table_name = "audit_entry"
        indexes = ((("actor", "id"), False), (("action", "id"), False))


class SchemaVersion(Base):
    version = IntegerField(primary_key=True)
    applied = DateTimeField(default=utcnow)

    class Meta:
        table_name = "schema_version"


TABLES = [AIModel, ModelPrice, Account, Hold, LedgerEntry, ApiKey, IdempotentCall, AlertOutbox,
          StoredResponse, ConsoleSession, KeySpend, RequestLog, RequestBody, AuditEntry]


def open_database(url: str, pool_size: int = 32):
    """A pooled Peewee database for a `db_url`: at most `pool_size` connections, each thread
    taking one only while it talks to the database (a call in flight for minutes holds none).
    SQLite is tuned for concurrent writers (`?busy_timeout=` ms in the URL, default 10 s)."""
    params = parse(url)
    if url.startswith("sqlite"):
        busy = int(params.pop("busy_timeout", 10000))
        path = params.pop("database")
        if path and path != ":memory:":
            import pathlib

            pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        return WakingSqliteDatabase(path, max_connections=pool_size, timeout=30, stale_timeout=300,
                                    check_same_thread=False,
                                    pragmas={"journal_mode": "wal", "busy_timeout": busy,
                                             "foreign_keys": 1, "synchronous": "normal"}, **params)
    database = params.pop("database")
    return WakingPostgresqlDatabase(database, max_connections=pool_size, timeout=30, stale_timeout=300,
                                    **params)


def give_back() -> None:
    """Return this thread's pooled connection, if it holds one (a request's when it ends; a
    stream's body, which runs later, after each write it makes)."""
    if not db.is_closed():
        db.close()


def reconnect() -> None:
    """After a database error: discard this thread's connection, and the pool's idle ones (a
    database that went away leaves every pooled link dead, though none knows it before its next
    query); the next query opens a new one."""
    db.discard()
    try:
        db.close_idle()
    except Exception:  # noqa: BLE001 - a dead link that fails to close is dropped all the same
        pass


def is_postgres(database) -> bool:
    return isinstance(database.obj if hasattr(database, "obj") else database, PostgresqlDatabase)


def epoch(value: dt.datetime | None) -> int:
    """Unix seconds of a stored (naive UTC) time."""
    return int(value.replace(tzinfo=dt.timezone.utc).timestamp()) if value else 0


CONNECTIONS_BESIDE_POOL = 3  # per process, beyond its pool: group commit, the hold keeper, the alert sender


def connection_budget(workers: int, pool_size: int) -> tuple[int, int] | None:
    """(connections the gateway's processes may open, the server's max_connections) on PostgreSQL;
    None elsewhere or when the server cannot say."""
    if not is_postgres(db):
        return None
    try:
        (most,) = db.execute_sql("SHOW max_connections").fetchone()
    except Exception:  # a start-up check: never the reason a start fails
        return None
    return workers * (pool_size + CONNECTIONS_BESIDE_POOL), int(most)

