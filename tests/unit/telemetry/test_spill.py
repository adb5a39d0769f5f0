"""The telemetry disk buffer: JSON-lines files in write order, bounded (oldest dropped, and said), a file per
database, half-written and unreadable files never back-filled."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lem_telemetry.spill import DiskBuffer, count_rows, folder_for


def _gpu(t: float) -> dict:
    return {
        "host": "h",
        "gpu_uuid": "GPU-x",
        "gpu_index": 0,
        "time": t,
        "source": "nvml",
        "power_w": 100.5,
        "energy_mj": None,
        "temperature_c": 40.0,
        "sm_clock_mhz": 1980,
        "mem_clock_mhz": 3201,
        "clock_event_reasons": 0,
        "memory_used_bytes": 2**33,
        "utilization_gpu": 50,
        "utilization_memory": 20,
        "power_instant_w": 97.25,
        "power_memory_w": None,
        "power_module_w": None,
    }


def _host(t: float) -> dict:
    return {"host": "h", "time": t, "cpu_percent": 12.5, "memory_used_bytes": 2**30, "memory_total_bytes": 2**34}


def test_a_file_written_before_the_instantaneous_power_columns_back_fills_them_as_null(tmp_path: Path) -> None:
    buffer = DiskBuffer(tmp_path / "buf", max_bytes=10**9)
    old = {
        key: value
        for key, value in _gpu(3.0).items()
        if not key.startswith(("power_instant", "power_memory", "power_module"))
    }
    path = buffer.write([old], [])
    gpu, _ = buffer.read(path)
    assert gpu == [{**old, "power_instant_w": None, "power_memory_w": None, "power_module_w": None}]


def test_files_round_trip_in_write_order_as_json_lines(tmp_path: Path) -> None:
    buffer = DiskBuffer(tmp_path / "buf", max_bytes=10**9)
    assert buffer.pending() == []
    first = buffer.write([_gpu(1.25), _gpu(1.5)], [_host(1.0)])
    second = buffer.write([_gpu(2.0)], [])
    assert buffer.pending() == [first, second]
    lines = first.read_text().splitlines()
    assert [json.loads(line)["table"] for line in lines] == ["gpu", "gpu", "host"]  # data, never pickle
    gpu, host = buffer.read(first)
    assert gpu == [_gpu(1.25), _gpu(1.5)] and host == [_host(1.0)]
    assert count_rows(first) == 3
    buffer.remove(first)
    assert buffer.pending() == [second]


def test_over_its_bound_the_oldest_files_go_and_the_drop_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = DiskBuffer(tmp_path, max_bytes=1)
    probe = buffer.write([_gpu(0.0)] * 10, [])
    size = probe.stat().st_size
    buffer.remove(probe)
    buffer.max_bytes = int(2.5 * size)
    caplog.set_level(logging.WARNING, logger="lem_telemetry")
    files = [buffer.write([_gpu(float(i))] * 10, []) for i in range(4)]
    assert buffer.pending() == files[2:]
    assert buffer.dropped_rows == 20
    drops = [r.getMessage() for r in caplog.records if "over its" in r.getMessage()]
    assert len(drops) == 2 and files[0].name in drops[0] and "10 samples" in drops[0]


def test_a_folder_per_database_without_the_password(tmp_path: Path) -> None:
    a = folder_for("postgresql+psycopg://postgres:secret@db:5432/lem")
    b = folder_for("postgresql+psycopg://postgres:other@db:5432/lem")
    c = folder_for("postgresql+psycopg://postgres@db:5432/lem_test")
    s = folder_for("sqlite:////tmp/lem.db")
    assert a == b and a != c and a.startswith("postgresql-lem-") and "secret" not in a
    assert s.startswith("sqlite-tmp_lem.db-") and "/" not in s


def test_half_written_and_unreadable_files_are_never_back_filled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = DiskBuffer(tmp_path, max_bytes=10**9)
    (tmp_path / "00000000000000000001-1-000000.jsonl.tmp").write_text('{"table": "gpu"')
    good = buffer.write([_gpu(1.0)], [])
    broken = tmp_path / "00000000000000000002-1-000000.jsonl"
    broken.write_text('{"table": "gpu", "time": 1.0}\n{"table": "gpu", "ti')
    buffer.remove_stale_temporaries()
    assert buffer.pending() == [broken, good]
    with pytest.raises(ValueError, match="line 2"):
        buffer.read(broken)
    caplog.set_level(logging.ERROR, logger="lem_telemetry")
    buffer.quarantine(broken, "unreadable")
    assert buffer.pending() == [good]
    assert (tmp_path / (broken.name + ".bad")).exists()
    assert not list(tmp_path.glob("*.tmp"))
