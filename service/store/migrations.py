"""Versioned schema changes, applied in order; `flask --app wsgi db upgrade` runs them.

Version 1 is the first released schema. Add a function for each later change
(with playhouse.migrate or portable SQL) and append it to STEPS; never edit a
released step. When a later step adds a column, step 1 must keep creating the
version-1 tables (freeze them), not the current models.
"""
from __future__ import annotations

from peewee import IntegrityError

from service.store.db import TABLES, SchemaVersion, db, is_postgres


def _v1_initial() -> None:
    db.create_tables(TABLES)


def _v2_ledger_page_index() -> None:
    """Usage pages read one account's ledger newest first: index (account_id, id)."""
    db.execute_sql("CREATE INDEX IF NOT EXISTS ledgerentry_account_id_id ON ledgerentry (account_id, id)")


# PostgreSQL: a batch of holds, and a batch of settles, each in one call (service/money/billing.py).
# Item by item in order, each exactly the guarded single-row change a lone call makes.
PG_FUNCTIONS = """
CREATE OR REPLACE FUNCTION tollgate_hold(rids text[], accounts bigint[], amounts bigint[],
                                         expiries timestamp[]) RETURNS boolean[]
LANGUAGE plpgsql AS $$
DECLARE
  taken boolean[] := '{}';
  ok boolean;
BEGIN
  FOR i IN 1 .. coalesce(array_length(rids, 1), 0) LOOP
    UPDATE account SET held = held + amounts[i]
      WHERE id = accounts[i] AND balance - held >= amounts[i];
    ok := FOUND;
    IF ok THEN
      INSERT INTO hold (request_id, account_id, amount, expires_at)
        VALUES (rids[i], accounts[i], amounts[i], expiries[i]);
    END IF;
    taken := taken || ok;
  END LOOP;
  RETURN taken;
END $$;

CREATE OR REPLACE FUNCTION tollgate_settle(rids text[], accounts bigint[], models text[],
    prompts bigint[], completions bigint[], charges bigint[], estimates boolean[],
    stamps timestamp[]) RETURNS boolean[]
LANGUAGE plpgsql AS $$
DECLARE
  charged boolean[] := '{}';
  released bigint;
  fresh boolean;
BEGIN
  FOR i IN 1 .. coalesce(array_length(rids, 1), 0) LOOP
    DELETE FROM hold WHERE request_id = rids[i] RETURNING amount INTO released;
    INSERT INTO ledgerentry (account_id, request_id, model, prompt_tokens, completion_tokens, delta,
                             kind, estimated, created)
      VALUES (accounts[i], rids[i], models[i], prompts[i], completions[i], -charges[i], 'charge',
              estimates[i], stamps[i])
      ON CONFLICT (request_id) DO NOTHING;
    fresh := FOUND;
    UPDATE account SET balance = balance - CASE WHEN fresh THEN charges[i] ELSE 0 END,
                       held = held - coalesce(released, 0)
      WHERE id = accounts[i];
    charged := charged || fresh;
  END LOOP;
  RETURN charged;
END $$;
"""


def _v3_batch_functions() -> None:
    """PostgreSQL settles and holds in batches (group commit); nothing to do on SQLite."""
    if is_postgres(db):
        db.execute_sql(PG_FUNCTIONS)


# Migration 4: holds carry the process that owns them (it extends their expiry while the call
# runs), charges are capped at the hold with the rest written as an `overrun` row, and the
# database itself refuses a negative balance, a negative held amount or more held than owned.
PG_FUNCTIONS_V4 = """
DROP FUNCTION IF EXISTS tollgate_hold(text[], bigint[], bigint[], timestamp[]);
DROP FUNCTION IF EXISTS tollgate_settle(text[], bigint[], text[], bigint[], bigint[], bigint[],
                                        boolean[], timestamp[]);
CREATE OR REPLACE FUNCTION tollgate_hold(rids text[], accounts bigint[], amounts bigint[],
                                         expiries timestamp[], owners text[]) RETURNS boolean[]
LANGUAGE plpgsql AS $$
DECLARE
  taken boolean[] := '{}';
  ok boolean;
BEGIN
  FOR i IN 1 .. coalesce(array_length(rids, 1), 0) LOOP
    UPDATE account SET held = held + amounts[i]
      WHERE id = accounts[i] AND balance - held >= amounts[i];
    ok := FOUND;
    IF ok THEN
      INSERT INTO hold (request_id, account_id, amount, expires_at, owner)
        VALUES (rids[i], accounts[i], amounts[i], expiries[i], owners[i]);
    END IF;
    taken := taken || ok;
  END LOOP;
  RETURN taken;
END $$;

CREATE OR REPLACE FUNCTION tollgate_settle(rids text[], accounts bigint[], models text[],
    prompts bigint[], completions bigint[], charges bigint[], estimates boolean[],
    stamps timestamp[], overruns bigint[]) RETURNS boolean[]
LANGUAGE plpgsql AS $$
DECLARE
  charged boolean[] := '{}';
  released bigint;
  fresh boolean;
BEGIN
  FOR i IN 1 .. coalesce(array_length(rids, 1), 0) LOOP
    DELETE FROM hold WHERE request_id = rids[i] RETURNING amount INTO released;
    INSERT INTO ledgerentry (account_id, request_id, model, prompt_tokens, completion_tokens, delta,
                             kind, estimated, absorbed, created)
      VALUES (accounts[i], rids[i], models[i], prompts[i], completions[i], -charges[i], 'charge',
              estimates[i], 0, stamps[i])
      ON CONFLICT (request_id) DO NOTHING;
    fresh := FOUND;
    IF fresh AND overruns[i] > 0 THEN
      INSERT INTO ledgerentry (account_id, request_id, model, prompt_tokens, completion_tokens, delta,
                               kind, estimated, absorbed, created)
        VALUES (accounts[i], rids[i] || ':overrun', models[i], 0, 0, 0, 'overrun', estimates[i],
                overruns[i], stamps[i])
        ON CONFLICT (request_id) DO NOTHING;
    END IF;
    UPDATE account SET balance = balance - CASE WHEN fresh THEN charges[i] ELSE 0 END,
                       held = held - coalesce(released, 0)
      WHERE id = accounts[i];
    charged := charged || fresh;
  END LOOP;
  RETURN charged;
END $$;

DO $$ BEGIN
  ALTER TABLE account ADD CONSTRAINT account_money_ok
    CHECK (balance >= 0 AND held >= 0 AND held <= balance) NOT VALID;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
"""

SQLITE_CHECKS = [
    f"""CREATE TRIGGER IF NOT EXISTS account_money_ok_{when} BEFORE {when} ON account
        WHEN NEW.balance < 0 OR NEW.held < 0 OR NEW.held > NEW.balance
        BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: account_money_ok'); END"""
    for when in ("INSERT", "UPDATE")]

V4_COLUMNS = (("hold", "owner", "VARCHAR(255)"), ("ledgerentry", "absorbed", "BIGINT NOT NULL DEFAULT 0"),
              ("ai_model", "image_tokens", "INTEGER"))


def _v4_owned_holds_overruns_checks() -> None:
    """Hold owners, overrun rows, per-image allowances, and the database's own money checks."""
    for table, column, kind in V4_COLUMNS:
        if column not in {c.name for c in db.get_columns(table)}:
            db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    db.execute_sql("CREATE INDEX IF NOT EXISTS hold_owner ON hold (owner)")
    if is_postgres(db):
        db.execute_sql(PG_FUNCTIONS_V4)
    else:
        for sql in SQLITE_CHECKS:
            db.execute_sql(sql)


def _v5_key_concurrency() -> None:
    """API keys may cap their own calls in flight."""
    if "max_concurrent" not in {c.name for c in db.get_columns("api_key")}:
        db.execute_sql("ALTER TABLE api_key ADD COLUMN max_concurrent INTEGER")


# Migration 6: token classes. Settles write the tokens of each class and the unit prices applied,
# and a charge that takes a balance below its low-balance threshold writes an alert to the outbox
# in the same transaction (thresholds[i] < 0: alerts are off).
PG_FUNCTIONS_V6 = """
DROP FUNCTION IF EXISTS tollgate_settle(text[], bigint[], text[], bigint[], bigint[], bigint[],
                                        boolean[], timestamp[], bigint[]);
CREATE OR REPLACE FUNCTION tollgate_settle(rids text[], accounts bigint[], models text[],
    prompts bigint[], completions bigint[], charges bigint[], estimates boolean[],
    stamps timestamp[], overruns bigint[], cacheds bigint[], writes5m bigint[], writes1h bigint[],
    reasonings bigint[], prices text[], thresholds bigint[]) RETURNS boolean[]
LANGUAGE plpgsql AS $$
DECLARE
  charged boolean[] := '{}';
  released bigint;
  fresh boolean;
  bal bigint;
  own bigint;
  line bigint;
BEGIN
  FOR i IN 1 .. coalesce(array_length(rids, 1), 0) LOOP
    DELETE FROM hold WHERE request_id = rids[i] RETURNING amount INTO released;
    INSERT INTO ledgerentry (account_id, request_id, model, prompt_tokens, completion_tokens, delta,
                             kind, estimated, absorbed, cached_tokens, cache_write_5m_tokens,
                             cache_write_1h_tokens, reasoning_tokens, prices, created)
      VALUES (accounts[i], rids[i], models[i], prompts[i], completions[i], -charges[i], 'charge',
              estimates[i], 0, cacheds[i], writes5m[i], writes1h[i], reasonings[i], prices[i],
              stamps[i])
      ON CONFLICT (request_id) DO NOTHING;
    fresh := FOUND;
    IF fresh AND overruns[i] > 0 THEN
      INSERT INTO ledgerentry (account_id, request_id, model, prompt_tokens, completion_tokens, delta,
                               kind, estimated, absorbed, created)
        VALUES (accounts[i], rids[i] || ':overrun', models[i], 0, 0, 0, 'overrun', estimates[i],
                overruns[i], stamps[i])
        ON CONFLICT (request_id) DO NOTHING;
    END IF;
    UPDATE account SET balance = balance - CASE WHEN fresh THEN charges[i] ELSE 0 END,
                       held = held - coalesce(released, 0)
      WHERE id = accounts[i]
      RETURNING balance, low_balance_threshold INTO bal, own;
    line := coalesce(own, thresholds[i]);
    IF fresh AND thresholds[i] >= 0 AND charges[i] > 0 AND line > 0 AND bal < line
       AND bal + charges[i] >= line THEN
      INSERT INTO alert_outbox (account_id, kind, request_id, balance, threshold, created,
                                next_attempt, attempts)
        VALUES (accounts[i], 'low_balance', rids[i], bal, line, stamps[i], stamps[i], 0);
    END IF;
    charged := charged || fresh;
  END LOOP;
  RETURN charged;
END $$;
"""

V6_COLUMNS = tuple((("ai_model", f"cost_per_1k_{c}_tokens", "BIGINT") for c in
                    ("cached_input", "cache_write_5m", "cache_write_1h", "reasoning"))) + tuple(
    ("ledgerentry", f"{c}_tokens", "INTEGER NOT NULL DEFAULT 0") for c in
    ("cached", "cache_write_5m", "cache_write_1h", "reasoning")) + (
    ("ledgerentry", "prices", "TEXT"), ("account", "low_balance_threshold", "BIGINT"))


def _v6_token_classes_idempotency_alerts() -> None:
    """Prices and ledger counts per token class, price history, idempotent calls, the alert outbox."""
    from service.store.db import AlertOutbox, IdempotentCall, ModelPrice

    for table, column, kind in V6_COLUMNS:
        if column not in {c.name for c in db.get_columns(table)}:
            db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    db.create_tables([ModelPrice, IdempotentCall, AlertOutbox], safe=True)
    if is_postgres(db):
        db.execute_sql(PG_FUNCTIONS_V6)


def _v7_model_kind_stored_responses() -> None:
    """Catalogue rows are chat or embedding models; Responses API answers are stored."""
    from service.store.db import StoredResponse

    if "kind" not in {c.name for c in db.get_columns("ai_model")}:
        db.execute_sql("ALTER TABLE ai_model ADD COLUMN kind VARCHAR(255) NOT NULL DEFAULT 'chat'")
    db.create_tables([StoredResponse], safe=True)


def _v8_console_sessions() -> None:
    """Web console sessions."""
    from service.store.db import ConsoleSession

    db.create_tables([ConsoleSession], safe=True)


def _column_default(table: str, column: str):
    """The schema's default of a column (None: none)."""
    if is_postgres(db):
        row = db.execute_sql("SELECT column_default FROM information_schema.columns WHERE table_schema = "
                             "current_schema() AND table_name = %s AND column_name = %s", (table, column)).fetchone()
        return row[0] if row else None
    return next((r[4] for r in db.execute_sql(f'PRAGMA table_info("{table}")').fetchall() if r[1] == column), None)


def _v9_one_schema() -> None:
    """A database created fresh (before this step) had `ledgerentry.absorbed` NOT NULL without the
    DEFAULT 0 that migration 4 gives an upgraded one: the same schema either way (SPEC §18).
    SQLite cannot alter a default: its table is rebuilt (playhouse.migrate), indexes included."""
    if _column_default("ledgerentry", "absorbed") is not None:
        return
    if is_postgres(db):
        db.execute_sql("ALTER TABLE ledgerentry ALTER COLUMN absorbed SET DEFAULT 0")
    else:
        from playhouse.migrate import SqliteMigrator, migrate

        migrate(SqliteMigrator(db.obj).add_column_default("ledgerentry", "absorbed", 0))


V10_COLUMNS = (("console_session", "key_id", "INTEGER"), ("console_session", "flash", "TEXT"),
              ("api_key", "parent_id", "INTEGER"),
              ("ledgerentry", "operator", "VARCHAR(255)"))


def _v10_sessions_keep_their_credential() -> None:
    """A console session remembers the API key it was opened with (its limits apply, its
    revocation ends the session), a key minted there its parent key, and top-ups and
    corrections the operator who made them."""
    for table, column, kind in V10_COLUMNS:
        if column not in {c.name for c in db.get_columns(table)}:
            db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def v11_columns() -> tuple:
    """Migration 11's columns as (table, column, type), in this database's dialect."""
    flag, big = ("BOOLEAN", "BIGINT") if is_postgres(db) else ("INTEGER", "INTEGER")  # as peewee makes them
    return (("ai_model", "cache_ttl", "INTEGER"),
            ("ai_model", "cache_scope", "VARCHAR(255) NOT NULL DEFAULT 'account'"),
            ("ai_model", "cost_per_1k_cache_hit_tokens", big),
            ("ledgerentry", "cache_hit", f"{flag} NOT NULL DEFAULT FALSE"),
            ("ledgerentry", "parallel_group", "VARCHAR(255)"))


def _v11_answer_cache_parallel() -> None:
    """Catalogue rows may cache answers (SPEC §16); ledger rows say a cache hit and the parallel
    request they belong to."""
    for table, column, kind in v11_columns():
        if column not in {c.name for c in db.get_columns(table)}:
            db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


V12_COLUMNS = (("hold", "model", "VARCHAR(255)"), ("hold", "created", "TIMESTAMP"))

# Migration 12: a hold records its call's model and when it was taken (operators see both); the
# batch hold function takes them.
PG_FUNCTIONS_V12 = """
DROP FUNCTION IF EXISTS tollgate_hold(text[], bigint[], bigint[], timestamp[], text[]);
CREATE OR REPLACE FUNCTION tollgate_hold(rids text[], accounts bigint[], amounts bigint[],
                                         expiries timestamp[], owners text[], models text[],
                                         stamps timestamp[]) RETURNS boolean[]
LANGUAGE plpgsql AS $$
DECLARE
  taken boolean[] := '{}';
  ok boolean;
BEGIN
  FOR i IN 1 .. coalesce(array_length(rids, 1), 0) LOOP
    UPDATE account SET held = held + amounts[i]
      WHERE id = accounts[i] AND balance - held >= amounts[i];
    ok := FOUND;
    IF ok THEN
      INSERT INTO hold (request_id, account_id, amount, expires_at, owner, model, created)
        VALUES (rids[i], accounts[i], amounts[i], expiries[i], owners[i], models[i], stamps[i]);
    END IF;
    taken := taken || ok;
  END LOOP;
  RETURN taken;
END $$;
"""


def _v12_holds_model_and_age() -> None:
    """Holds record their call's model and when they were taken (the console's operator pages).
    Console sessions opened before migration 10 do not say which key opened them, so a key's
    session would act as its whole account until it expired: every session ends here (users sign
    in again)."""
    for table, column, kind in V12_COLUMNS:
        if column not in {c.name for c in db.get_columns(table)}:
            db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    if is_postgres(db):
        db.execute_sql(PG_FUNCTIONS_V12)
    db.execute_sql("DELETE FROM console_session")


# Migration 13: deployments (SPEC §15). Catalogue rows list their deployments and a routing
# strategy, the ledger names the deployment that answered, and the alert outbox carries alerts
# that are no account's (deployment_disabled): its account may be null, its detail says what.
PG_FUNCTIONS_V13 = PG_FUNCTIONS_V6.replace(
    "DROP FUNCTION IF EXISTS tollgate_settle(text[], bigint[], text[], bigint[], bigint[], bigint[],\n"
    "                                        boolean[], timestamp[], bigint[]);",
    "DROP FUNCTION IF EXISTS tollgate_settle(text[], bigint[], text[], bigint[], bigint[], bigint[],\n"
    "    boolean[], timestamp[], bigint[], bigint[], bigint[], bigint[], bigint[], text[], bigint[]);"
).replace(
    "reasonings bigint[], prices text[], thresholds bigint[])",
    "reasonings bigint[], prices text[], thresholds bigint[], deployments text[])"
).replace(
    "cache_write_1h_tokens, reasoning_tokens, prices, created)",
    "cache_write_1h_tokens, reasoning_tokens, prices, deployment, created)"
).replace(
    "estimates[i], 0, cacheds[i], writes5m[i], writes1h[i], reasonings[i], prices[i],\n              stamps[i])",
    "estimates[i], 0, cacheds[i], writes5m[i], writes1h[i], reasonings[i], prices[i],\n              deployments[i], stamps[i])")

V13_COLUMNS = (("ai_model", "deployments", "TEXT"), ("ai_model", "routing", "VARCHAR(255)"),
               ("ledgerentry", "deployment", "VARCHAR(255)"), ("alert_outbox", "detail", "TEXT"))


def _v13_deployments() -> None:
    """Deployments and routing on catalogue rows, the deployment on ledger rows, alerts that
    belong to no account."""
    from playhouse.migrate import PostgresqlMigrator, SqliteMigrator, migrate

    for table, column, kind in V13_COLUMNS:
        if column not in {c.name for c in db.get_columns(table)}:
            db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    account = next(c for c in db.get_columns("alert_outbox") if c.name == "account_id")
    if not account.null:
        migrator = PostgresqlMigrator(db) if is_postgres(db) else SqliteMigrator(db)
        migrate(migrator.drop_not_null("alert_outbox", "account_id"))
    if is_postgres(db):
        db.execute_sql(PG_FUNCTIONS_V13)


# Migration 14: spend per key and key budgets (SPEC §17). A hold may also count against its API
# key's budget for the period: in the same statement as the balance, the key's period row takes
# the amount only while spent + held stays within the budget. Results: 0 taken, 1 the balance
# cannot cover it, 2 the key's budget cannot. A settle moves the key's held amount to spent and
# writes the key on the ledger row.
PG_FUNCTIONS_V14 = """
DROP FUNCTION IF EXISTS tollgate_hold(text[], bigint[], bigint[], timestamp[], text[]);
DROP FUNCTION IF EXISTS tollgate_hold(text[], bigint[], bigint[], timestamp[], text[], text[], timestamp[]);
CREATE OR REPLACE FUNCTION tollgate_hold(rids text[], accounts bigint[], amounts bigint[],
    expiries timestamp[], owners text[], models text[], stamps timestamp[], keys bigint[],
    periods timestamp[], budgets bigint[])
    RETURNS int[]
LANGUAGE plpgsql AS $$
DECLARE
  taken int[] := '{}';
  code int;
BEGIN
  FOR i IN 1 .. coalesce(array_length(rids, 1), 0) LOOP
    code := 0;
    UPDATE account SET held = held + amounts[i]
      WHERE id = accounts[i] AND balance - held >= amounts[i];
    IF NOT FOUND THEN
      code := 1;
    ELSIF budgets[i] IS NOT NULL THEN
      INSERT INTO key_spend (key_id, period_start, spent, held) VALUES (keys[i], periods[i], 0, 0)
        ON CONFLICT (key_id, period_start) DO NOTHING;
      UPDATE key_spend SET held = held + amounts[i]
        WHERE key_id = keys[i] AND period_start = periods[i] AND spent + held + amounts[i] <= budgets[i];
      IF NOT FOUND THEN
        code := 2;
        UPDATE account SET held = held - amounts[i] WHERE id = accounts[i];
      END IF;
    END IF;
    IF code = 0 THEN
      INSERT INTO hold (request_id, account_id, amount, expires_at, owner, model, created, key_id,
                        period_start)
        VALUES (rids[i], accounts[i], amounts[i], expiries[i], owners[i], models[i], stamps[i], keys[i],
                CASE WHEN budgets[i] IS NULL THEN NULL ELSE periods[i] END);
    END IF;
    taken := taken || code;
  END LOOP;
  RETURN taken;
END $$;

DROP FUNCTION IF EXISTS tollgate_settle(text[], bigint[], text[], bigint[], bigint[], bigint[],
    boolean[], timestamp[], bigint[], bigint[], bigint[], bigint[], bigint[], text[], bigint[]);
DROP FUNCTION IF EXISTS tollgate_settle(text[], bigint[], text[], bigint[], bigint[], bigint[],
    boolean[], timestamp[], bigint[], bigint[], bigint[], bigint[], bigint[], text[], bigint[], text[]);
CREATE OR REPLACE FUNCTION tollgate_settle(rids text[], accounts bigint[], models text[],
    prompts bigint[], completions bigint[], charges bigint[], estimates boolean[],
    stamps timestamp[], overruns bigint[], cacheds bigint[], writes5m bigint[], writes1h bigint[],
    reasonings bigint[], prices text[], thresholds bigint[], deployments text[], keys bigint[],
    periods timestamp[])
    RETURNS boolean[]
LANGUAGE plpgsql AS $$
DECLARE
  charged boolean[] := '{}';
  released bigint;
  held_key bigint;
  held_period timestamp;
  fresh boolean;
  bal bigint;
  own bigint;
  line bigint;
BEGIN
  FOR i IN 1 .. coalesce(array_length(rids, 1), 0) LOOP
    released := NULL;
    held_period := NULL;
    DELETE FROM hold WHERE request_id = rids[i] RETURNING amount, key_id, period_start
      INTO released, held_key, held_period;
    INSERT INTO ledgerentry (account_id, request_id, model, prompt_tokens, completion_tokens, delta,
                             kind, estimated, absorbed, cached_tokens, cache_write_5m_tokens,
                             cache_write_1h_tokens, reasoning_tokens, prices, created, key_id, deployment)
      VALUES (accounts[i], rids[i], models[i], prompts[i], completions[i], -charges[i], 'charge',
              estimates[i], 0, cacheds[i], writes5m[i], writes1h[i], reasonings[i], prices[i],
              stamps[i], keys[i], deployments[i])
      ON CONFLICT (request_id) DO NOTHING;
    fresh := FOUND;
    IF fresh AND overruns[i] > 0 THEN
      INSERT INTO ledgerentry (account_id, request_id, model, prompt_tokens, completion_tokens, delta,
                               kind, estimated, absorbed, created, key_id)
        VALUES (accounts[i], rids[i] || ':overrun', models[i], 0, 0, 0, 'overrun', estimates[i],
                overruns[i], stamps[i], keys[i])
        ON CONFLICT (request_id) DO NOTHING;
    END IF;
    IF held_period IS NOT NULL THEN
      UPDATE key_spend SET held = held - released WHERE key_id = held_key AND period_start = held_period;
    END IF;
    IF fresh AND periods[i] IS NOT NULL AND charges[i] > 0 THEN
      INSERT INTO key_spend (key_id, period_start, spent, held) VALUES (keys[i], periods[i], 0, 0)
        ON CONFLICT (key_id, period_start) DO NOTHING;
      UPDATE key_spend SET spent = spent + charges[i] WHERE key_id = keys[i] AND period_start = periods[i];
    END IF;
    UPDATE account SET balance = balance - CASE WHEN fresh THEN charges[i] ELSE 0 END,
                       held = held - coalesce(released, 0)
      WHERE id = accounts[i]
      RETURNING balance, low_balance_threshold INTO bal, own;
    line := coalesce(own, thresholds[i]);
    IF fresh AND thresholds[i] >= 0 AND charges[i] > 0 AND line > 0 AND bal < line
       AND bal + charges[i] >= line THEN
      INSERT INTO alert_outbox (account_id, kind, request_id, balance, threshold, created,
                                next_attempt, attempts)
        VALUES (accounts[i], 'low_balance', rids[i], bal, line, stamps[i], stamps[i], 0);
    END IF;
    charged := charged || fresh;
  END LOOP;
  RETURN charged;
END $$;
"""

V14_COLUMNS = (("account", "log_bodies", "BOOLEAN NOT NULL DEFAULT FALSE"), ("hold", "key_id", "INTEGER"),
               ("hold", "period_start", "TIMESTAMP"), ("ledgerentry", "key_id", "INTEGER"),
               ("api_key", "budget", "BIGINT"), ("api_key", "budget_period", "VARCHAR(255)"),
               ("api_key", "log_bodies", "BOOLEAN NOT NULL DEFAULT FALSE"))


def _column_type(kind: str) -> str:
    """Peewee's own column type on SQLite for what PostgreSQL calls `kind`, so that an upgraded
    database and a fresh one (made from the models) have the same schema."""
    if is_postgres(db):
        return kind
    return kind.replace("BOOLEAN", "INTEGER").replace("BIGINT", "INTEGER").replace("TIMESTAMP", "DATETIME")


def _v14_request_log_key_budgets_audit() -> None:
    """Request logs and their bodies, spend and budgets per API key, the audit log."""
    from service.store.db import AuditEntry, KeySpend, LedgerEntry, RequestBody, RequestLog

    for table, column, kind in V14_COLUMNS:
        if column not in {c.name for c in db.get_columns(table)}:
            db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {_column_type(kind)}")
    db.execute_sql(f"CREATE INDEX IF NOT EXISTS {LedgerEntry._meta.table_name}_key_id "
                   f"ON {LedgerEntry._meta.table_name} (key_id)")
    db.create_tables([KeySpend, RequestLog, RequestBody, AuditEntry], safe=True)
    if is_postgres(db):
        db.execute_sql(PG_FUNCTIONS_V14)


# Migration 15: a charge whose price is known before the call (a cache hit, SPEC §16) in one
# guarded statement instead of a hold and a settle: the balance debited only while
# balance - held covers it, the key's period spend raised only while spent + held stays within
# its budget, and the ledger row (with its `cache_hit`) written, all in the one transaction.
# Results: 0 charged, 1 the balance cannot cover it, 2 the key's budget cannot, 3 the request
# was already charged (a retry after a lost answer; nothing changes). Nothing is held.
PG_FUNCTIONS_V15 = """
CREATE OR REPLACE FUNCTION tollgate_charge(rids text[], accounts bigint[], models text[],
    prompts bigint[], completions bigint[], amounts bigint[], stamps timestamp[], cacheds bigint[],
    writes5m bigint[], writes1h bigint[], reasonings bigint[], prices text[], thresholds bigint[],
    keys bigint[], periods timestamp[], budgets bigint[], hits boolean[])
    RETURNS int[]
LANGUAGE plpgsql AS $$
DECLARE
  done int[] := '{}';
  code int;
  bal bigint;
  own bigint;
  line bigint;
BEGIN
  FOR i IN 1 .. coalesce(array_length(rids, 1), 0) LOOP
    code := 0;
    bal := NULL;
    own := NULL;
    IF amounts[i] > 0 THEN
      UPDATE account SET balance = balance - amounts[i]
        WHERE id = accounts[i] AND balance - held >= amounts[i]
        RETURNING balance, low_balance_threshold INTO bal, own;
      IF NOT FOUND THEN
        code := 1;
      ELSIF budgets[i] IS NOT NULL THEN
        INSERT INTO key_spend (key_id, period_start, spent, held) VALUES (keys[i], periods[i], 0, 0)
          ON CONFLICT (key_id, period_start) DO NOTHING;
        UPDATE key_spend SET spent = spent + amounts[i]
          WHERE key_id = keys[i] AND period_start = periods[i] AND spent + held + amounts[i] <= budgets[i];
        IF NOT FOUND THEN
          code := 2;
          UPDATE account SET balance = balance + amounts[i] WHERE id = accounts[i];
        END IF;
      END IF;
    END IF;
    IF code = 0 THEN
      INSERT INTO ledgerentry (account_id, request_id, model, prompt_tokens, completion_tokens, delta,
                               kind, estimated, absorbed, cached_tokens, cache_write_5m_tokens,
                               cache_write_1h_tokens, reasoning_tokens, prices, created, key_id, cache_hit)
        VALUES (accounts[i], rids[i], models[i], prompts[i], completions[i], -amounts[i], 'charge',
                FALSE, 0, cacheds[i], writes5m[i], writes1h[i], reasonings[i], prices[i], stamps[i],
                keys[i], hits[i])
        ON CONFLICT (request_id) DO NOTHING;
      IF NOT FOUND THEN
        code := 3;  -- charged before: give back what this try took
        IF amounts[i] > 0 THEN
          UPDATE account SET balance = balance + amounts[i] WHERE id = accounts[i];
          IF budgets[i] IS NOT NULL THEN
            UPDATE key_spend SET spent = spent - amounts[i] WHERE key_id = keys[i] AND period_start = periods[i];
          END IF;
        END IF;
      ELSE
        line := coalesce(own, thresholds[i]);
        IF thresholds[i] >= 0 AND amounts[i] > 0 AND line > 0 AND bal < line AND bal + amounts[i] >= line THEN
          INSERT INTO alert_outbox (account_id, kind, request_id, balance, threshold, created,
                                    next_attempt, attempts)
            VALUES (accounts[i], 'low_balance', rids[i], bal, line, stamps[i], stamps[i], 0);
        END IF;
      END IF;
    END IF;
    done := done || code;
  END LOOP;
  RETURN done;
END $$;
"""


def _v15_one_statement_charges() -> None:
    """A cache hit's charge in one guarded statement (PostgreSQL's batch function; SQLite needs none)."""
    if is_postgres(db):
        db.execute_sql(PG_FUNCTIONS_V15)


STEPS = [(1, _v1_initial), (2, _v2_ledger_page_index), (3, _v3_batch_functions),
         (4, _v4_owned_holds_overruns_checks), (5, _v5_key_concurrency),
         (6, _v6_token_classes_idempotency_alerts), (7, _v7_model_kind_stored_responses),
         (8, _v8_console_sessions), (9, _v9_one_schema),
         (10, _v10_sessions_keep_their_credential), (11, _v11_answer_cache_parallel),
         (12, _v12_holds_model_and_age), (13, _v13_deployments),
         (14, _v14_request_log_key_budgets_audit),
         (15, _v15_one_statement_charges)]


def current_version() -> int:
    """The highest applied version, 0 for an empty database."""
    if not db.table_exists(SchemaVersion._meta.table_name):
        return 0
    row = SchemaVersion.select().order_by(SchemaVersion.version.desc()).first()
    return row.version if row else 0


def upgrade(target: int | None = None) -> list[int]:
    """Apply pending steps up to `target` (default: all), each in its own transaction;
    returns what was applied. A step another process applied first is skipped."""
    db.create_tables([SchemaVersion])
    applied = []
    for version, step in STEPS:
        if version <= current_version() or (target is not None and version > target):
            continue
        try:
            with db.atomic():
                SchemaVersion.create(version=version)  # the primary key serialises racing processes
                step()
        except IntegrityError:
            continue
        applied.append(version)
    return applied
