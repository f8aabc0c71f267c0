"""Schema upgrades in place: a database made by the first schema, with data, loses nothing."""
from __future__ import annotations

from service import billing, migrations
from service.auth import create_key
from service.db import (
    AIModel, Account, AlertOutbox, ApiKey, ConsoleSession, IdempotentCall, LedgerEntry, ModelPrice, SchemaVersion, StoredResponse,
    TABLES, AuditEntry, KeySpend, RequestBody, RequestLog, db, is_postgres, open_database,
)


def test_upgrade_from_first_schema_keeps_everything(make_app, db_url):
    db.initialize(open_database(db_url))
    db.drop_tables(TABLES + [SchemaVersion], safe=True)
    assert migrations.upgrade(target=1) == [1] and migrations.current_version() == 1
    AIModel.create(id=4, name="deepseek-chat", provider="deepseek", api="openai",
                   upstream_model="deepseek-chat", cost_per_1k_tokens=14_000)
    acct = Account.create(name="old-timer")
    billing.credit(acct.id, 5_000_000, "from v1")
    # a settled call as the first schema stored it (the billing code of today needs migration 3)
    LedgerEntry.create(account=acct, request_id="r1", model="deepseek-chat", prompt_tokens=10,
                       completion_tokens=20, delta=-420, kind="charge")
    Account.update(balance=Account.balance - 420).where(Account.id == acct.id).execute()
    _, key = create_key(acct, "legacy")
    db.execute_sql("DROP INDEX IF EXISTS hold_owner")  # the first schema had none of migration 4's columns
    for table, column, _ in (*migrations.V4_COLUMNS, ("api_key", "max_concurrent", ""), *migrations.V6_COLUMNS):
        db.execute_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute_sql("ALTER TABLE ai_model DROP COLUMN kind")
    db.drop_tables([ModelPrice, IdempotentCall, AlertOutbox, StoredResponse, ConsoleSession])
    undo_v12()

    app = make_app()  # starting the app upgrades in place
    assert migrations.current_version() == migrations.STEPS[-1][0] == 12
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert "nothing to do" in result.output
    assert AIModel.get_by_id(4).cost_per_1k_tokens == 14_000
    acct = Account.get(Account.name == "old-timer")
    assert acct.balance == 5_000_000 - 420 and acct.held == 0
    assert [e.kind for e in LedgerEntry.select().order_by(LedgerEntry.id)] == ["topup", "charge"]
    assert ApiKey.select().count() == 1
    client = app.test_client()
    assert client.get("/api/v1/account", headers={"Authorization": f"Bearer {key}"}).json["balance"] == 4.99958
    with app.app_context():  # the upgraded database bills (migration 3's batch functions on PostgreSQL)
        billing.hold(acct.id, "r2", 1_000, 60)
        assert billing.settle(acct.id, "r2", "deepseek-chat", 1, 1, 30) is True
    acct = Account.get(Account.name == "old-timer")
    assert acct.balance == 5_000_000 - 450 and acct.held == 0
    indexes = {i.name for i in db.get_indexes("ledgerentry")}
    assert "ledgerentry_account_id_id" in indexes
    assert {"owner"} <= {c.name for c in db.get_columns("hold")}
    assert {"cached_tokens", "prices"} <= {c.name for c in db.get_columns("ledgerentry")}
    assert db.table_exists("model_price") and db.table_exists("alert_outbox")


def undo_v12() -> None:
    """Take migration 12's columns, index and tables away (a database made before it)."""
    db.execute_sql("DROP INDEX IF EXISTS ledgerentry_key_id")
    for table, column, _ in migrations.V12_COLUMNS:
        db.execute_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.drop_tables([KeySpend, RequestLog, RequestBody, AuditEntry])


def schema() -> dict:
    """Every table's columns (type, nullability, default) and indexes, in no particular order."""
    out = {}
    for table in sorted(db.get_tables()):
        if is_postgres(db):
            cols = db.execute_sql("SELECT column_name, data_type, is_nullable, column_default FROM "
                                  "information_schema.columns WHERE table_name = %s", (table,)).fetchall()
            idx = db.execute_sql("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s",
                                 (table,)).fetchall()
        else:
            cols = [(c[1], c[2], c[3], c[4]) for c in db.execute_sql(f"PRAGMA table_info({table})").fetchall()]
            idx = [(i.name, i.unique, tuple(i.columns)) for i in db.get_indexes(table)]
        out[table] = (sorted(map(tuple, cols)), sorted(map(tuple, idx)))
    return out


def test_fresh_and_upgraded_databases_have_the_same_schema(make_app, db_url):
    """Migration 12 on a database made before it ends where a fresh database starts."""
    db.initialize(open_database(db_url))
    db.drop_tables(TABLES + [SchemaVersion], safe=True)
    migrations.upgrade()
    fresh = schema()
    db.drop_tables(TABLES + [SchemaVersion], safe=True)
    migrations.upgrade(target=8)
    undo_v12()
    assert migrations.upgrade() == [12]
    assert schema() == fresh
    assert {"key_spend", "request_log", "request_body", "audit_entry"} <= set(fresh)
