"""Versioned schema changes, applied in order; `flask --app wsgi db upgrade` runs them.

Version 1 is the first released schema. Add a function for each later change
(with playhouse.migrate or portable SQL) and append it to STEPS; never edit a
released step. When a later step adds a column, step 1 must keep creating the
version-1 tables (freeze them), not the current models.
"""
from __future__ import annotations

from peewee import IntegrityError

from service.db import TABLES, SchemaVersion
from service.extensions import db


def _v1_initial() -> None:
    db.create_tables(TABLES)


def _v2_ledger_page_index() -> None:
    """Usage pages read one account's ledger newest first: index (account_id, id)."""
    db.execute_sql("CREATE INDEX IF NOT EXISTS ledgerentry_account_id_id ON ledgerentry (account_id, id)")


STEPS = [(1, _v1_initial), (2, _v2_ledger_page_index)]


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
