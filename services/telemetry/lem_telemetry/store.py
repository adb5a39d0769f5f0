"""Writing readings to the database: one multi-row insert per table, both tables in one transaction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert

from lem_shared.db.models import GpuSample, HostSample
from lem_telemetry.sources import GpuReading, HostReading


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def gpu_rows(readings: Iterable[GpuReading], host: str, source: str) -> list[dict[str, Any]]:
    return [
        {
            "host": host,
            "gpu_uuid": r.gpu_uuid,
            "gpu_index": r.gpu_index,
            "time": _utc(r.t),
            "source": source,
            "power_w": r.power_w,
            "energy_mj": r.energy_mj,
            "temperature_c": r.temperature_c,
            "sm_clock_mhz": r.sm_clock_mhz,
            "mem_clock_mhz": r.mem_clock_mhz,
            "clock_event_reasons": r.clock_event_reasons,
            "memory_used_bytes": r.memory_used_bytes,
            "utilization_gpu": r.utilization_gpu,
            "utilization_memory": r.utilization_memory,
        }
        for r in readings
    ]


def host_rows(readings: Iterable[HostReading], host: str) -> list[dict[str, Any]]:
    return [
        {
            "host": host,
            "time": _utc(r.t),
            "cpu_percent": r.cpu_percent,
            "memory_used_bytes": r.memory_used_bytes,
            "memory_total_bytes": r.memory_total_bytes,
        }
        for r in readings
    ]


def write_samples(engine: Engine, gpu: list[dict[str, Any]], host: list[dict[str, Any]]) -> None:
    """Insert both batches or neither, so a retried batch never leaves duplicates behind."""
    with engine.begin() as connection:
        if gpu:
            connection.execute(insert(GpuSample), gpu)
        if host:
            connection.execute(insert(HostSample), host)
