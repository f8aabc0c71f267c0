"""A SELECT run on every call, made once: peewee builds a query's SQL anew on each run and sets up
its row reader for each result (about 0.5 and 0.2 ms of CPU for an API key with its account,
measured in process), more than the database takes to answer it."""
from __future__ import annotations

from service.store.db import db

_MARK = "\x00tollgate-parameter\x00"  # stands for the value while the SQL is built


class Prepared:
    """`build(value)` makes the query, `value` one of its parameters; it selects whole models:
    the first model's fields, then those of each model joined to it by a foreign key of the
    first (`ApiKey.select(ApiKey, Account).join(Account)`). first(value) runs the SQL made once
    per database and reads the row into those models (unchanged, as peewee reads them)."""

    def __init__(self, build):
        self._build = build
        self._made = None  # (database, sql, params, the value's place among them, the reading plan)

    def first(self, value):
        made = self._made
        if made is None or made[0] is not db.obj:
            made = self._made = self._make()
        _, sql, params, place, plan = made
        params = list(params)
        params[place] = value
        row = db.execute_sql(sql, params).fetchone()
        return None if row is None else _read(row, plan)

    def _make(self) -> tuple:
        query = self._build(_MARK)
        sql, params = query.sql()
        plan, start = [], 0
        for model in dict.fromkeys(f.model for f in query._returning):
            fields = [f for f in query._returning if f.model is model]
            link = None if not plan else next(f for f in plan[0][0]._meta.refs if f.rel_model is model)
            plan.append((model, [(f.name, f.python_value) for f in fields], start, link))
            start += len(fields)
        if start != len(query._returning):
            raise ValueError("a prepared query selects whole models, each one's fields together")
        return db.obj, sql, params, params.index(_MARK), plan


def _read(row: tuple, plan: list):
    first = None
    for model, fields, start, link in plan:
        obj = model(__no_default__=1)
        obj.__data__ = {name: None if v is None else convert(v)
                        for (name, convert), v in zip(fields, row[start:start + len(fields)])}
        if first is None:
            first = obj
        else:
            first.__rel__[link.name] = obj
    return first
