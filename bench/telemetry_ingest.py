"""Telemetry ingest: how many GPU samples a second the daemon's real write path puts into the database.

Synthetic readings go through exactly what the daemon's writer thread does each flush (``store.gpu_rows`` and
``store.write_samples``, one transaction per batch) into a scratch PostgreSQL database migrated with Alembic,
in batches of the size the daemon writes at its finest setting: 10 ms samples x 8 GPUs, plus one counter row per
GPU every 100 ms, flushed every second (880 GPU rows and 1 host row per batch). Measured for COPY (what the
daemon uses on PostgreSQL) and executemany (its fallback elsewhere), for a back-fill from the disk buffer
(read the JSON-lines files, then COPY), and for SQLite (a GPU box without PostgreSQL). Each is run
``--repeat`` times (median and best reported: the machine may be shared).

    .venv/bin/python bench/telemetry_ingest.py                      # 200,000 samples per method, 3 runs
    .venv/bin/python bench/telemetry_ingest.py --samples 50000 --out /tmp/ingest.json

Prints the figures and writes them to bench/results/telemetry_ingest.json. Needs PostgreSQL (LEM_BENCH_ADMIN_URL,
default postgresql+psycopg://postgres@127.0.0.1:5432/postgres); the scratch database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine, make_url

from lem_shared.db.migrate import upgrade
from lem_shared.db.models import GpuSample
from lem_telemetry.sampler import counter_reading
from lem_telemetry.sources import GpuReading, HostReading
from lem_telemetry.spill import DiskBuffer
from lem_telemetry.store import gpu_rows, host_rows, telemetry_engine, write_samples

ADMIN_URL = os.environ.get("LEM_BENCH_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
GPUS, INTERVAL_S, ENERGY_INTERVAL_S, FLUSH_S = 8, 0.01, 0.1, 1.0
BATCH = int(GPUS * FLUSH_S / INTERVAL_S + GPUS * FLUSH_S / ENERGY_INTERVAL_S)  # 880 GPU rows a flush


def _batches(total: int, start: float) -> list[tuple[list[GpuReading], list[HostReading]]]:
    """Readings shaped like the daemon's: fast rows for 8 GPUs every 10 ms, counter rows every 100 ms."""
    rng = random.Random(7)
    uuids = [f"GPU-bench-{i:04d}" for i in range(GPUS)]
    batches = []
    t, energy, made = start, [10_000_000] * GPUS, 0
    while made < total:
        readings: list[GpuReading] = []
        for tick in range(int(FLUSH_S / INTERVAL_S)):
            now = t + tick * INTERVAL_S
            for index, uuid in enumerate(uuids):
                readings.append(
                    GpuReading(
                        uuid,
                        index,
                        now + index * 1e-5,
                        rng.uniform(75, 700),
                        None,
                        rng.uniform(30, 80),
                        1980,
                        3201,
                        rng.choice((0, 1, 4)),
                        rng.randrange(2**30, 2**37),
                        rng.randrange(101),
                        rng.randrange(101),
                    )
                )
            if tick % int(ENERGY_INTERVAL_S / INTERVAL_S) == 0:
                for index, uuid in enumerate(uuids):
                    energy[index] += rng.randrange(5_000, 70_000)
                    readings.append(counter_reading(uuid, index, now + 0.002, energy[index]))
        readings = readings[: total - made]
        made += len(readings)
        batches.append((readings, [HostReading(t, 12.5, 2**33, 2**35)]))
        t += FLUSH_S
    return batches


def _ingest(engine: Engine, batches: list[tuple[list[GpuReading], list[HostReading]]], method: str) -> float:
    """Seconds to write every batch the way the daemon's writer does (rows built, one transaction a batch)."""
    started = time.perf_counter()
    for readings, hosts in batches:
        write_samples(engine, gpu_rows(readings, "bench", "nvml"), host_rows(hosts, "bench"), method=method)  # type: ignore[arg-type]
    return time.perf_counter() - started


def _backfill(engine: Engine, batches: list[tuple[list[GpuReading], list[HostReading]]]) -> dict[str, float]:
    """Spill every batch to the disk buffer (as during an outage), then back-fill it as the daemon does."""
    with tempfile.TemporaryDirectory() as folder:
        disk = DiskBuffer(Path(folder), max_bytes=10**12)
        started = time.perf_counter()
        for readings, hosts in batches:
            disk.write(gpu_rows(readings, "bench", "nvml"), host_rows(hosts, "bench"))
        spilled = time.perf_counter() - started
        size = disk.size_bytes()
        started = time.perf_counter()
        for path in disk.pending():
            gpu, hosts = disk.read(path)
            write_samples(engine, gpu, hosts)
            disk.remove(path)
        return {"spill_s": spilled, "backfill_s": time.perf_counter() - started, "disk_bytes": size}


def _count(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(GpuSample)) or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200_000, help="GPU samples per method")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each method (median and best reported)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "telemetry_ingest.json"))
    args = parser.parse_args(argv)

    name = f"lem_bench_ingest_{secrets.token_hex(4)}"
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    engine = telemetry_engine(url)
    sqlite_dir = tempfile.mkdtemp()
    sqlite_url = f"sqlite:///{sqlite_dir}/bench.db"
    figures: dict[str, Any] = {}
    try:
        with engine.connect() as connection:
            server = connection.scalar(text("SHOW server_version"))
        batches = _batches(args.samples, start=time.time() - 3600)
        rates: dict[str, list[float]] = {}

        def note(name: str, seconds: float) -> None:
            rates.setdefault(name, []).append(args.samples / seconds)

        def empty() -> None:
            with engine.begin() as connection:
                connection.execute(text("TRUNCATE gpu_samples, host_samples"))

        upgrade(sqlite_url)
        sqlite_engine = telemetry_engine(sqlite_url)
        for _ in range(args.repeat):
            for method in ("copy", "executemany"):
                empty()
                note(f"postgresql_{method}", _ingest(engine, batches, method))
                assert _count(engine) == args.samples
            empty()
            spill = _backfill(engine, batches)
            assert _count(engine) == args.samples
            note("disk_buffer_spill", spill["spill_s"])
            note("disk_buffer_backfill_copy", spill["backfill_s"])
            figures["disk_buffer_bytes_per_sample"] = round(spill["disk_bytes"] / args.samples, 1)
            with sqlite_engine.begin() as connection:
                connection.execute(text("DELETE FROM gpu_samples"))
                connection.execute(text("DELETE FROM host_samples"))
            note("sqlite_executemany", _ingest(sqlite_engine, batches, "executemany"))
            assert _count(sqlite_engine) == args.samples
        sqlite_engine.dispose()
        for name, values in rates.items():
            figures[name] = {
                "samples_per_s_median": round(statistics.median(values)),
                "samples_per_s_best": round(max(values)),
                "runs": [round(v) for v in values],
            }
    finally:
        engine.dispose()
        admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        for leftover in Path(sqlite_dir).glob("*"):
            leftover.unlink()
        os.rmdir(sqlite_dir)

    result = {
        "what": "bench/telemetry_ingest.py: synthetic GPU samples through lem_telemetry.store.write_samples",
        "command": " ".join([".venv/bin/python bench/telemetry_ingest.py", *(sys.argv[1:] if argv is None else argv)]),
        "samples_per_method": args.samples,
        "batch": {"gpu_rows": BATCH, "host_rows": 1, "shape": "10 ms x 8 GPUs + counter rows every 100 ms, 1 s flush"},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgresql": server,
            "platform": platform.platform(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "figures": figures,
        "target_samples_per_s": 20_000,
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
