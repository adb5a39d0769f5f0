"""The telemetry daemon's own sampling (``NvmlSource`` + ``GpuSampler``) in threads of this process, readings kept in
memory: what the GPU benches compare against. No database, no Redis."""

from __future__ import annotations

import threading
from typing import Any

from lem_shared.measure.energy import Sample
from lem_telemetry.sampler import GpuSampler, run_on_schedule
from lem_telemetry.sources import GpuReading, NvmlSource


class Capture:
    """Fast fields every ``interval_s``, the energy counter in its own thread every ``energy_interval_s``."""

    def __init__(self, interval_s: float = 0.1, energy_interval_s: float = 0.1):
        self.source = NvmlSource()
        self.source.open()
        self.uuid = self.source.gpu_uuids[0]
        self.interval_s = interval_s
        self.readings: list[GpuReading] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        self.sampler = GpuSampler(self.source, self._emit, self._stop, energy_interval_s=energy_interval_s, retry_s=5.0)
        self._thread: threading.Thread | None = None
        self.ticks = self.missed = 0

    def _emit(self, batch: list[GpuReading]) -> None:
        with self._lock:
            self.readings.extend(batch)

    def start(self) -> Capture:
        self.sampler.start_energy_threads()

        def loop() -> None:
            self.ticks, self.missed = run_on_schedule(self.interval_s, self._stop, self.sampler.sample, "capture")

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self.sampler.join()

    def snapshot(self) -> list[GpuReading]:
        with self._lock:
            return sorted(self.readings, key=lambda r: r.t)

    def samples(self) -> list[Sample]:
        return [Sample(r.t, r.energy_mj, r.power_w, r.power_instant_w) for r in self.snapshot()]

    def trace_records(self, t_min: float = 0.0) -> list[dict[str, Any]]:
        """The readings in the trace format of tests/data/h200 (``lem energy analyse`` and the replay read it)."""
        out = []
        for r in self.snapshot():
            if r.t < t_min:
                continue
            record: dict[str, Any] = {"t": r.t}
            for key, value in (
                ("power_mw", r.power_w),
                ("power_instant_mw", r.power_instant_w),
                ("power_memory_mw", r.power_memory_w),
                ("power_module_mw", r.power_module_w),
            ):
                if value is not None:
                    record[key] = round(value * 1000)
            for key, value in (
                ("energy_mj", r.energy_mj),
                ("temp_c", r.temperature_c),
                ("sm_mhz", r.sm_clock_mhz),
                ("mem_mhz", r.mem_clock_mhz),
                ("reasons", r.clock_event_reasons),
                ("mem_used_b", r.memory_used_bytes),
                ("util_gpu", r.utilization_gpu),
                ("util_mem", r.utilization_memory),
            ):
                if value is not None:
                    record[key] = value
            out.append(record)
        return out
