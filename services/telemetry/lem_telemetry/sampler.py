"""Sampling the GPUs: the fast pass over every GPU, one energy-counter thread per GPU, and lost GPUs.

Cadences (DESIGN §6). The cheap NVML fields (power, temperature, clocks, clock-event reasons, memory,
utilisation) cost microseconds; ``GpuSampler.sample()`` reads them for every GPU on each tick of the daemon's
``telemetry_interval_s`` schedule (down to 10 ms). The energy counter costs about 4 ms a read and only changes
every ~100 ms, so it never runs in that loop: each GPU has a thread of its own that reads its counter every
``telemetry_energy_interval_s`` and emits a *counter row* stamped with the middle of that read. Fast rows
carry ``energy_mj = None``; counter rows carry only the counter (every other field None). So every stored
counter value was read at (within ±2 ms of) its stored time, and no stale value is ever re-stamped.

A GPU whose reads fail (GPU_IS_LOST, ...) is named once in the log, skipped while the others are sampled,
retried every ``retry_s``, and announced when it is back.

No database or Redis code here: this module runs wherever ``sources`` runs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from lem_telemetry.sources import GpuReading, GpuSource, GpuUnavailable

log = logging.getLogger(__name__)


def run_on_schedule(
    interval_s: float, stop: threading.Event, step: Callable[[], None], what: str, offset_s: float = 0.0
) -> tuple[int, int]:
    """Call ``step`` at start + offset + k * interval until ``stop`` is set, so the schedule never drifts with the
    time a step takes; ticks already past when a step ends are skipped (logged once). Returns (ticks, missed)."""
    if offset_s > 0 and stop.wait(offset_s):
        return 0, 0
    start = time.monotonic()
    tick = ticks = missed = 0
    while not stop.is_set():
        step()
        ticks += 1
        due = tick + 1
        latest = math.floor((time.monotonic() - start) / interval_s)
        if latest > due:
            if missed == 0:
                log.warning("%s fell behind its %.3g s schedule; skipping missed ticks", what, interval_s)
            missed += latest - due
            due = latest
        tick = due
        delay = start + tick * interval_s - time.monotonic()
        if delay > 0:
            stop.wait(delay)
    return ticks, missed


class GpuHealth:
    """Whether one GPU can be read; shared by the fast pass and that GPU's energy thread."""

    def __init__(self, index: int, uuid: str) -> None:
        self.index = index
        self.uuid = uuid
        self.lost = False
        self.lost_since = 0.0
        self.retry_at = 0.0
        self._lock = threading.Lock()

    def mark_lost(self, retry_s: float) -> bool:
        """True when this call is the one that found the GPU lost (the caller logs it)."""
        with self._lock:
            if self.lost:
                return False
            self.lost = True
            self.lost_since = time.monotonic()
            self.retry_at = self.lost_since + retry_s
            return True

    def mark_back(self) -> float | None:
        """Seconds it was lost, when this call is the one that found it back; else None."""
        with self._lock:
            if not self.lost:
                return None
            self.lost = False
            return time.monotonic() - self.lost_since


def counter_reading(uuid: str, index: int, t: float, energy_mj: int) -> GpuReading:
    """A counter row: the energy counter and when it was read, no other field."""
    return GpuReading(uuid, index, t, None, energy_mj, None, None, None, None, None, None, None)


class GpuSampler:
    """Reads every GPU of ``source``; hands each batch of readings to ``emit`` (which must be thread-safe)."""

    def __init__(
        self,
        source: GpuSource,
        emit: Callable[[list[GpuReading]], None],
        stop: threading.Event,
        energy_interval_s: float,
        retry_s: float,
    ) -> None:
        self.source = source
        self.emit = emit
        self.stop = stop
        self.energy_interval_s = energy_interval_s
        self.retry_s = retry_s
        self.health = [GpuHealth(index, uuid) for index, uuid in source.gpus]
        # The newest fast reading of each GPU (for the heartbeat); replaced whole, so reading it needs no lock.
        self.latest: dict[str, GpuReading] = {}
        self.energy_ticks = 0
        self.energy_missed = 0
        self._threads: list[threading.Thread] = []
        self._no_counter: set[str] = set()

    # -- the fast pass -------------------------------------------------------------------------------------

    def sample(self) -> list[GpuReading]:
        """One reading of every readable GPU (cheap fields only); lost GPUs are retried when due."""
        batch = []
        now = time.monotonic()
        for position, health in enumerate(self.health):
            if health.lost:
                if now < health.retry_at:
                    continue
                if not self._recovered(position, health, now):
                    continue
            try:
                reading = self.source.read_gpu(position)
            except Exception as error:  # one GPU failing must not stop the others
                self._lost(health, error)
                continue
            batch.append(reading)
            self.latest[health.uuid] = reading
        if batch:
            self.emit(batch)
        return batch

    def _recovered(self, position: int, health: GpuHealth, now: float) -> bool:
        try:
            self.source.recover(position)
        except Exception:  # still gone: try again later, quietly
            health.retry_at = now + self.retry_s
            return False
        health.index = self.source.gpus[position][0]
        lost_for = health.mark_back()
        if lost_for is not None:
            log.info("GPU %s (index %d) is back after %.1f s; sampling it again", health.uuid, health.index, lost_for)
        return True

    def _lost(self, health: GpuHealth, error: Exception) -> None:
        if health.mark_lost(self.retry_s):
            log.error(
                "GPU %s (index %d) cannot be read: %s; sampling the other GPUs and retrying it every %.3g s",
                health.uuid, health.index, error or type(error).__name__, self.retry_s,
                exc_info=not isinstance(error, GpuUnavailable),
            )  # fmt: skip

    # -- energy counters -----------------------------------------------------------------------------------

    def measure_energy_read_cost(self, reads: int = 5) -> list[float | None]:
        """Seconds per energy-counter read for each GPU (None where it cannot be read), timed now."""
        costs: list[float | None] = []
        for position, health in enumerate(self.health):
            try:
                started = time.perf_counter()
                for _ in range(reads):
                    self.source.read_energy(position)
                costs.append((time.perf_counter() - started) / reads)
            except Exception as error:
                self._lost(health, error)
                costs.append(None)
        return costs

    def start_energy_threads(self) -> None:
        """One thread per GPU, their schedules spread evenly over the interval: NVML serialises calls (seen on
        the H200: a power read waits behind a counter read in flight), so counter reads that all fired at once
        would hold the fast pass up for n x 4 ms; spread out, it waits at most for one."""
        spread = self.energy_interval_s / max(len(self.health), 1)
        for position, health in enumerate(self.health):
            thread = threading.Thread(
                target=self._read_counter_until_stopped, args=(position, position * spread),
                name=f"energy-{health.uuid}", daemon=True,
            )  # fmt: skip
            thread.start()
            self._threads.append(thread)

    def join(self, timeout_s: float = 5.0) -> None:
        for thread in self._threads:
            thread.join(timeout_s)

    def _read_counter_until_stopped(self, position: int, offset_s: float) -> None:
        health = self.health[position]
        ticks, missed = run_on_schedule(
            self.energy_interval_s, self.stop, lambda: self._read_counter(position, health),
            f"reading the energy counter of GPU {health.uuid}", offset_s,
        )  # fmt: skip
        self.energy_ticks += ticks
        self.energy_missed += missed

    def _read_counter(self, position: int, health: GpuHealth) -> None:
        if health.lost:  # the fast pass retries it; this thread resumes when it is back
            return
        before = time.time()
        try:
            value = self.source.read_energy(position)
        except Exception as error:
            self._lost(health, error)
            return
        after = time.time()
        if value is None:
            if health.uuid not in self._no_counter:
                self._no_counter.add(health.uuid)
                log.warning(
                    "GPU %s (index %d) gives no energy counter reading; its energy will be absent",
                    health.uuid,
                    health.index,
                )
            return
        if health.uuid in self._no_counter:
            self._no_counter.discard(health.uuid)
            log.info("GPU %s (index %d) gives energy counter readings again", health.uuid, health.index)
        self.emit([counter_reading(health.uuid, health.index, (before + after) / 2, value)])
