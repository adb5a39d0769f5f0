"""The telemetry daemon: samples the GPUs and the host on a drift-free schedule and writes them in batches.

Sampling runs in the calling thread; a writer thread flushes the buffers every ``telemetry_flush_s``, so a
slow or absent database never delays a sample. Without a GPU source the daemon records host samples only.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time

import pynvml
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError, SQLAlchemyError

from lem_shared.db.session import engine_for
from lem_shared.settings import Settings
from lem_telemetry.buffer import SampleBuffer
from lem_telemetry.environment_record import record_host_environment_in_background
from lem_telemetry.sources import GpuReading, GpuSource, HostReading, NvmlSource, host_reading, open_source
from lem_telemetry.store import gpu_rows, host_rows, write_samples

log = logging.getLogger(__name__)

# While the database is away, samples are kept in memory for this long, then the oldest are dropped.
BUFFER_SECONDS = 3600.0
# Host figures are context, not the energy figure, and cpu_percent over a window much shorter than a
# second is mostly scheduler noise; 1 Hz keeps host_samples small and still shows what the host did.
HOST_MIN_INTERVAL_S = 1.0


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
        self._engine = engine_for(settings.database_url)
        self._source_name = "none"
        self._gpu_buffer: SampleBuffer[GpuReading] = SampleBuffer(1)
        self._host_buffer: SampleBuffer[HostReading] = SampleBuffer(math.ceil(BUFFER_SECONDS / self.host_interval_s))
        self._database_away = False
        self._source_failing = False

    def run(self) -> int:
        """Sample until ``stop_event`` is set, then write what is left; returns the process exit code."""
        record_host_environment_in_background(self._engine)
        source, reason = open_source(self.settings.telemetry_source)
        if source is None:
            log.warning("no GPU telemetry on %s: %s; recording host samples only", self.host, reason)
        else:
            self._prepare_for(source)
        writer = threading.Thread(target=self._flush_periodically, name="telemetry-writer", daemon=True)
        writer.start()
        exit_code = 0
        try:
            self._sample_until_stopped(source)
        except Exception:
            log.exception("the sampling loop failed")
            exit_code = 1
        finally:
            self.stop_event.set()
            writer.join()
            self.flush()
            if source is not None:
                source.close()
        unwritten = len(self._gpu_buffer) + len(self._host_buffer)
        if unwritten:
            log.error("exiting with %d samples unwritten: the database is unavailable", unwritten)
        log.info("stopped after %d ticks (%d missed)", self.ticks, self.missed_ticks)
        return exit_code

    def _prepare_for(self, source: GpuSource) -> None:
        self._source_name = source.name
        uuids = source.gpu_uuids
        capacity = math.ceil(BUFFER_SECONDS / self.settings.telemetry_interval_s) * max(len(uuids), 1)
        self._gpu_buffer = SampleBuffer(capacity)
        log.info(
            "sampling %s (%s) on %s every %.3g s, host every %.3g s, writing every %.3g s",
            ", ".join(uuids), source.name, self.host, self.settings.telemetry_interval_s,
            self.host_interval_s, self.settings.telemetry_flush_s,
        )  # fmt: skip
        if isinstance(source, NvmlSource):
            self._log_energy_read_cost(source)

    def _log_energy_read_cost(self, source: NvmlSource) -> None:
        try:
            cost = source.measure_energy_read_cost()
        except pynvml.NVMLError as error:
            log.warning("the energy counter cannot be read (%s): GPU energy will be absent", error)
            return
        per_tick = cost * len(source.gpu_uuids)
        log.info("one energy counter read costs %.2f ms; all GPUs take %.1f ms a tick", cost * 1e3, per_tick * 1e3)
        if per_tick > 0.5 * self.settings.telemetry_interval_s:
            log.warning("reading the energy counters takes over half of each tick (%.1f ms)", per_tick * 1e3)

    def _sample_until_stopped(self, source: GpuSource | None) -> None:
        # Tick k is due at start + k * interval, so the schedule does not drift with the time a read takes.
        interval = self.settings.telemetry_interval_s if source is not None else self.host_interval_s
        start = time.monotonic()
        # The first host sample waits one host interval, so its cpu_percent covers a real window.
        next_host_due = start + self.host_interval_s
        tick = 0
        while not self.stop_event.is_set():
            if source is not None:
                self._read_gpus(source)
            now = time.monotonic()
            if now >= next_host_due:
                self._host_buffer.add([host_reading()])
                next_host_due = start + (math.floor((now - start) / self.host_interval_s) + 1) * self.host_interval_s
            self.ticks += 1
            tick = self._next_tick(start, tick, interval)
            delay = start + tick * interval - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)

    def _next_tick(self, start: float, tick: int, interval: float) -> int:
        """The next tick to run: the one after ``tick``, or the latest one already due if we fell behind."""
        due = tick + 1
        latest = math.floor((time.monotonic() - start) / interval)
        if latest > due:
            if self.missed_ticks == 0:
                log.warning("sampling fell behind its %.3g s schedule; skipping missed ticks", interval)
            self.missed_ticks += latest - due
            due = latest
        return due

    def _read_gpus(self, source: GpuSource) -> None:
        try:
            readings = source.read()
        except Exception:  # a failing source must not stop the host samples or the daemon
            if not self._source_failing:
                log.exception("reading %s failed; retrying every tick", source.name)
            self._source_failing = True
            return
        if self._source_failing:
            log.info("reading %s works again", source.name)
            self._source_failing = False
        self._gpu_buffer.add(readings)

    def _flush_periodically(self) -> None:
        while not self.stop_event.wait(self.settings.telemetry_flush_s):
            self.flush()

    def flush(self) -> bool:
        """Write everything buffered; on a database outage keep it for the next flush. True when written."""
        gpu = self._gpu_buffer.take_all()
        hosts = self._host_buffer.take_all()
        if not gpu and not hosts:
            return True
        try:
            write_samples(self._engine, gpu_rows(gpu, self.host, self._source_name), host_rows(hosts, self.host))
        except (OperationalError, InterfaceError, ProgrammingError) as error:
            # Unreachable, or reachable but not migrated yet (telemetry may start before the migrations run).
            self._gpu_buffer.put_back(gpu)
            self._host_buffer.put_back(hosts)
            if not self._database_away:
                log.warning(
                    "database unavailable (%s); keeping samples in memory (up to %.0f s) and retrying",
                    _first_line(error), BUFFER_SECONDS,
                )  # fmt: skip
            self._database_away = True
            return False
        except SQLAlchemyError:
            # Not an outage (bad data, say): retrying the same rows would fail forever, so they are dropped.
            log.exception("writing %d GPU and %d host samples failed; dropping them", len(gpu), len(hosts))
            return False
        if self._database_away:
            dropped = self._gpu_buffer.dropped + self._host_buffer.dropped
            log.info("database reachable again; wrote %d kept samples (%d dropped)", len(gpu) + len(hosts), dropped)
            self._database_away = False
        return True
