"""Telemetry rides out PostgreSQL going away for real: a private PostgreSQL server (initdb'd for this module) is
stopped and started under a sampling ``lem-telemetry``, and a daemon stopped while the database is away leaves
its samples on disk for the next start to back-fill. No sample may be lost either way."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from lem_shared.db.models import GpuSample, HostSample
from lem_telemetry.sources import REPLAY_UUID
from tests.integration.telemetry_helpers import PG_BIN, PrivatePostgres, start_daemon, user_exists, wait_for

INTERVAL_S = 0.02


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"initdb is not installed at {PG_BIN} (set LEM_TEST_PG_BIN): cannot run a private PostgreSQL")
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not user_exists("postgres")):
        pytest.skip("running as root without runuser and a 'postgres' user: initdb refuses to run as root")
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def running(postgres: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The private server, running at the start of the test and again after it, whatever the test did."""
    if not postgres.running():
        postgres.start()
    yield postgres
    if not postgres.running():
        postgres.start()


def _samples(engine: Engine) -> tuple[list[float], list[tuple[float, int]], int]:
    """(times of fast rows, (time, energy) of counter rows, host rows), all in time order."""
    with engine.connect() as connection:
        fast = connection.scalars(
            select(GpuSample.time).where(GpuSample.power_w.is_not(None)).order_by(GpuSample.time)
        ).all()
        counter = connection.execute(
            select(GpuSample.time, GpuSample.energy_mj).where(GpuSample.energy_mj.is_not(None)).order_by(GpuSample.time)
        ).all()
        hosts = connection.scalar(select(func.count()).select_from(HostSample)) or 0
    return [t.timestamp() for t in fast], [(t.timestamp(), e) for t, e in counter], hosts


def _count_after(engine: Engine, t: float) -> int:
    with engine.connect() as connection:
        return (
            connection.scalar(select(func.count()).select_from(GpuSample).where(GpuSample.time > func.to_timestamp(t)))
            or 0
        )


def test_a_postgres_restart_while_sampling_loses_no_sample(
    running: PrivatePostgres, h200_trace_dir: Path, tmp_path: Path
) -> None:
    url = running.migrated_database("restart")
    engine = create_engine(url)
    daemon = start_daemon(
        url,
        f"replay:{h200_trace_dir / 'h200_nvml_trace.jsonl'}",
        tmp_path,
        telemetry_interval_s=INTERVAL_S,
        telemetry_flush_s=0.2,
    )
    try:
        wait_for(lambda: _count_after(engine, 0) > 0 or not daemon.alive(), 15, "the first samples")
        assert daemon.alive(), daemon.log()
        time.sleep(1.0)
        engine.dispose()
        stopped_at = time.time()
        running.stop()
        time.sleep(3.0)
        running.start()
        restarted_at = time.time()
        wait_for(lambda: _count_after(engine, restarted_at + 0.5) > 0, 15, "samples after the restart")
        time.sleep(0.5)
    finally:
        exit_code = daemon.stop()
    log = daemon.log()
    assert exit_code == 0, log
    assert log.count("database unavailable") == 1, log
    assert "database reachable again" in log, log

    fast, counter, hosts = _samples(engine)
    engine.dispose()
    assert fast[0] < stopped_at - 0.5 and fast[-1] > restarted_at + 0.5, "the samples do not span the outage"
    gaps = [b - a for a, b in zip(fast, fast[1:], strict=False)]
    worst = max(gaps)
    assert worst < 5 * INTERVAL_S, f"a {worst:.3f} s gap in the {INTERVAL_S} s samples\n{log}"
    expected = (fast[-1] - fast[0]) / INTERVAL_S
    assert len(fast) >= 0.9 * expected, f"{len(fast)} samples where {expected:.0f} were due\n{log}"
    # The counter rows have no gap either, and the counter never runs backwards.
    assert max(b[0] - a[0] for a, b in zip(counter, counter[1:], strict=False)) < 0.5
    assert all(b[1] >= a[1] for a, b in zip(counter, counter[1:], strict=False))
    assert len(counter) >= 0.9 * (counter[-1][0] - counter[0][0]) / 0.1
    assert hosts >= int(fast[-1] - fast[0]) - 1
    assert not list((tmp_path / "buffer").rglob("*.jsonl")), "disk-buffer files were left behind"


def test_samples_spilled_at_shutdown_are_backfilled_by_the_next_start(
    running: PrivatePostgres, h200_trace_dir: Path, tmp_path: Path
) -> None:
    url = running.migrated_database("spill")
    source = f"replay:{h200_trace_dir / 'h200_nvml_trace.jsonl'}"
    running.stop()
    first = start_daemon(url, source, tmp_path, name="first", telemetry_interval_s=INTERVAL_S, telemetry_flush_s=0.2)
    time.sleep(2.5)
    assert first.stop() == 0, first.log()
    first_stopped = time.time()
    log = first.log()
    assert log.count("database unavailable") == 1, log
    assert "the next start back-fills them" in log, log

    spilled = list((tmp_path / "buffer").rglob("*.jsonl"))
    lines = [line for path in spilled for line in path.read_text().splitlines()]
    gpu_lines = sum('"table":"gpu"' in line for line in lines)
    host_lines = sum('"table":"host"' in line for line in lines)
    assert gpu_lines > 1.0 / INTERVAL_S, log  # at least a second of samples waited on disk
    assert host_lines >= 1

    running.start()
    second = start_daemon(url, source, tmp_path, name="second", telemetry_interval_s=INTERVAL_S, telemetry_flush_s=0.2)
    engine = create_engine(url)
    try:
        wait_for(lambda: not list((tmp_path / "buffer").rglob("*.jsonl")), 15, "the disk buffer to be back-filled")
        wait_for(lambda: _count_after(engine, first_stopped + 0.5) > 0, 15, "the second daemon's own samples")
    finally:
        assert second.stop() == 0, second.log()
    assert "from an earlier run wait in" in second.log()
    with engine.connect() as connection:
        before = func.to_timestamp(first_stopped)
        gpu = connection.scalar(select(func.count()).select_from(GpuSample).where(GpuSample.time < before))
        host = connection.scalar(select(func.count()).select_from(HostSample).where(HostSample.time < before))
        uuids = set(connection.scalars(select(GpuSample.gpu_uuid).distinct()))
    engine.dispose()
    assert (gpu, host) == (gpu_lines, host_lines), "not every spilled sample arrived exactly once"
    assert uuids == {REPLAY_UUID}
