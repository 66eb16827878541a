"""Alembic environment: the URL comes from the caller (`service.core.db.migrate`) or from the BNRANK_ settings.

On PostgreSQL the migration holds an advisory lock, so several API replicas starting at once migrate one
after the other instead of racing on the same DDL. Logging is only configured when the `alembic` command
runs this file; a programmatic upgrade (inside `bnrank serve`) must not replace the caller's logging.
"""

from __future__ import annotations

from logging.config import fileConfig

from sqlalchemy import Connection, text

from alembic import context
from service.core.db import make_engine
from service.core.models import Base

config = context.config
target_metadata = Base.metadata
MIGRATION_LOCK = 7_236_101  # arbitrary, constant: the advisory lock id of BNRank migrations


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    from service.core.config import Settings

    return Settings().database_url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite can only ALTER by copying tables
    )


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url(), pool_size=1)
    try:
        with engine.connect() as connection:
            locked = connection.dialect.name == "postgresql"
            if locked:
                connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK})
                connection.commit()
            elif connection.dialect.name == "sqlite":
                # Batch migrations copy a table and drop the original; with foreign keys on, that drop would
                # run every ON DELETE action (SET NULL, CASCADE) against the rows that referred to it. The
                # pragma only takes effect outside a transaction, hence here; the engine is disposed after.
                connection.execute(text("PRAGMA foreign_keys=OFF"))
                connection.commit()
            try:
                _configure(connection)
                with context.begin_transaction():
                    context.run_migrations()
                connection.commit()
            finally:
                if locked:
                    connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK})
                    connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
