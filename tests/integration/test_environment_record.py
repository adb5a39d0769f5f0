"""The host environment telemetry records at start: one row per distinct environment, on PostgreSQL and SQLite;
and the worker's per-run snapshot shares a row with its twin taken at another temperature."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from lem_shared.db.migrate import upgrade
from lem_shared.db.models import Environment
from lem_shared.runtime.adapter import DeviceInfo
from lem_shared.runtime.environment import environment_snapshot
from lem_telemetry.environment_record import record_host_environment


def test_recording_the_host_twice_keeps_one_row(scratch_database: str) -> None:
    upgrade(scratch_database)
    engine = create_engine(scratch_database)
    try:
        first = record_host_environment(engine)
        second = record_host_environment(engine)
        assert first is not None and first == second
        with engine.connect() as conn:
            rows = conn.execute(select(Environment.hash, Environment.data)).all()
        assert len(rows) == 1
        digest, data = rows[0]
        assert data["kind"] == "host" and data["hash"] == digest
        assert "cpu_model" in data and "gpus" in data
    finally:
        engine.dispose()


def test_recording_works_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'lem.db'}")
    Environment.__table__.create(engine)
    first = record_host_environment(engine)
    assert first is not None and record_host_environment(engine) == first
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Environment)) == 1


def test_a_database_without_the_schema_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with caplog.at_level(logging.WARNING, logger="lem_telemetry.environment_record"):
        assert record_host_environment(engine) is None
    assert "not recorded" in caplog.text and "environments" in caplog.text


def test_runs_in_the_same_environment_share_a_row(scratch_database: str) -> None:
    upgrade(scratch_database)
    engine = create_engine(scratch_database)
    try:
        run = environment_snapshot(DeviceInfo("cpu", "cpu", None), {"torch": "2.13.0+cpu"})
        later = copy.deepcopy(run)
        later["captured_at"] = "2031-01-01T00:00:00+00:00"
        with Session(engine) as s, s.begin():
            assert Environment.id_for(s, run) == Environment.id_for(s, later)
            assert s.scalar(select(func.count()).select_from(Environment)) == 1
    finally:
        engine.dispose()
