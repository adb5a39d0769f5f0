"""Alembic: models and migrations agree, the schema goes down to nothing and up again, and data written at the
first revision survives the way to head and back."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from sqlalchemy import create_engine, inspect

from lem_shared.db.migrate import alembic_config

REPO = Path(__file__).resolve().parents[2]


def test_alembic_check_finds_no_drift(stack_env: dict[str, str]) -> None:
    alembic = Path(sys.executable).with_name("alembic")
    result = subprocess.run([str(alembic), "check"], cwd=REPO, env=stack_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_schema_downgrades_to_base_and_upgrades_again(scratch_database: str) -> None:
    config = alembic_config(scratch_database)
    command.upgrade(config, "head")
    assert {
        "campaigns",
        "experiments",
        "runs",
        "run_metrics",
        "batch_timings",
        "gpu_samples",
        "host_samples",
        "environments",
    } <= tables(scratch_database)
    command.downgrade(config, "base")
    assert tables(scratch_database) == {"alembic_version"}
    command.upgrade(config, "head")
    assert "runs" in tables(scratch_database)


def test_cli_on_an_unmigrated_database_says_to_migrate(stack_env: dict[str, str], scratch_database: str) -> None:
    lem = Path(sys.executable).with_name("lem")
    env = {**stack_env, "LEM_DATABASE_URL": scratch_database}
    result = subprocess.run([str(lem), "campaign", "list"], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "run `lem db upgrade`" in result.stderr and "Traceback" not in result.stderr


def test_cli_without_a_database_server_says_how_to_start_one(stack_env: dict[str, str]) -> None:
    lem = Path(sys.executable).with_name("lem")
    env = {**stack_env, "LEM_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/lem"}
    result = subprocess.run([str(lem), "campaign", "list"], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "cannot use the database" in result.stderr and "Traceback" not in result.stderr


def _value(column: sa.Column, row: int) -> object:
    """A value of the column's type for a row written at the first revision (every table gets rows 1 and 2)."""
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return row % 2 == 0
    if isinstance(kind, sa.Integer):  # ids, foreign keys (rows 1 and 2 exist in every table) and counts
        return row if column.primary_key or column.foreign_keys else 1000 * row + 7
    if isinstance(kind, sa.Float | sa.Numeric):
        return 1.25 * row
    if isinstance(kind, sa.DateTime):
        return datetime(2026, 1, row, 12, 30, tzinfo=UTC)
    if isinstance(kind, sa.JSON):
        return {"row": row, "nested": [1, 2.5, "x"]}
    if isinstance(kind, sa.String | sa.Text):
        length = getattr(kind, "length", None) or 64
        return f"{column.name}-{row}"[:length]
    raise AssertionError(f"no sample value for {column.table.name}.{column.name} of type {kind!r}")


# Columns a later revision renamed (the data moves with them): (table, name at 0001) -> name at head.
RENAMED = {("run_metrics", "warmup_batches"): "warmup_iterations"}


def _dump(connection: sa.Connection, table: sa.Table, columns: list[str]) -> list[tuple]:
    rows = connection.execute(sa.select(*(table.c[c] for c in columns)).order_by(*table.primary_key.columns))
    return [tuple(row) for row in rows]


def test_data_written_at_the_first_revision_survives_head_and_back(scratch_database: str) -> None:
    """Every table filled at revision 0001, upgraded to head, downgraded to 0001 again: nothing lost or changed."""
    config = alembic_config(scratch_database)
    command.upgrade(config, "0001")
    engine = create_engine(scratch_database)
    try:
        first = sa.MetaData()
        first.reflect(engine)
        tables_at_first = [t for t in first.sorted_tables if t.name != "alembic_version"]
        with engine.begin() as connection:
            for table in tables_at_first:
                for row in (1, 2):
                    connection.execute(table.insert().values({c.name: _value(c, row) for c in table.columns}))
            before = {t.name: _dump(connection, t, [c.name for c in t.columns]) for t in tables_at_first}
        assert all(len(rows) == 2 for rows in before.values()), before

        command.upgrade(config, "head")
        head = sa.MetaData()
        head.reflect(engine)
        with engine.connect() as connection:
            for table in tables_at_first:
                columns = [RENAMED.get((table.name, c.name), c.name) for c in table.columns]
                assert _dump(connection, head.tables[table.name], columns) == before[table.name], table.name
            provenance = connection.execute(sa.text("SELECT schema_version FROM runs")).scalars().all()
            assert provenance == ["alembic <=0003", "alembic <=0003"]

        command.downgrade(config, "0001")
        after = sa.MetaData()
        after.reflect(engine)
        with engine.connect() as connection:
            for table in tables_at_first:
                assert {c.name for c in after.tables[table.name].columns} == {c.name for c in table.columns}
                assert (
                    _dump(connection, after.tables[table.name], [c.name for c in table.columns]) == before[table.name]
                ), table.name
    finally:
        engine.dispose()


def test_the_models_schema_version_is_the_alembic_head() -> None:
    from alembic.script import ScriptDirectory

    from lem_shared.db.models import SCHEMA_VERSION

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_VERSION
