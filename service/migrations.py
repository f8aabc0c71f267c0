"""Versioned schema changes, applied in order; `flask --app wsgi db upgrade` runs them.

Version 1 is the first released schema. Add a function for each later change
(with playhouse.migrate) and append it to STEPS; never edit a released step.
"""
from __future__ import annotations

from service.db import TABLES, SchemaVersion
from service.extensions import db


def _v1_initial() -> None:
    db.create_tables(TABLES)


STEPS = [(1, _v1_initial)]


def current_version() -> int:
    """The highest applied version, 0 for an empty database."""
    if not db.table_exists(SchemaVersion._meta.table_name):
        return 0
    row = SchemaVersion.select().order_by(SchemaVersion.version.desc()).first()
    return row.version if row else 0


def upgrade() -> list[int]:
    """Apply every pending step, each in its own transaction; returns what was applied."""
    db.create_tables([SchemaVersion])
    done = current_version()
    applied = []
    for version, step in STEPS:
        if version <= done:
            continue
        with db.atomic():
            step()
            SchemaVersion.create(version=version)
        applied.append(version)
    return applied
