"""Schema upgrades in place: a database made by the first schema, with data, loses nothing."""
from __future__ import annotations

from service import billing, migrations
from service.auth import create_key
from service.db import (
    AIModel, Account, AlertOutbox, ApiKey, ConsoleSession, IdempotentCall, LedgerEntry, ModelPrice, SchemaVersion, StoredResponse,
    TABLES, db, open_database,
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
    for table, column, _ in migrations.V11_COLUMNS[:3]:  # alert_outbox's goes with its table
        db.execute_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.drop_tables([ModelPrice, IdempotentCall, AlertOutbox, StoredResponse, ConsoleSession])

    app = make_app()  # starting the app upgrades in place
    assert migrations.current_version() == migrations.STEPS[-1][0] == 11
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
