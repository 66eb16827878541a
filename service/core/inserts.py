"""A new job and its units of work written in one statement, without the ORM's unit of work.

A submission is the API's dearest request, and the ORM's flush of a job and its entries was 41 % of its CPU
time (docs/benchmarks.md, issue 14), plus a round trip per table. Here the rows' values are read off the
new objects (their columns' Python-side defaults filled in, on the objects too, so the answer built from
them shows what was stored) and sent as core INSERTs: on PostgreSQL one statement, the job's INSERT a
data-modifying CTE of the rows' INSERT (its foreign keys are checked at the statement's end, when the job
is there); elsewhere (SQLite) two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, inspect
from sqlalchemy.orm import Session

from service.core.models import Job


def column_values(obj: Any) -> dict[str, Any]:
    """Every column of a new ORM object by column name; a missing value gets the column's default (set on
    the object as well)."""
    values: dict[str, Any] = {}
    for prop in inspect(type(obj)).column_attrs:
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


def insert_job(session: Session, job: Job, rows: Sequence[Any]) -> None:
    """INSERT the job and its rows (``rows[*].job_id`` is set to the job's id); the caller commits."""
    job_values = column_values(job)
    for row in rows:
        row.job_id = job.id
    row_values = [column_values(row) for row in rows]
    job_insert = insert(Job.__table__).values(**job_values)
    if not row_values:
        session.execute(job_insert)
        return
    rows_table = type(rows[0]).__table__
    if session.get_bind().dialect.name == "postgresql":
        session.execute(insert(rows_table).values(row_values).add_cte(job_insert.returning(Job.id).cte("new_job")))
    else:
        session.execute(job_insert)
        session.execute(insert(rows_table), row_values)
