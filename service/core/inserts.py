"""A new job and its units of work written in one statement, without the ORM's unit of work.

A submission is the API's dearest request, and the ORM's flush of a job and its entries was 41 % of its CPU
time (docs/benchmarks.md, issue 14), plus a round trip per table. Here the rows' values are read off the
new objects (their columns' Python-side defaults filled in, on the objects too, so the answer built from
them shows what was stored) and sent without the ORM.

On PostgreSQL that is one statement whose text never changes: the job's INSERT is a data-modifying CTE of
the rows' INSERT (foreign keys are checked at the statement's end, when the job is there), and both read
their values from two JSON parameters (``json_populate_record``/``json_populate_recordset`` into the
tables' own row types). A multi-row ``VALUES`` built per submission had to be compiled by SQLAlchemy and
split by psycopg on every request (a new statement each time, too long for psycopg's cache): 55 % of a
submission's CPU (docs/benchmarks.md, issue 19). A constant text is compiled once, and psycopg prepares it
on the server after a few uses. ``json`` (not ``jsonb``) keeps a JSON column's text as sent, key order
included; a JSON ``null`` becomes SQL NULL, which SQLAlchemy reads back as None like before. Elsewhere
(SQLite) two statements: the job's INSERT, and the rows' as one executemany.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from functools import cache
from typing import Any

from sqlalchemy import JSON, TextClause, bindparam, insert, inspect, text
from sqlalchemy.orm import Session

from service.core.models import Job


def column_values(obj: Any) -> dict[str, Any]:
    """Every column of a new ORM object by column name; a missing value gets the column's default (set on
    the object as well)."""
    values: dict[str, Any] = {}
    for prop in _column_attrs(type(obj)):
        column = prop.columns[0]
        value = getattr(obj, prop.key)
        default = column.default
        if value is None and default is not None:
            if default.is_callable:
                value = default.arg(None)  # type: ignore[union-attr]
            elif default.is_scalar:
                value = default.arg  # type: ignore[union-attr]
            setattr(obj, prop.key, value)
        values[column.key] = value
    return values


@cache
def _column_attrs(model: type[Any]) -> tuple[Any, ...]:
    return tuple(inspect(model).column_attrs)


def _json_value(value: Any) -> Any:
    """A column value as JSON for ``json_populate_record``: timestamps as ISO text in UTC (what the
    ``timestamptz`` columns parse), everything else as it is (JSON columns nest)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(timezone.utc).isoformat()
    return value


def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _json_value(v) for k, v in values.items()}


@cache
def _postgres_insert(rows_table: str) -> TextClause:
    """The one statement that inserts a job and its rows of ``rows_table`` (module docstring)."""
    jobs = Job.__table__.name
    return text(
        f"WITH new_job AS (INSERT INTO {jobs} SELECT * FROM json_populate_record(NULL::{jobs}, :job) RETURNING id) "
        f"INSERT INTO {rows_table} SELECT * FROM json_populate_recordset(NULL::{rows_table}, :rows)"
    ).bindparams(bindparam("job", type_=JSON), bindparam("rows", type_=JSON))


def insert_job(session: Session, job: Job, rows: Sequence[Any]) -> None:
    """INSERT the job and its rows (``rows[*].job_id`` is set to the job's id); the caller commits."""
    job_values = column_values(job)
    for row in rows:
        row.job_id = job.id
    row_values = [column_values(row) for row in rows]
    if row_values and session.get_bind().dialect.name == "postgresql":
        statement = _postgres_insert(type(rows[0]).__table__.name)
        # On the session's connection (same transaction): Session.execute's ORM layer is not needed for a
        # text statement, and cost as much as its execution (docs/benchmarks.md, issue 19).
        session.connection().execute(
            statement, {"job": _as_json(job_values), "rows": [_as_json(v) for v in row_values]}
        )
        return
    session.execute(insert(Job.__table__).values(**job_values))
    if row_values:
        session.execute(insert(type(rows[0]).__table__), row_values)
