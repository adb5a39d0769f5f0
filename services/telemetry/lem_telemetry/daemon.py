"""The telemetry daemon: samples the GPUs and the host on drift-free schedules and writes them in batches.

Threads (see ``sampler`` for why the energy counter has its own):
- the sampling loop (the caller's thread): every ``telemetry_interval_s`` (down to 10 ms) the cheap fields of
  every GPU, and host figures once a second;
- one energy-counter thread per GPU: the counter every ``telemetry_energy_interval_s``, as rows of its own;
- the RAPL thread (``host_energy``), where the host's powercap tree (``powercap_root``) has readable RAPL: CPU
  package and DRAM counters at the same cadence, into ``host_energy_samples``; its status (available, absent,
  no_permission, error) is logged once and published in the host heartbeat;
- the writer: every ``telemetry_flush_s`` everything buffered (GPU, host and RAPL rows), in one transaction
  (COPY on PostgreSQL). When the database is away the batch spills to the disk buffer (``spill``), and the
  files are back-filled oldest first, before anything newer, once it answers again. Stopping with the database
  away spills what is left, so the next start back-fills it. Every ``CLOCK_CHECK_S`` it also records this host's
  clock offset from the database's (``clock_offsets``), by which the finaliser joins runs to samples;
- the heartbeat: one beacon per GPU and one for the host every ``telemetry_heartbeat_s``, with a lifetime.

A slow or absent database or Redis never delays a sample. Without a GPU source only host samples (and RAPL)
are recorded.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError, SQLAlchemyError

from lem_shared.db.clock import CLOCK_CHECK_S, CLOCK_WARN_S
from lem_shared.settings import Settings
from lem_shared.wire.heartbeat import beacons
from lem_telemetry.buffer import SampleBuffer
from lem_telemetry.environment_record import record_host_environment_in_background
from lem_telemetry.heartbeats import HeartbeatPublisher
from lem_telemetry.host_energy import HostEnergyReading, RaplSampler
from lem_telemetry.sampler import GpuSampler, run_on_schedule
from lem_telemetry.sources import GpuReading, GpuSource, HostReading, NvmlSource, host_reading, open_source
from lem_telemetry.spill import DiskBuffer, count_rows, folder_for
from lem_telemetry.store import (
    gpu_rows,
    host_energy_rows,
    host_rows,
    telemetry_engine,
    write_clock_offset,
    write_samples,
)

log = logging.getLogger(__name__)

# The writer takes the in-memory buffer every flush and spills what it cannot write, so memory only has to
# hold samples while one write call is stuck; past this many seconds of them the oldest are dropped.
MEMORY_SECONDS = 600.0
# Host figures are context, not the energy figure, and cpu_percent over a window much shorter than a
# second is mostly scheduler noise; 1 Hz keeps host_samples small and still shows what the host did.
HOST_MIN_INTERVAL_S = 1.0
# One flush back-fills disk files for at most this long (newer samples wait on disk meanwhile, in order).
BACKFILL_BUDGET_S = 5.0
OUTAGE_ERRORS = (OperationalError, InterfaceError, ProgrammingError)
# How long stopping waits for the writer and heartbeat threads (a write may sit in a 5 s connect timeout).
JOIN_TIMEOUT_S = 10.0


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class TelemetryDaemon:
    def __init__(self, settings: Settings, stop_event: threading.Event) -> None:
        self.settings = settings
        self.stop_event = stop_event
        self.host = socket.gethostname()
        self.host_interval_s = max(settings.telemetry_interval_s, HOST_MIN_INTERVAL_S)
        self.ticks = 0
        self.missed_ticks = 0
        self._engine = telemetry_engine(settings.database_url)
        self._source_name = "none"
        self._sampler: GpuSampler | None = None
        self._gpu_buffer: SampleBuffer[GpuReading] = SampleBuffer(1)
        self._host_buffer: SampleBuffer[HostReading] = SampleBuffer(math.ceil(MEMORY_SECONDS / self.host_interval_s))
        self._latest_host: HostReading | None = None
        # Each RAPL read gives a row per summed domain: room for a few packages' worth.
        self._host_energy_buffer: SampleBuffer[HostEnergyReading] = SampleBuffer(
            math.ceil(MEMORY_SECONDS / settings.telemetry_energy_interval_s) * 8
        )
        self._rapl: RaplSampler | None = None
        buffer_root = Path(os.path.expanduser(settings.telemetry_buffer_dir))
        self.disk = DiskBuffer(
            buffer_root / folder_for(settings.database_url), int(settings.telemetry_buffer_max_mb * 1e6)
        )
        self._database_away = False
        self._disk_failing = False
        self._spilled = 0
        self._backfilled = 0
        self._flush_lock = threading.Lock()
        self._clock_checked_at = -math.inf

    def run(self) -> int:
        """Sample until ``stop_event`` is set, then write (or spill) what is left; returns the exit code."""
        record_host_environment_in_background(self._engine)
        source, reason = open_source(self.settings.telemetry_source)
        if source is None:
            log.warning("no GPU telemetry on %s: %s; recording host samples only", self.host, reason)
        else:
            self._prepare_for(source)
        rapl = RaplSampler(
            Path(self.settings.powercap_root), self._host_energy_buffer.add, self.stop_event,
            self.settings.telemetry_energy_interval_s,
        )  # fmt: skip
        self._rapl = rapl
        self._announce_backlog()
        heartbeats = HeartbeatPublisher(
            beacons(settings=self.settings), self.host, self._source_name, self._sampler, lambda: self._latest_host,
            self.settings.telemetry_heartbeat_s, self.settings.telemetry_heartbeat_ttl_s, note=reason,
            rapl=lambda: (rapl.status, rapl.message),
        )  # fmt: skip
        threads = [
            threading.Thread(target=self._flush_periodically, name="telemetry-writer", daemon=True),
            threading.Thread(target=heartbeats.run, args=(self.stop_event,), name="telemetry-heartbeat", daemon=True),
        ]
        for thread in threads:
            thread.start()
        if self._sampler is not None:
            self._sampler.start_energy_threads()
        rapl.start()
        exit_code = 0
        try:
            self._sample_until_stopped()
        except Exception:
            log.exception("the sampling loop failed")
            exit_code = 1
        finally:
            self.stop_event.set()
            if self._sampler is not None:
                self._sampler.join()
            rapl.join()
            for thread in threads:
                thread.join(JOIN_TIMEOUT_S)
            self._final_flush()
            if source is not None:
                source.close()
        energy = ""
        if self._sampler is not None:
            energy = f"; energy counters read {self._sampler.energy_ticks} times ({self._sampler.energy_missed} missed)"
        if rapl.available:
            resets = ", ".join(f"{domain} {count}" for domain, count in sorted(rapl.resets.items()))
            energy += f"; RAPL read {rapl.ticks} times ({rapl.missed} missed, resets: {resets or 'none'})"
        log.info("stopped after %d ticks (%d missed)%s", self.ticks, self.missed_ticks, energy)
        return exit_code

    # -- start-up ------------------------------------------------------------------------------------------

    def _prepare_for(self, source: GpuSource) -> None:
        self._source_name = source.name
        settings = self.settings
        rows_per_gpu = MEMORY_SECONDS * (1 / settings.telemetry_interval_s + 1 / settings.telemetry_energy_interval_s)
        self._gpu_buffer = SampleBuffer(math.ceil(rows_per_gpu) * max(len(source.gpus), 1))
        self._sampler = GpuSampler(
            source,
            self._gpu_buffer.add,
            self.stop_event,
            settings.telemetry_energy_interval_s,
            settings.telemetry_gpu_retry_s,
        )
        log.info(
            "sampling %s (%s) on %s every %.3g s, energy counters every %.3g s (a thread per GPU), "
            "host every %.3g s, writing every %.3g s",
            ", ".join(f"{uuid} (index {index})" for index, uuid in source.gpus), source.name, self.host,
            settings.telemetry_interval_s, settings.telemetry_energy_interval_s, self.host_interval_s,
            settings.telemetry_flush_s,
        )  # fmt: skip
        if isinstance(source, NvmlSource):
            for index, why in source.unavailable_at_open:
                log.error("GPU index %d cannot be read (%s); sampling the other GPUs", index, why)
        self._log_energy_read_cost(self._sampler)

    def _log_energy_read_cost(self, sampler: GpuSampler) -> None:
        costs = sampler.measure_energy_read_cost()
        interval = self.settings.telemetry_energy_interval_s
        for health, cost in zip(sampler.health, costs, strict=True):
            if cost is None:
                continue
            log.info(
                "energy counter of GPU %s (index %d): one read costs %.2f ms (read every %.3g s, own thread)",
                health.uuid,
                health.index,
                cost * 1e3,
                interval,
            )
            if cost > 0.5 * interval:
                log.warning(
                    "reading the energy counter of GPU %s takes over half its %.3g s interval (%.1f ms)",
                    health.uuid,
                    interval,
                    cost * 1e3,
                )

    def _announce_backlog(self) -> None:
        self.disk.remove_stale_temporaries()
        pending = self.disk.pending()
        if pending:
            log.info(
                "%d disk-buffer files (%.1f MB) from an earlier run wait in %s; back-filling them first",
                len(pending),
                self.disk.size_bytes() / 1e6,
                self.disk.directory,
            )

    # -- sampling ------------------------------------------------------------------------------------------

    def _sample_until_stopped(self) -> None:
        interval = self.settings.telemetry_interval_s if self._sampler is not None else self.host_interval_s
        # The first host sample waits one host interval, so its cpu_percent covers a real window.
        self._next_host_due = time.monotonic() + self.host_interval_s
        self.ticks, self.missed_ticks = run_on_schedule(interval, self.stop_event, self._tick, "sampling")

    def _tick(self) -> None:
        if self._sampler is not None:
            self._sampler.sample()
        now = time.monotonic()
        if now >= self._next_host_due:
            reading = host_reading()
            self._latest_host = reading
            self._host_buffer.add([reading])
            self._next_host_due += self.host_interval_s * max(
                1, math.ceil((now - self._next_host_due) / self.host_interval_s)
            )

    # -- writing -------------------------------------------------------------------------------------------

    def _flush_periodically(self) -> None:
        while not self.stop_event.wait(self.settings.telemetry_flush_s):
            try:
                self.flush()
            except Exception:  # the writer must outlive any one bad flush; its rows went to disk first
                log.exception("a flush failed unexpectedly; the writer goes on")

    def _take(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        gpu = gpu_rows(self._gpu_buffer.take_all(), self.host, self._source_name)
        hosts = host_rows(self._host_buffer.take_all(), self.host)
        return gpu, hosts, host_energy_rows(self._host_energy_buffer.take_all(), self.host)

    def flush(self) -> bool:
        """Write everything buffered, after any back-log on disk; spill it to disk when the database is away.
        True when nothing is left waiting."""
        with self._flush_lock:
            gpu, hosts, energy = self._take()
            if self.disk.pending():
                # Older samples wait on disk: these go behind them, so the database fills in time order.
                if (gpu or hosts or energy) and not self._spill(gpu, hosts, energy):
                    return False
                return self._backfill(BACKFILL_BUDGET_S)
            if not gpu and not hosts and not energy:
                return True
            try:
                write_samples(self._engine, gpu, hosts, host_energy=energy)
            except OUTAGE_ERRORS as error:
                self._away(error)
                self._spill(gpu, hosts, energy)
                return False
            except SQLAlchemyError as error:
                # Not an outage (bad data, say): retrying would fail forever; keep the rows aside for a person.
                log.exception("writing %d GPU, %d host and %d RAPL samples failed", len(gpu), len(hosts), len(energy))
                self._quarantine(gpu, hosts, energy, _first_line(error))
                return True
            except Exception:
                self._spill(gpu, hosts, energy)  # kept on disk, retried next flush
                raise
            self._reachable()
            self._check_clock()
            return True

    def _check_clock(self) -> None:
        """Every CLOCK_CHECK_S, this host's clock offset from the database's, into clock_offsets."""
        if time.monotonic() - self._clock_checked_at < CLOCK_CHECK_S:
            return
        self._clock_checked_at = time.monotonic()
        try:
            reading = write_clock_offset(self._engine, self.host)
        except SQLAlchemyError as error:
            log.warning("clock offset not recorded: %s", _first_line(error))
            return
        if abs(reading.offset_s) > CLOCK_WARN_S:
            log.warning(
                "this host's clock is %+.3f s off the database's (round trip %.1f ms): runs on this host are "
                "joined to its samples by that offset; fix its time sync",
                reading.offset_s,
                reading.rtt_s * 1000,
            )

    def _backfill(self, budget_s: float) -> bool:
        """Write disk-buffer files oldest first, deleting each after its commit; True when none is left."""
        deadline = time.monotonic() + budget_s
        for path in self.disk.pending():
            if time.monotonic() > deadline:
                return False
            try:
                gpu, hosts, energy = self.disk.read_tables(path)
            except (OSError, ValueError) as error:
                self.disk.quarantine(path, str(error))
                continue
            try:
                write_samples(self._engine, gpu, hosts, host_energy=energy)
            except OUTAGE_ERRORS as error:
                self._away(error)
                return False
            except SQLAlchemyError as error:
                self.disk.quarantine(path, _first_line(error))
                continue
            self.disk.remove(path)
            self._backfilled += len(gpu) + len(hosts) + len(energy)
            self._reachable()
        if self._backfilled:
            log.info("back-filled %d samples from the disk buffer %s", self._backfilled, self.disk.directory)
            self._backfilled = 0
        return True

    def _spill(self, gpu: list[dict[str, Any]], hosts: list[dict[str, Any]], energy: list[dict[str, Any]]) -> bool:
        try:
            self.disk.write(gpu, hosts, energy)
        except OSError as error:
            # The disk refuses too: keep the readings in memory (bounded) and try again next flush.
            if not self._disk_failing:
                log.error(
                    "cannot write the disk buffer %s (%s); keeping samples in memory (up to %.0f s)",
                    self.disk.directory,
                    error,
                    MEMORY_SECONDS,
                )
                self._disk_failing = True
            self._put_back(gpu, hosts, energy)
            return False
        self._disk_failing = False
        self._spilled += len(gpu) + len(hosts) + len(energy)
        return True

    def _put_back(self, gpu: list[dict[str, Any]], hosts: list[dict[str, Any]], energy: list[dict[str, Any]]) -> None:
        fields = GpuReading.__slots__
        self._gpu_buffer.put_back([
            GpuReading(**{name: row["time"] if name == "t" else row[name] for name in fields}) for row in gpu
        ])  # fmt: skip
        self._host_buffer.put_back([
            HostReading(row["time"], row["cpu_percent"], row["memory_used_bytes"], row["memory_total_bytes"])
            for row in hosts
        ])  # fmt: skip
        self._host_energy_buffer.put_back([
            HostEnergyReading(row["time"], row["domain"], row["energy_j"], row["reset"]) for row in energy
        ])  # fmt: skip

    def _quarantine(
        self, gpu: list[dict[str, Any]], hosts: list[dict[str, Any]], energy: list[dict[str, Any]], reason: str
    ) -> None:
        try:
            path = self.disk.write(gpu, hosts, energy)
            self.disk.quarantine(path, reason)
        except OSError:
            count = len(gpu) + len(hosts) + len(energy)
            log.error("dropping %d samples that the database refused and the disk too", count)

    def _away(self, error: BaseException) -> None:
        # Unreachable, or reachable but not migrated yet (telemetry may start before the migrations run).
        if not self._database_away:
            log.warning(
                "database unavailable (%s); spilling samples to %s and retrying every %.3g s",
                _first_line(error),
                self.disk.directory,
                self.settings.telemetry_flush_s,
            )
        self._database_away = True

    def _reachable(self) -> None:
        if self._database_away:
            log.info(
                "database reachable again after %d samples went to the disk buffer (%d dropped by its bound)",
                self._spilled,
                self.disk.dropped_rows,
            )
            self._database_away = False
            self._spilled = 0

    def _final_flush(self) -> None:
        """On the way out: write what is left; with the database away it waits on disk for the next start."""
        self.flush()
        left = self.disk.pending()
        if left:
            log.warning(
                "stopping with %d samples in %d files in the disk buffer %s; the next start back-fills them",
                sum(count_rows(path) for path in left),
                len(left),
                self.disk.directory,
            )
        unwritten = len(self._gpu_buffer) + len(self._host_buffer) + len(self._host_energy_buffer)
        if unwritten:
            log.error(
                "exiting with %d samples unwritten: neither the database nor the disk buffer took them", unwritten
            )
