"""Schema upgrades in place: a database made by the first schema, with data, loses nothing."""
from __future__ import annotations

from service.money import billing
from service.store import migrations
from service.web.auth import create_key
from service.store.db import (
    AIModel, Account, AlertOutbox, ApiKey, ConsoleSession, IdempotentCall, LedgerEntry, ModelPrice, SchemaVersion, StoredResponse,
    TABLES, AuditEntry, KeySpend, RequestBody, RequestLog, db, is_postgres, open_database,
)

TABLE_NAMES = [t._meta.table_name for t in TABLES] + ["schema_version"]


def first_schema() -> None:
    """The database as the first released schema made it: version 1's tables, without the columns,
    index and tables later steps add."""
    db.execute_sql("DROP INDEX IF EXISTS hold_owner")  # the first schema had none of migration 4's columns
    for table, column, _ in (*migrations.V4_COLUMNS, ("api_key", "max_concurrent", ""), *migrations.V6_COLUMNS,
                             *migrations.V10_COLUMNS, *migrations.V12_COLUMNS):
        db.execute_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute_sql("ALTER TABLE ai_model DROP COLUMN kind")
    for table, column, _ in (*migrations.v11_columns(), *migrations.V13_COLUMNS[:3]):  # alert_outbox's goes with its table
        db.execute_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.drop_tables([ModelPrice, IdempotentCall, AlertOutbox, StoredResponse, ConsoleSession])
    undo_v14()


def undo_v14() -> None:
    """Take migration 14's columns, index and tables away (a database made before it)."""
    db.execute_sql("DROP INDEX IF EXISTS ledgerentry_key_id")
    for table, column, _ in migrations.V14_COLUMNS:
        db.execute_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.drop_tables([KeySpend, RequestLog, RequestBody, AuditEntry])


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
    first_schema()

    app = make_app()  # starting the app upgrades in place
    assert migrations.current_version() == migrations.STEPS[-1][0]
    numbers = [v for v, _ in migrations.STEPS]  # 15-17 are merged from other branches
    assert numbers == sorted(set(numbers)) and set(range(1, 15)) <= set(numbers)
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
    assert {"cached_tokens", "prices", "deployment"} <= {c.name for c in db.get_columns("ledgerentry")}
    assert {"deployments", "routing"} <= {c.name for c in db.get_columns("ai_model")}
    assert db.table_exists("model_price") and db.table_exists("alert_outbox")
    assert {"parent_id"} <= {c.name for c in db.get_columns("api_key")}
    assert {"operator"} <= {c.name for c in db.get_columns("ledgerentry")}
    assert {"key_id", "flash"} <= {c.name for c in db.get_columns("console_session")}
    assert {"model", "created"} <= {c.name for c in db.get_columns("hold")}
    assert {"key_id", "period_start"} <= {c.name for c in db.get_columns("hold")}
    assert db.table_exists("key_spend") and db.table_exists("request_log") and db.table_exists("audit_entry")


def _affinity(declared: str) -> str:
    """SQLite's type of a column is the affinity its declared type gives (sqlite.org/datatype3.html
    3.1): BIGINT and INTEGER are one type there, VARCHAR(255) and TEXT another."""
    declared = declared.upper()
    for needle, affinity in (("INT", "INTEGER"), ("CHAR", "TEXT"), ("CLOB", "TEXT"), ("TEXT", "TEXT")):
        if needle in declared:
            return affinity
    if "BLOB" in declared or not declared:
        return "BLOB"
    return "REAL" if any(n in declared for n in ("REAL", "FLOA", "DOUB")) else "NUMERIC"


def _sqlite_schema() -> dict:
    tables = {}
    names = [r[0] for r in db.execute_sql("SELECT name FROM sqlite_master WHERE type = 'table' "
                                          "AND name NOT LIKE 'sqlite_%'").fetchall()]
    for table in names:
        columns = {r[1]: {"type": _affinity(r[2]), "not_null": bool(r[3]), "default": r[4], "pk": r[5]}
                   for r in db.execute_sql(f'PRAGMA table_info("{table}")').fetchall()}
        indexes = {}
        for _, name, unique, *_ in db.execute_sql(f'PRAGMA index_list("{table}")').fetchall():
            cols = [r[2] for r in db.execute_sql(f'PRAGMA index_info("{name}")').fetchall()]
            indexes[name if not name.startswith("sqlite_autoindex") else f"auto:{cols}"] = (bool(unique), cols)
        foreign = sorted((r[2], r[3], r[4], r[6]) for r in db.execute_sql(f'PRAGMA foreign_key_list("{table}")'))
        sql = db.execute_sql("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        checks = sorted(part.strip() for part in sql.split(",") if "CHECK" in part.upper())
        tables[table] = {"columns": columns, "indexes": indexes, "foreign_keys": foreign, "checks": checks}
    triggers = {r[0]: " ".join(r[1].split()) for r in db.execute_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()}
    return {"tables": tables, "triggers": triggers}


def _postgres_schema() -> dict:
    tables = {}
    for (table,) in db.execute_sql("SELECT table_name FROM information_schema.tables "
                                   "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"):
        columns = {r[0]: {"type": r[1], "length": r[2], "not_null": r[3] == "NO", "default": r[4]}
                   for r in db.execute_sql(
                       "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default "
                       "FROM information_schema.columns WHERE table_schema = current_schema() "
                       "AND table_name = %s", (table,))}
        constraints = {r[0]: r[1] for r in db.execute_sql(
            "SELECT conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid WHERE t.relname = %s "
            "AND t.relnamespace = current_schema()::regnamespace", (table,))}
        indexes = {r[0]: r[1] for r in db.execute_sql(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = %s", (table,))}
        tables[table] = {"columns": columns, "constraints": constraints, "indexes": indexes}
    functions = sorted(r[0] for r in db.execute_sql(
        "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace "
        "AND p.proname LIKE %s", ("tollgate%",)))
    return {"tables": tables, "functions": functions}


def schema() -> dict:
    """Every table's columns (type, nullability, default), indexes and constraints, and the
    database's triggers or functions: what a fresh and an upgraded database must share."""
    return _postgres_schema() if is_postgres(db) else _sqlite_schema()


def _differences(a: dict, b: dict, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b), key=str)
                for d in (_differences(a.get(key), b.get(key), f"{where}.{key}") if key in a and key in b
                          else [f"{where}.{key}: only in {'fresh' if key in a else 'upgraded'}"])]
    return [] if a == b else [f"{where}: fresh {a!r}, upgraded {b!r}"]


def test_a_fresh_and_an_upgraded_database_have_one_schema(make_app, db_url):
    db.initialize(open_database(db_url))
    db.drop_tables(TABLES + [SchemaVersion], safe=True, **({"cascade": True} if is_postgres(db) else {}))
    migrations.upgrade()
    fresh = schema()
    db.drop_tables(TABLES + [SchemaVersion], safe=True, **({"cascade": True} if is_postgres(db) else {}))
    migrations.upgrade(target=1)
    first_schema()
    migrations.upgrade()
    upgraded = schema()
    assert set(fresh["tables"]) == set(TABLE_NAMES)
    differences = _differences(fresh, upgraded)
    assert not differences, "\n".join(differences)


def test_a_database_created_fresh_before_migration_9_gets_the_default(make_app, db_url):
    """Migration 9 gives a database created fresh before it `ledgerentry.absorbed DEFAULT 0`,
    and leaves everything else as it was (SQLite: the table rebuilt with its indexes)."""
    db.initialize(open_database(db_url))
    db.drop_tables(TABLES + [SchemaVersion], safe=True, **({"cascade": True} if is_postgres(db) else {}))
    migrations.upgrade()
    fresh = schema()
    if is_postgres(db):
        db.execute_sql("ALTER TABLE ledgerentry ALTER COLUMN absorbed DROP DEFAULT")
    else:
        from playhouse.migrate import SqliteMigrator, migrate

        migrate(SqliteMigrator(db.obj).drop_column_default("ledgerentry", "absorbed"))
    SchemaVersion.delete().where(SchemaVersion.version >= 9).execute()  # 9 and the (idempotent) steps after it
    assert schema() != fresh  # as a fresh database was before
    assert migrations.upgrade() == [v for v, _ in migrations.STEPS if v >= 9]
    differences = _differences(fresh, schema())
    assert not differences, "\n".join(differences)


def test_migration_11_columns_match_a_fresh_database(app, db_url):
    """The columns migration 11 adds to an existing database are those a fresh one is made with."""
    def described():
        return {(t, c.name): (c.data_type.lower(), c.null, str(c.default).lower().strip("'"))
                for t in ("ai_model", "ledgerentry") for c in db.get_columns(t)
                if (t, c.name) in {(t2, c2) for t2, c2, _ in migrations.v11_columns()}}

    fresh = described()
    assert len(fresh) == 5
    for table, column, _ in migrations.v11_columns():
        db.execute_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    migrations._v11_answer_cache_parallel()
    assert described() == fresh


def test_console_sessions_from_before_they_knew_their_key_end_with_migration_12(make_app, db_url):
    """A session opened before migration 10 does not say which key opened it (a key's session
    would act as its whole account): migration 12 ends every session."""
    import datetime as dt

    make_app()
    acct = Account.create(name="kay")
    ConsoleSession.create(token_hash="h", account=acct, csrf="c", expires_at=dt.datetime(2999, 1, 1))
    SchemaVersion.delete().where(SchemaVersion.version >= 12).execute()  # 12 and the (idempotent) steps after it
    assert migrations.upgrade() == [v for v, _ in migrations.STEPS if v >= 12]
    assert ConsoleSession.select().count() == 0
