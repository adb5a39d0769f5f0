"""Alembic: models and migrations agree, and the schema goes down to nothing and up again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    assert {"campaigns", "experiments", "runs", "run_metrics", "batch_timings", "gpu_samples", "host_samples",
            "environments"} <= tables(scratch_database)
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
