"""The telemetry daemon's RAPL thread and the several-GPU replay, against a real PostgreSQL and Redis.

RAPL is read from a STAND-IN powercap tree built in tmp_path (``stand_in_powercap``: the kernel's layout, zones
under devices/virtual/powercap/intel-rapl and listed flat as links, as in tests/unit/telemetry/test_rapl.py),
whose energy_uj counters a test thread advances, through one wraparound. The daemon is the real ``lem-telemetry``
process (and, for the outage, the daemon in-process), pointed at the tree by LEM_POWERCAP_ROOT.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from lem_shared.db.migrate import upgrade
from lem_shared.db.models import GpuSample, HostEnergySample
from lem_shared.settings import Settings
from lem_shared.wire.heartbeat import host_key, read_heartbeats
from lem_telemetry.daemon import TelemetryDaemon
from lem_telemetry.sources import REPLAY_UUID, open_source, replay_uuids
from tests.broker_redis import redis_client
from tests.integration.telemetry_helpers import HEARTBEAT_REDIS_URL, Daemon, start_daemon, wait_for

# The daemon reads RAPL at the energy counter's cadence; 1000 W for at most 5 s fills this range, so no read gap
# the daemon could plausibly have is long enough for a wrap to pass unseen (which would mark a reset).
ENERGY_INTERVAL_S = 0.1
RANGE_UJ = 5_000_000_000
STEP_S = 0.05
PACKAGE_STEP_UJ = 5_000_000  # 5 J a step: 100 W
DRAM_STEP_UJ = 1_250_000  # 1.25 J a step: 25 W
CORE_STEP_UJ = 3_000_000
STEPS = 40
HOST = socket.gethostname()


class StandInPowercap:
    """A STAND-IN powercap tree with one package: package-0 (wraps early), its core and its dram."""

    def __init__(self, base: Path) -> None:
        self.root = base / "class" / "powercap"
        devices = base / "devices" / "virtual" / "powercap" / "intel-rapl"
        self.root.mkdir(parents=True)
        package = devices / "intel-rapl:0"
        self.zones = {"package-0": package, "core": package / "intel-rapl:0:0", "dram": package / "intel-rapl:0:1"}
        # package-0 starts 50 J below its range: the 11th step wraps it.
        self.raw = {"package-0": RANGE_UJ - 50_000_000, "core": 7_000_000, "dram": 123_456_789}
        for name, zone in self.zones.items():
            zone.mkdir(parents=True)
            (zone / "name").write_text(name + "\n")
            (zone / "max_energy_range_uj").write_text(f"{RANGE_UJ}\n")
            self.write(name, self.raw[name])
            (self.root / zone.name).symlink_to(zone, target_is_directory=True)

    def write(self, name: str, raw_uj: int) -> None:
        # Written aside and renamed, so the daemon never reads a half-written counter.
        temporary = self.zones[name] / "energy_uj.tmp"
        temporary.write_text(f"{raw_uj}\n")
        os.replace(temporary, self.zones[name] / "energy_uj")
        self.raw[name] = raw_uj


class CounterAdvancer(threading.Thread):
    """Adds a fixed energy to each counter every STEP_S, wrapping at RANGE_UJ as the hardware does; keeps when
    each total was written (``history``: wall time after the write, joules added to package-0 and to dram)."""

    def __init__(self, tree: StandInPowercap) -> None:
        super().__init__(name="stand-in-rapl", daemon=True)
        self.tree = tree
        self.history: list[tuple[float, float, float]] = [(time.time(), 0.0, 0.0)]
        self.wrapped = False

    def run(self) -> None:
        added = {"package-0": 0, "dram": 0}
        for step in range(1, STEPS + 1):
            time.sleep(STEP_S)
            for name, step_uj in (("package-0", PACKAGE_STEP_UJ), ("dram", DRAM_STEP_UJ), ("core", CORE_STEP_UJ)):
                raw = self.tree.raw[name] + step_uj
                if raw > RANGE_UJ:
                    raw -= RANGE_UJ
                    self.wrapped = True
                self.tree.write(name, raw)
                if name in added:
                    added[name] = step * step_uj
            self.history.append((time.time(), added["package-0"] / 1e6, added["dram"] / 1e6))

    def added_by(self, t: float) -> tuple[float, float]:
        """Joules added to (package-0, dram) by the last write before ``t``."""
        times = [h[0] for h in self.history]
        _, package, dram = self.history[max(bisect.bisect_right(times, t) - 1, 0)]
        return package, dram


@pytest.fixture
def database_url(scratch_database: str) -> str:
    upgrade(scratch_database)
    return scratch_database


@pytest.fixture
def engine(database_url: str) -> Any:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def _energy_rows(engine: Engine) -> dict[str, list[Any]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(HostEnergySample.host, HostEnergySample.time, HostEnergySample.domain, HostEnergySample.energy_j,
                   HostEnergySample.reset).order_by(HostEnergySample.time)
        ).all()  # fmt: skip
    by_domain: dict[str, list[Any]] = {}
    for row in rows:
        by_domain.setdefault(row.domain, []).append(row)
    return by_domain


def _host_beat(daemon: Daemon) -> dict[str, Any] | None:
    beats = {
        beat["key"]: beat
        for beat in read_heartbeats(redis_client(HEARTBEAT_REDIS_URL))
        if beat.get("pid") == daemon.pid
    }
    return beats.get(host_key(HOST))


def _start(database_url: str, tmp_path: Path, powercap: Path, source: str = "nvml") -> Daemon:
    return start_daemon(
        database_url, source, tmp_path, powercap_root=powercap, telemetry_energy_interval_s=ENERGY_INTERVAL_S,
        telemetry_interval_s=0.05, telemetry_heartbeat_s=0.2,
    )  # fmt: skip


def test_rapl_counters_through_a_wrap_are_stored_as_the_energy_added(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    tree = StandInPowercap(tmp_path / "stand_in_powercap")
    daemon = _start(database_url, tmp_path, tree.root)
    advancer = CounterAdvancer(tree)
    try:
        # The counters hold still until the daemon's first reads are stored; then the thread moves them.
        wait_for(lambda: len(_energy_rows(engine)) == 2 or not daemon.alive(), 15, "the first RAPL rows")
        assert daemon.alive(), daemon.log()
        advancer.history = [(time.time(), 0.0, 0.0)]
        advancer.start()
        advancer.join(STEPS * STEP_S + 10)
        finished = time.time()
        wait_for(
            lambda: all(rows[-1].time.timestamp() > finished + 0.3 for rows in _energy_rows(engine).values()),
            10,
            "RAPL rows read after the last write",
        )
        beat = wait_for(lambda: _host_beat(daemon), 5, "the host heartbeat")
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert advancer.wrapped, "the stand-in package counter never wrapped"
    log = daemon.log()
    assert beat["rapl"] == "available" and "package-0, package-0/core, package-0/dram" in beat["rapl_message"]
    assert log.count("RAPL available") == 1, log

    by_domain = _energy_rows(engine)
    assert set(by_domain) == {"package-0", "package-0/dram"}  # core lies inside the package: not stored
    total_package, total_dram = PACKAGE_STEP_UJ * STEPS / 1e6, DRAM_STEP_UJ * STEPS / 1e6  # 200 J and 50 J
    for domain, step_j, total_j, at in (
        ("package-0", PACKAGE_STEP_UJ / 1e6, total_package, 0),
        ("package-0/dram", DRAM_STEP_UJ / 1e6, total_dram, 1),
    ):
        rows = by_domain[domain]
        assert {row.host for row in rows} == {HOST}
        # The daemon's first read of a domain is a reset (nothing before it can be compared); the wrap is not.
        assert [row.reset for row in rows] == [True] + [False] * (len(rows) - 1), domain
        first = rows[0].energy_j
        assert rows[-1].energy_j - first == pytest.approx(total_j, abs=1e-6), domain
        assert all(b.energy_j >= a.energy_j for a, b in zip(rows, rows[1:], strict=False)), domain
        # Each row holds what had been added when it was read, give or take the one write in flight.
        for row in rows:
            expected = advancer.added_by(row.time.timestamp())[at]
            assert abs(row.energy_j - first - expected) <= step_j + 1e-6, (domain, row)
        # Read at the energy counter's cadence.
        spacing = sorted(b.time.timestamp() - a.time.timestamp() for a, b in zip(rows, rows[1:], strict=False))
        assert spacing[len(spacing) // 2] == pytest.approx(ENERGY_INTERVAL_S, rel=0.3)
    assert by_domain["package-0"][0].energy_j == pytest.approx((RANGE_UJ - 50_000_000) / 1e6)


def test_rapl_rows_taken_while_the_database_is_not_ready_are_backfilled(
    scratch_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = StandInPowercap(tmp_path / "stand_in_powercap")
    settings = Settings(
        database_url=scratch_database,  # created but not migrated: every write fails until upgrade()
        broker_url=HEARTBEAT_REDIS_URL,
        telemetry_source="nvml",
        telemetry_energy_interval_s=ENERGY_INTERVAL_S,
        telemetry_flush_s=0.2,
        telemetry_buffer_dir=str(tmp_path / "buffer"),
        powercap_root=str(tree.root),
    )
    stop = threading.Event()
    daemon = TelemetryDaemon(settings, stop)
    exit_codes: list[int] = []
    caplog.set_level(logging.INFO, logger="lem_telemetry")
    started = time.time()
    runner = threading.Thread(target=lambda: exit_codes.append(daemon.run()))
    runner.start()
    engine = create_engine(scratch_database)
    try:
        wait_for(lambda: list((tmp_path / "buffer").rglob("*.jsonl")), 10, "rows spilled to the disk buffer")
        time.sleep(0.5)
        upgrade(scratch_database)
        wait_for(lambda: not list((tmp_path / "buffer").rglob("*.jsonl")), 10, "the disk buffer to back-fill")
        ended = time.time()
    finally:
        stop.set()
        runner.join(15)
    by_domain = _energy_rows(engine)
    engine.dispose()
    assert exit_codes == [0]
    assert any("database unavailable" in r.getMessage() for r in caplog.records)
    assert set(by_domain) == {"package-0", "package-0/dram"}
    for rows in by_domain.values():
        assert rows[0].time.timestamp() - started < 1.0, "RAPL rows from the outage were lost"
        assert len(rows) >= 0.6 * (ended - started) / ENERGY_INTERVAL_S
        assert len({row.time for row in rows}) == len(rows), "a back-filled row was written twice"


def test_replay_as_two_gpus_writes_both_the_second_at_half_power_and_energy_and_without_rapl_says_absent(
    database_url: str, engine: Engine, h200_trace_dir: Path, tmp_path: Path
) -> None:
    trace = h200_trace_dir / "h200_nvml_trace.jsonl"
    first, second = replay_uuids(2)
    missing = tmp_path / "stand_in_powercap_missing"
    daemon = _start(database_url, tmp_path, missing, source=f"replay:{trace}?gpus=2")
    try:
        wait_for(lambda: _count_gpu(engine) > 40 or not daemon.alive(), 15, "GPU samples")
        time.sleep(1.5)
        beat = wait_for(lambda: _host_beat(daemon), 5, "the host heartbeat")
    finally:
        assert daemon.stop() == 0, daemon.log()
    log = daemon.log()
    assert "GPU-replay-h200-0000 (index 0), GPU-replay-h200-0001 (index 1)" in log
    # No RAPL here: no rows, said once in the log and in the host heartbeat (which lem doctor shows).
    assert beat["rapl"] == "absent" and f"no powercap folder at {missing}" in beat["rapl_message"]
    assert beat["gpus"] == 2 and log.count("RAPL absent") == 1, log
    assert _energy_rows(engine) == {}

    with engine.connect() as connection:
        rows = connection.execute(
            select(GpuSample.gpu_uuid, GpuSample.gpu_index, GpuSample.time, GpuSample.power_w, GpuSample.energy_mj)
            .order_by(GpuSample.time)
        ).all()  # fmt: skip
    assert {(r.gpu_uuid, r.gpu_index) for r in rows} == {(first, 0), (second, 1)}
    fast = {uuid: [r for r in rows if r.gpu_uuid == uuid and r.power_w is not None] for uuid in (first, second)}
    counters = {uuid: [r for r in rows if r.gpu_uuid == uuid and r.energy_mj is not None] for uuid in (first, second)}
    # One fast pass reads both GPUs a few microseconds apart, so pairs in time order are the same trace record
    # (but where the pass straddled a record boundary, one pair in every few hundred).
    pairs = list(zip(fast[first], fast[second], strict=False))
    assert len(pairs) > 40 and abs(len(fast[first]) - len(fast[second])) <= 1
    halves = sum(b.power_w == pytest.approx(a.power_w / 2, rel=1e-9) for a, b in pairs)
    assert halves >= 0.95 * len(pairs), f"{halves} of {len(pairs)} second-GPU powers are half the first's"
    assert all(50 < a.power_w < 800 for a, _ in pairs)
    # Every counter value of the second GPU is half (rounded) of one the trace holds, the first's the trace's own.
    records = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    trace_counters = {record["energy_mj"] for record in records}
    assert {r.energy_mj for r in counters[first]} <= trace_counters
    assert {r.energy_mj for r in counters[second]} <= {round(c / 2) for c in trace_counters}
    span = {uuid: counters[uuid][-1].energy_mj - counters[uuid][0].energy_mj for uuid in (first, second)}
    assert span[first] > 0
    # Over the same span the second counted half the first's energy, up to one trace step (20 ms) at either end.
    assert span[second] == pytest.approx(span[first] / 2, rel=0.15)


def _count_gpu(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(GpuSample)) or 0


def test_replay_specs_and_uuids(h200_trace_dir: Path) -> None:
    assert replay_uuids(1) == [REPLAY_UUID]
    assert replay_uuids(3) == ["GPU-replay-h200-0000", "GPU-replay-h200-0001", "GPU-replay-h200-0002"]
    for bad in (0, -1, 65, 1.5, True, "2"):
        with pytest.raises(ValueError, match="replay GPU count must be a whole number from 1 to 64"):
            replay_uuids(bad)  # type: ignore[arg-type]
    trace = h200_trace_dir / "h200_nvml_trace.jsonl"
    source, reason = open_source(f"replay:{trace}?gpus=3")
    assert reason is None and source is not None
    assert source.gpus == [(0, REPLAY_UUID), (1, "GPU-replay-h200-0001"), (2, "GPU-replay-h200-0002")]
    one, two, three = source.read()
    assert one.power_w is not None and one.power_w > 50
    assert (two.power_w, three.power_w) == (pytest.approx(one.power_w / 2), pytest.approx(one.power_w / 3))
    assert one.energy_mj is not None and three.energy_mj == round(one.energy_mj / 3)
    assert (two.temperature_c, two.sm_clock_mhz) == (one.temperature_c, one.sm_clock_mhz)
    source.close()
    single, _ = open_source(f"replay:{trace}")
    assert single is not None and single.gpu_uuids == [REPLAY_UUID]
    # A fleet host playing GPUs 2 and 3 of the numbering: their UUIDs and scales, NVML indices 0 and 1 there.
    later, _ = open_source(f"replay:{trace}?gpus=2&first=2")
    assert later is not None and later.gpus == [(0, "GPU-replay-h200-0002"), (1, "GPU-replay-h200-0003")]
    third, fourth = later.read()
    assert third.power_w == pytest.approx(one.power_w / 3, rel=0.5) and fourth.gpu_index == 1
    assert third.energy_mj is not None and fourth.energy_mj == pytest.approx(third.energy_mj * 3 / 4, abs=1)
    later.close()
    for spec, says in (
        (f"replay:{trace}?gpu=2", "only gpus=N and first=F are understood"),
        (f"replay:{trace}?gpus=two", "only gpus=N and first=F are understood"),
        (f"replay:{trace}?gpus=2&first=-1", "only gpus=N and first=F are understood"),
        (f"replay:{trace}?gpus=0", "gpus must be from 1 to 64"),
        (f"replay:{trace}?gpus=99", "gpus must be from 1 to 64"),
        (f"replay:{trace}?gpus=4&first=61", "first \\+ gpus must be at most 64"),
    ):
        with pytest.raises(ValueError, match=says):
            open_source(spec)
