"""The Alembic migrations and the SQLAlchemy models describe the same schema, on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, inspect, text
from sqlalchemy.exc import IntegrityError

from alembic import command
from service.core.config import Settings
from service.core.db import alembic_config, make_engine, migrate
from service.core.models import Base
from tests.service.conftest import Stack


def _diff(url: str, metadata: MetaData = Base.metadata) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def test_session_database_matches_models(stack: Stack) -> None:
    assert _diff(stack.settings.database_url) == []


def test_fresh_sqlite_matches_models_and_downgrades_cleanly(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url="", broker_url="", data_roots=[tmp_path])
    migrate(settings)
    migrate(settings)  # a second upgrade is a no-op
    assert _diff(settings.database_url) == []
    command.downgrade(alembic_config(settings.database_url), "base")
    engine = make_engine(settings.database_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    migrate(settings)
    assert _diff(settings.database_url) == []


def test_a_model_change_without_migration_is_detected(tmp_path: Path) -> None:
    """The agreement test above can fail: an extra column on the models shows up as a difference."""
    settings = Settings(home=tmp_path, database_url="", broker_url="", data_roots=[tmp_path])
    migrate(settings)
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["datasets"].append_column(Column("not_migrated", Integer))
    diff = _diff(settings.database_url, changed)
    assert any(d[0] == "add_column" and d[3].name == "not_migrated" for d in diff)


def test_upgrading_a_database_with_data_keeps_it(tmp_path: Path) -> None:
    """0001 → head on a database that already holds an alchemy fold (SQLite rebuilds the table for it)."""
    settings = Settings(home=tmp_path, database_url="", broker_url="", data_roots=[tmp_path])
    migrate(settings, "0001")
    engine = make_engine(settings.database_url)
    now = "2026-01-01 00:00:00"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, owner, kind, status, params, progress, message, cancel_requested, task_ids,"
                " created_at, updated_at) VALUES ('job_1', 'o', 'alchemy', 'succeeded', '{}', 1, '', 0, '[]', :t, :t)"
            ),
            {"t": now},
        )
        conn.execute(
            text(
                "INSERT INTO alchemy_results (id, job_id, fold, status, dice, reinitialised, metrics, created_at)"
                " VALUES ('ar_1', 'job_1', 0, 'ok', '{\"score\": 0.5}', '{}', '{}', :t)"
            ),
            {"t": now},
        )
    migrate(settings)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, progress, attempts, started_at, dice FROM alchemy_results")).one()
    engine.dispose()
    assert tuple(row[:4]) == ("ok", 0.0, 0, None) and "0.5" in row[4]
    assert _diff(settings.database_url) == []


def test_0004_merges_duplicate_datasets_into_the_newest_and_repoints_jobs(tmp_path: Path) -> None:
    """Rows registered twice before 0004 become one (the newest); jobs that named an old copy follow it."""
    settings = Settings(home=tmp_path, database_url="", broker_url="", data_roots=[tmp_path])
    migrate(settings, "0003")
    engine = make_engine(settings.database_url)
    insert = (
        "INSERT INTO datasets (id, owner, name, uri, format, modality, n_cases, labels, channel_names, fingerprint,"
        " problems, created_at) VALUES (:id, :owner, 'd', :uri, 'nnunet', 'MR', 2, '{}', '[]', 'f', '[]', :t)"
    )
    with engine.begin() as conn:
        for row_id, owner, uri, t in (
            ("ds_old", "o", "/d/a", "2026-01-01 00:00:00"),
            ("ds_new", "o", "/d/a", "2026-01-03 00:00:00"),
            ("ds_mid", "o", "/d/a", "2026-01-02 00:00:00"),
            ("ds_other_owner", "p", "/d/a", "2026-01-01 00:00:00"),
            ("ds_other_uri", "o", "/d/b", "2026-01-01 00:00:00"),
        ):
            conn.execute(text(insert), {"id": row_id, "owner": owner, "uri": uri, "t": t})
        conn.execute(
            text(
                "INSERT INTO jobs (id, owner, kind, status, dataset_id, params, progress, message, cancel_requested,"
                " task_ids, created_at, updated_at) VALUES ('job_1', 'o', 'ranking', 'succeeded', 'ds_old', '{}', 1,"
                " '', 0, '[]', :t, :t)"
            ),
            {"t": "2026-01-04 00:00:00"},
        )
    migrate(settings)
    with engine.connect() as conn:
        ids = sorted(conn.execute(text("SELECT id FROM datasets")).scalars())
        job_dataset = conn.execute(text("SELECT dataset_id FROM jobs")).scalar_one()
    assert ids == ["ds_new", "ds_other_owner", "ds_other_uri"]
    assert job_dataset == "ds_new"
    with engine.begin() as conn, pytest.raises(IntegrityError):
        conn.execute(text(insert), {"id": "ds_again", "owner": "o", "uri": "/d/a", "t": "2026-01-05 00:00:00"})
    engine.dispose()


def test_0007_moves_probe_folds_into_their_own_table_and_back(tmp_path: Path) -> None:
    """Probe folds stored among alchemy folds before 0007 move to probe_results with their results; alchemy folds
    stay; the downgrade moves them back."""
    settings = Settings(home=tmp_path, database_url="", broker_url="", data_roots=[tmp_path])
    migrate(settings, "0006")
    engine = make_engine(settings.database_url)
    now = "2026-01-01 00:00:00"
    job = (
        "INSERT INTO jobs (id, owner, kind, status, params, progress, message, cancel_requested, task_ids,"
        " created_at, updated_at) VALUES (:id, 'o', :kind, 'succeeded', '{}', 1, '', 0, '[]', :t, :t)"
    )
    fold = (
        "INSERT INTO alchemy_results (id, job_id, fold, status, progress, attempts, seconds, dice, reinitialised,"
        " metrics, created_at) VALUES (:id, :job, :fold, 'ok', 1, 1, 2.5, :dice, '{}', :metrics, :t)"
    )
    with engine.begin() as conn:
        conn.execute(text(job), {"id": "job_a", "kind": "alchemy", "t": now})
        conn.execute(text(job), {"id": "job_p", "kind": "probe", "t": now})
        values = {"id": "ar_a", "job": "job_a", "fold": 0, "dice": '{"score": 0.5}', "metrics": "{}", "t": now}
        conn.execute(text(fold), values)
        for i in range(2):
            probe = {"id": f"ar_p{i}", "job": "job_p", "fold": i, "dice": '{"score": 0.7}', "t": now}
            conn.execute(text(fold), {**probe, "metrics": json.dumps({"probe": {"rows": [i]}})})
    migrate(settings)
    with engine.connect() as conn:
        alchemy = conn.execute(text("SELECT id FROM alchemy_results")).scalars().all()
        probes = conn.execute(
            text("SELECT id, job_id, fold, seconds, dice, metrics FROM probe_results ORDER BY fold")
        ).all()
    assert alchemy == ["ar_a"]
    assert [(p[0], p[1], p[2], p[3]) for p in probes] == [("ar_p0", "job_p", 0, 2.5), ("ar_p1", "job_p", 1, 2.5)]
    assert "0.7" in probes[0][4] and "[1]" in probes[1][5] and "[1]" not in probes[0][5]
    assert _diff(settings.database_url) == []
    command.downgrade(alembic_config(settings.database_url), "0006")
    with engine.connect() as conn:
        back = sorted(conn.execute(text("SELECT id FROM alchemy_results")).scalars().all())
    engine.dispose()
    assert back == ["ar_a", "ar_p0", "ar_p1"]
