"""Run leases and clock offsets on a real, migrated SQLite file: a lease renewed by its worker keeps a run whose
heartbeat is gone (a worker cut off from the broker) from being taken as orphaned, and only that worker's lease
for that attempt counts; a host's clock offset from the database's is measured to within the round trip."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from lem_shared.db.beacons import DatabaseBeacons
from lem_shared.db.clock import clock_offset
from lem_shared.db.migrate import upgrade
from lem_shared.db.models import Run
from lem_shared.dispatch import orphaned
from lem_shared.wire.heartbeat import live_leases, renew_lease


@pytest.fixture
def leases(tmp_path: Path) -> DatabaseBeacons:
    url = f"sqlite:///{tmp_path / 'lem.db'}"
    upgrade(url)
    return DatabaseBeacons(url)


def running(worker: str = "pytorch@a", attempts: int = 1, started_s_ago: float = 60.0) -> Run:
    started = datetime.now(UTC) - timedelta(seconds=started_s_ago)
    return Run(run_key="k" * 64, worker=worker, attempts=attempts, started_at=started, status="running")


def test_a_lease_keeps_a_run_whose_heartbeat_is_gone(leases: DatabaseBeacons) -> None:
    now = datetime.now(UTC)
    renew_lease(leases, "k" * 64, "pytorch@a", 1)
    held = live_leases(leases)
    assert held["k" * 64]["worker"] == "pytorch@a" and held["k" * 64]["attempt"] == 1
    assert orphaned(running(), {}, now, held) is None
    # Without it, or with another worker's or an earlier attempt's lease, the run's worker vanished.
    for lease in ({}, {"k" * 64: {**held["k" * 64], "worker": "pytorch@b"}}, held):
        run = running(attempts=2) if lease is held else running()
        reason = orphaned(run, {}, now, lease)
        assert reason is not None and "vanished (no heartbeat or run lease" in reason
    # A heartbeat that says the worker runs something else wins over its lease (it restarted under its name).
    beat = {"pytorch@a": {"run_key": "other", "time": time.time()}}
    assert "alive but not running it" in (orphaned(running(), beat, now, held) or "")


def test_a_lease_is_gone_after_the_heartbeat_lifetime(leases: DatabaseBeacons, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("LEM_WORKER_HEARTBEAT_TTL_S", "0.3")
    from lem_shared.settings import get_settings

    get_settings.cache_clear()
    try:
        renew_lease(leases, "k" * 64, "pytorch@a", 1)
        assert live_leases(leases)
        time.sleep(0.5)
        assert live_leases(leases) == {}
    finally:
        monkeypatch.delenv("LEM_WORKER_HEARTBEAT_TTL_S")
        get_settings.cache_clear()


def test_clock_offset_against_the_database(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'clock.db'}")
    with engine.connect() as connection:
        reading = clock_offset(connection)
    # SQLite's clock is this host's: the offset is within the round trip (and SQLite's millisecond 'now').
    assert 0 <= reading.rtt_s < 1.0
    assert abs(reading.offset_s) <= reading.rtt_s + 0.002
    assert reading.database_time == pytest.approx(time.time(), abs=1.0)
