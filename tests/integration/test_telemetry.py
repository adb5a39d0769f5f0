"""The telemetry daemon against a real PostgreSQL: the ``lem-telemetry`` entry point as a subprocess with the
recorded-H200 replay and without NVML, and the daemon in-process riding out a database that is not there yet."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine, make_url

from lem_shared.db.migrate import upgrade
from lem_shared.db.models import GpuSample, HostSample
from lem_shared.settings import Settings
from lem_telemetry.daemon import TelemetryDaemon
from lem_telemetry.sources import REPLAY_UUID
from tests.integration.telemetry_helpers import HEARTBEAT_REDIS_URL

ADMIN_URL = os.environ.get("LEM_TEST_ADMIN_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
LEM_TELEMETRY = Path(sys.executable).with_name("lem-telemetry")
INTERVAL_S = 0.05


def _database_url(name: str) -> str:
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_database(name: str) -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_name() -> Iterator[str]:
    """A name for a fresh database; the database is dropped after the test whether or not it was created."""
    name = f"lem_test_telemetry_{secrets.token_hex(4)}"
    yield name
    _drop_database(name)


@pytest.fixture
def database_url(database_name: str) -> str:
    url = _database_url(database_name)
    upgrade(url)
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def _count(engine: Engine, table: type[GpuSample] | type[HostSample]) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(table)) or 0


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _start_daemon(database_url: str, source: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    env = {
        **os.environ,
        "LEM_DATABASE_URL": database_url,
        "LEM_TELEMETRY_SOURCE": source,
        "LEM_TELEMETRY_INTERVAL_S": str(INTERVAL_S),
        "LEM_TELEMETRY_FLUSH_S": "0.5",
        "LEM_TELEMETRY_BUFFER_DIR": str(tmp_path / "buffer"),
        "LEM_BROKER_URL": HEARTBEAT_REDIS_URL,
    }
    log_path = tmp_path / "telemetry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(LEM_TELEMETRY)], env=env, cwd=tmp_path, stdout=log, stderr=log)
    return process, log_path


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def test_replay_source_fills_gpu_and_host_samples(
    database_url: str, engine: Engine, h200_trace_dir: Path, tmp_path: Path
) -> None:
    process, log_path = _start_daemon(database_url, f"replay:{h200_trace_dir / 'h200_nvml_trace.jsonl'}", tmp_path)
    try:
        _wait_for(lambda: _count(engine, GpuSample) > 0 or process.poll() is not None, 10, "the first GPU samples")
        assert process.poll() is None, log_path.read_text()
        sampled_from = time.time()
        time.sleep(3.0)
    finally:
        exit_code = _stop(process)
    log = log_path.read_text()
    assert exit_code == 0, log

    with engine.connect() as connection:
        rows = connection.execute(
            select(
                GpuSample.time,
                GpuSample.source,
                GpuSample.gpu_uuid,
                GpuSample.gpu_index,
                GpuSample.power_w,
                GpuSample.energy_mj,
                GpuSample.temperature_c,
            )
            .where(GpuSample.time >= func.to_timestamp(sampled_from))
            .order_by(GpuSample.time)
        ).all()
        sources = set(connection.scalars(select(GpuSample.source).distinct()))
    # Two kinds of rows: fast rows (every field but the energy counter) every interval, and counter rows
    # (the energy counter alone, at the time it was read) every telemetry_energy_interval_s (0.1 s).
    fast = [r for r in rows if r.power_w is not None]
    counter = [r for r in rows if r.energy_mj is not None]
    assert len(fast) + len(counter) == len(rows)
    assert len(fast) >= 0.6 * 3.0 / INTERVAL_S, f"{len(fast)} GPU samples in 3 s\n{log}"
    assert sources == {"nvml-replay"}
    assert {(r.gpu_uuid, r.gpu_index) for r in rows} == {(REPLAY_UUID, 0)}
    assert all(50 < r.power_w < 800 and r.energy_mj is None and r.temperature_c is not None for r in fast)
    assert all(r.power_w is None and r.temperature_c is None for r in counter)
    assert all(r.time.tzinfo is not None for r in rows)
    spacing = statistics.median((b.time - a.time).total_seconds() for a, b in zip(fast, fast[1:], strict=False))
    assert spacing == pytest.approx(INTERVAL_S, rel=0.3)
    counter_spacing = statistics.median(
        (b.time - a.time).total_seconds() for a, b in zip(counter, counter[1:], strict=False)
    )
    assert counter_spacing == pytest.approx(0.1, rel=0.3)
    assert all(b.energy_mj >= a.energy_mj for a, b in zip(counter, counter[1:], strict=False))
    assert abs(rows[-1].time.timestamp() - time.time()) < 5
    assert _count(engine, HostSample) >= 2
    assert "energy counter of GPU GPU-replay-h200-0000 (index 0): one read costs" in log


def test_without_nvml_it_records_host_samples_and_says_so_once(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    process, log_path = _start_daemon(database_url, "nvml", tmp_path)
    try:
        _wait_for(lambda: _count(engine, HostSample) >= 2 or process.poll() is not None, 10, "two host samples")
        assert process.poll() is None, log_path.read_text()
    finally:
        exit_code = _stop(process)
    log = log_path.read_text()
    assert exit_code == 0, log
    assert log.count("NVML is unavailable") == 1, log
    assert _count(engine, GpuSample) == 0


def test_samples_taken_while_the_database_is_missing_are_written_when_it_appears(
    database_name: str, h200_trace_dir: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    url = _database_url(database_name)
    settings = Settings(
        database_url=url,
        broker_url=HEARTBEAT_REDIS_URL,
        telemetry_source=f"replay:{h200_trace_dir / 'h200_nvml_trace.jsonl'}",
        telemetry_interval_s=INTERVAL_S,
        telemetry_flush_s=0.2,
        telemetry_buffer_dir=str(tmp_path / "buffer"),
    )
    stop = threading.Event()
    daemon = TelemetryDaemon(settings, stop)
    exit_codes: list[int] = []
    caplog.set_level(logging.INFO, logger="lem_telemetry")
    started = time.time()
    runner = threading.Thread(target=lambda: exit_codes.append(daemon.run()))
    runner.start()
    try:
        time.sleep(1.0)  # several flushes fail: the database does not exist yet
        upgrade(url)
        engine = create_engine(url)
        _wait_for(lambda: _count(engine, HostSample) > 0, 5, "the kept samples to be written")
    finally:
        stop.set()
        runner.join(10)
    assert exit_codes == [0]
    with engine.connect() as connection:
        first = connection.scalar(select(func.min(GpuSample.time)))
        gpu_rows = connection.scalar(select(func.count()).select_from(GpuSample))
    engine.dispose()
    assert first is not None and first.timestamp() - started < 0.5, "samples from the outage were lost"
    assert gpu_rows >= 0.6 * (time.time() - started) / INTERVAL_S
    outage_warnings = [r for r in caplog.records if "database unavailable" in r.getMessage()]
    assert len(outage_warnings) == 1
    assert any("database reachable again" in r.getMessage() for r in caplog.records)
    assert not list((tmp_path / "buffer").rglob("*.jsonl")), "disk-buffer files were left behind"


def test_instantaneous_and_memory_power_are_stored_beside_the_averaged_reading(
    database_url: str, engine: Engine, h200_trace_dir: Path, tmp_path: Path
) -> None:
    # The 10 ms H200 recording with the field-values readings, fast and counter records apart as stored.
    process, log_path = _start_daemon(database_url, f"replay:{h200_trace_dir / 'h200_instant_trace.jsonl'}", tmp_path)
    try:
        _wait_for(lambda: _count(engine, GpuSample) > 0 or process.poll() is not None, 10, "the first GPU samples")
        sampled_from = time.time()
        time.sleep(2.0)
    finally:
        exit_code = _stop(process)
    assert exit_code == 0, log_path.read_text()
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                GpuSample.power_w,
                GpuSample.power_instant_w,
                GpuSample.power_memory_w,
                GpuSample.power_module_w,
                GpuSample.energy_mj,
            )
            .where(GpuSample.time >= func.to_timestamp(sampled_from))
            .order_by(GpuSample.time)
        ).all()
    fast = [r for r in rows if r.power_w is not None]
    counter = [r for r in rows if r.energy_mj is not None]
    assert fast and counter
    assert all(50 < r.power_instant_w < 1000 and 20 < r.power_memory_w < 200 for r in fast)
    assert all(r.power_module_w is None for r in fast)  # the H200 has no module reading
    assert all(r.power_instant_w is None for r in counter)
    assert all(b.energy_mj >= a.energy_mj for a, b in zip(counter, counter[1:], strict=False))
