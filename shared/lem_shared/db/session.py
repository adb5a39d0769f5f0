"""Database engine and sessions from the one settings object."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from lem_shared.settings import get_settings

# SQLite (the embedded stack) is shared by every process of a machine: a writer waits this long for the lock.
SQLITE_BUSY_TIMEOUT_S = 30.0
# The execution option that marks a SQLite connection as reading only: ``engine.connect().execution_options(...)``.
READ_ONLY = "lem_read_only"


# PostgreSQL over a network that may drop (a fleet's hosts): connecting gives up after CONNECT_TIMEOUT_S, and a
# connection whose packets go unacknowledged (a partition, a host gone) is closed by the kernel after
# TCP_USER_TIMEOUT_MS instead of hanging for TCP's ~15 minutes, so the caller's retry or disk buffer takes over.
CONNECT_TIMEOUT_S = 10
TCP_USER_TIMEOUT_MS = 15_000


def postgres_connect_args(connect_timeout_s: float = CONNECT_TIMEOUT_S) -> dict[str, Any]:
    return {
        "connect_timeout": int(connect_timeout_s),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }


@lru_cache
def engine_for(url: str) -> Engine:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url)
    connect_args = postgres_connect_args() if backend == "postgresql" else {}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (its folder is created when missing); None for an in-memory database."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    path = Path(database).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _sqlite_engine(url: str) -> Engine:
    """SQLite for several processes at once: write-ahead logging (readers never block the writer), a busy
    timeout, and every transaction begun IMMEDIATE, so two processes that read then write queue for the lock
    instead of one failing with "database is locked" when it upgrades its read lock."""
    sqlite_file(url)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN off: the begin event below says how
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A connection marked read_only (execution option) reads a snapshot and takes no lock.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def get_engine() -> Engine:
    return engine_for(get_settings().database_url)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with sessionmaker(get_engine(), expire_on_commit=False)() as session, session.begin():
        yield session
