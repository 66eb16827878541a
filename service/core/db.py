"""Database engine, sessions and migrations, shared by the API, the worker and the CLI.

SQLite (the embedded default) is used by two processes at once, the API and the worker; WAL journaling and
a busy timeout let a reader and a writer overlap and make a writer wait for the lock instead of failing.
The schema is only ever created by Alembic (`migrate`), never by ``create_all``, so a deployed database and
a fresh one are guaranteed to be the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from service.core.config import Settings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = REPO_ROOT / "alembic.ini"
ALEMBIC_DIR = REPO_ROOT / "alembic"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# Sync routes run on AnyIO's thread pool (40 threads). The pool may keep fewer connections open, but it
# must be able to *hand out* one per thread: with fewer, threads block on the pool while the requests that
# hold connections wait for a free thread to close their sessions, and everything stalls until the pool
# timeout (found by bench/api.py with 64 clients).
MAX_CONNECTIONS = 48


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine tuned for the backend: pragmas for SQLite, a pre-pinged pool for servers."""
    overflow = max(0, MAX_CONNECTIONS - pool_size)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=overflow,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=overflow, pool_pre_ping=True)


class Database:
    """Engine plus session factory for one settings object (tests run several side by side)."""

    def __init__(self, settings: Settings, *, pool_size: int = 10) -> None:
        self.url = settings.database_url
        self.engine = make_engine(self.url, pool_size=pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads of polled endpoints: no BEGIN/ROLLBACK round trips. Each statement sees committed data;
        # the worker commits a row's result before it closes the job, so reading the job first and its
        # rows second never shows a finished job with unfinished rows.
        self.reads = sessionmaker(self.engine.execution_options(isolation_level="AUTOCOMMIT"))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Any:
    """An Alembic config for ``url`` that works from any working directory."""
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["url"] = url
    return config


def migrate(settings: Settings, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent; cheap when already there)."""
    from alembic import command

    if settings.database_url.startswith("sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings.database_url), revision)
