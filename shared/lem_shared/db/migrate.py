"""Alembic, driven from code: create the database if it is missing, then upgrade to head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from lem_shared.settings import get_settings

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", (database_url or get_settings().database_url).replace("%", "%%"))
    return config


def ensure_database(database_url: str) -> bool:
    """Create the PostgreSQL database named in the URL (or a SQLite file's folder) when it does not exist; True when
    it was created."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        from lem_shared.db.session import sqlite_file

        path = sqlite_file(database_url)  # SQLite creates the file itself; its folder must exist
        return path is not None and not path.exists()
    if not url.drivername.startswith("postgresql"):
        return False
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database})
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{url.database}"'))
            return not exists
    finally:
        admin.dispose()


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    database_url = database_url or get_settings().database_url
    ensure_database(database_url)
    command.upgrade(alembic_config(database_url), revision)
