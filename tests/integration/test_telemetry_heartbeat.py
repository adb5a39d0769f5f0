"""Telemetry heartbeats in a real Redis, read back through ``lem_shared.wire.heartbeat.read_heartbeats``: present
while ``lem-telemetry`` samples, deleted when it stops, expired (TTL) when it dies; and a daemon whose Redis is
unreachable keeps sampling and says so once."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from lem_shared.db.migrate import upgrade
from lem_shared.db.models import GpuSample
from lem_shared.wire.heartbeat import gpu_key, host_key, read_heartbeats
from lem_telemetry.sources import REPLAY_UUID
from tests.broker_redis import redis_client
from tests.integration.telemetry_helpers import HEARTBEAT_REDIS_URL, Daemon, start_daemon, wait_for

ADMIN_URL = os.environ.get("LEM_TEST_ADMIN_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TTL_S = 1.5


@pytest.fixture
def database_url(scratch_database: str) -> str:
    upgrade(scratch_database)
    return scratch_database


def _beats_of(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return {
        beat["key"]: beat
        for beat in read_heartbeats(redis_client(HEARTBEAT_REDIS_URL))
        if beat.get("pid") == daemon.pid
    }


def _start(database_url: str, trace: Path, tmp_path: Path, name: str) -> Daemon:
    return start_daemon(
        database_url,
        f"replay:{trace}",
        tmp_path,
        name=name,
        telemetry_interval_s=0.05,
        telemetry_heartbeat_s=0.2,
        telemetry_heartbeat_ttl_s=TTL_S,
    )


def test_heartbeats_while_sampling_gone_after_stop_and_expired_after_death(
    database_url: str, h200_trace_dir: Path, tmp_path: Path
) -> None:
    trace = h200_trace_dir / "h200_nvml_trace.jsonl"
    host = socket.gethostname()
    daemon = _start(database_url, trace, tmp_path, "first")
    try:
        wait_for(lambda: gpu_key(REPLAY_UUID) in _beats_of(daemon) or not daemon.alive(), 15, "a GPU heartbeat")
        assert daemon.alive(), daemon.log()
        time.sleep(0.5)
        beats = _beats_of(daemon)
    finally:
        assert daemon.stop() == 0, daemon.log()
    gpu = beats[gpu_key(REPLAY_UUID)]
    assert gpu["kind"] == "gpu" and gpu["host"] == host and gpu["gpu_index"] == 0
    assert gpu["source"] == "nvml-replay" and gpu["state"] == "ok"
    assert 50 < gpu["power_w"] < 800 and 20 < gpu["temperature_c"] < 95
    assert 0 <= gpu["age_s"] < 1.0 and abs(gpu["time"] - time.time()) < 2.0
    host_beat = beats[host_key(host)]
    assert host_beat["kind"] == "host" and host_beat["source"] == "nvml-replay" and host_beat["gpus"] == 1
    assert _beats_of(daemon) == {}, "a cleanly stopped daemon still looks alive"

    # A daemon that dies cannot clean up: its heartbeats go when their TTL runs out.
    dead = _start(database_url, trace, tmp_path, "killed")
    wait_for(lambda: gpu_key(REPLAY_UUID) in _beats_of(dead) or not dead.alive(), 15, "a GPU heartbeat")
    dead.kill()
    killed_at = time.monotonic()
    assert gpu_key(REPLAY_UUID) in _beats_of(dead)
    wait_for(lambda: _beats_of(dead) == {}, TTL_S + 2, "the dead daemon's heartbeats to expire")
    assert time.monotonic() - killed_at > 0.5 * TTL_S


def test_without_redis_it_keeps_sampling_and_says_so_once(
    database_url: str, h200_trace_dir: Path, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    daemon = start_daemon(
        database_url,
        f"replay:{h200_trace_dir / 'h200_nvml_trace.jsonl'}",
        tmp_path,
        broker_url=f"redis://127.0.0.1:{closed_port}/0",
        telemetry_interval_s=0.05,
        telemetry_heartbeat_s=0.2,
        telemetry_flush_s=0.2,
    )
    engine = create_engine(database_url)
    try:
        wait_for(lambda: "heartbeat store unreachable" in daemon.log() or not daemon.alive(), 15, "the Redis warning")
        started = time.time()
        time.sleep(1.5)
    finally:
        assert daemon.stop() == 0, daemon.log()
    with engine.connect() as connection:
        fast = connection.scalar(
            select(func.count()).select_from(GpuSample)
            .where(GpuSample.time > func.to_timestamp(started), GpuSample.power_w.is_not(None))
        )  # fmt: skip
    engine.dispose()
    assert fast >= 0.8 * 1.5 / 0.05, daemon.log()
    assert daemon.log().count("heartbeat store unreachable") == 1, daemon.log()
