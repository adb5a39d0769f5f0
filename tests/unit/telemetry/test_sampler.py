"""The GPU sampler against a fake pynvml standing in for the hardware: a lost GPU is named once and the others
keep being sampled; the ~4 ms energy counter of 8 GPUs never starves a 10 ms loop; counter rows carry the time
they were read."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pynvml
import pytest

from lem_telemetry.sampler import GpuSampler, run_on_schedule
from lem_telemetry.sources import GpuReading, NvmlSource, open_source


class FakeNvml:
    """``gpus`` fake GPUs; any in ``lost`` answer every call with GPU_IS_LOST (as NVML does for a GPU that fell
    off the bus); an energy-counter read takes ``energy_cost_s`` (sleeping, like the real call in the driver)."""

    def __init__(self, gpus: int, energy_cost_s: float = 0.0) -> None:
        self.gpus = gpus
        self.energy_cost_s = energy_cost_s
        self.lost: set[int] = set()
        self.energy_reads: list[tuple[int, float, float]] = []  # (gpu, started, ended)
        self._energy = [1_000_000] * gpus

    def _check(self, handle: int) -> None:
        if handle in self.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def field(value: object) -> object:
            def read(handle: int, *args: object) -> object:
                self._check(handle)
                return value

            return read

        def energy(handle: int) -> int:
            self._check(handle)
            started = time.time()
            time.sleep(self.energy_cost_s)
            self._energy[handle] += 17
            self.energy_reads.append((handle, started, time.time()))
            return self._energy[handle]

        def handle_by_uuid(uuid: bytes | str) -> int:
            handle = int(str(uuid).rsplit("-", 1)[1].rstrip("'"))
            self._check(handle)
            return handle

        patches = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": lambda: self.gpus,
            "nvmlDeviceGetHandleByIndex": lambda index: index,
            "nvmlDeviceGetHandleByUUID": handle_by_uuid,
            "nvmlDeviceGetIndex": lambda handle: handle,
            "nvmlDeviceGetUUID": lambda handle: f"GPU-fake-{handle}",
            "nvmlDeviceGetPowerUsage": field(150_000),
            "nvmlDeviceGetTotalEnergyConsumption": energy,
            "nvmlDeviceGetTemperature": field(40),
            "nvmlDeviceGetClockInfo": field(1980),
            "nvmlDeviceGetCurrentClocksEventReasons": field(0),
            "nvmlDeviceGetMemoryInfo": field(SimpleNamespace(used=2**30)),
            "nvmlDeviceGetUtilizationRates": field(SimpleNamespace(gpu=50, memory=20)),
        }
        for name, fake in patches.items():
            monkeypatch.setattr(pynvml, name, fake)


class Collector:
    def __init__(self) -> None:
        self.readings: list[GpuReading] = []
        self._lock = threading.Lock()

    def __call__(self, batch: list[GpuReading]) -> None:
        with self._lock:
            self.readings.extend(batch)

    def fast(self, uuid: str, after: float = 0.0, before: float = float("inf")) -> list[GpuReading]:
        with self._lock:
            return [r for r in self.readings if r.gpu_uuid == uuid and r.power_w is not None and after <= r.t < before]

    def counter(self, uuid: str) -> list[GpuReading]:
        with self._lock:
            return [r for r in self.readings if r.gpu_uuid == uuid and r.energy_mj is not None]


def _run(sampler: GpuSampler, interval_s: float, stop: threading.Event) -> tuple[threading.Thread, list[tuple]]:
    result: list[tuple] = []
    sampler.start_energy_threads()
    thread = threading.Thread(target=lambda: result.append(run_on_schedule(interval_s, stop, sampler.sample, "t")))
    thread.start()
    return thread, result


def test_a_lost_gpu_is_named_once_and_the_other_keeps_being_sampled(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeNvml(gpus=2)
    fake.install(monkeypatch)
    source = NvmlSource()
    source.open()
    collected, stop = Collector(), threading.Event()
    sampler = GpuSampler(source, collected, stop, energy_interval_s=0.02, retry_s=0.05)
    caplog.set_level(logging.INFO, logger="lem_telemetry")
    thread, _ = _run(sampler, 0.01, stop)
    try:
        time.sleep(0.3)
        fake.lost.add(1)
        lost_at = time.time()
        time.sleep(0.5)
        fake.lost.discard(1)
        back_at = time.time()
        time.sleep(0.4)
    finally:
        stop.set()
        thread.join()
        sampler.join()
    # GPU 0 never stopped; GPU 1 gave nothing while lost (after the read in flight), and came back.
    assert len(collected.fast("GPU-fake-0", lost_at + 0.05, back_at)) >= 0.6 * (back_at - lost_at) / 0.01
    assert collected.fast("GPU-fake-1", lost_at + 0.05, back_at) == []
    assert len(collected.fast("GPU-fake-1", back_at + 0.1)) >= 10
    assert len(collected.fast("GPU-fake-1", 0, lost_at)) >= 10
    lost = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(lost) == 1, lost
    assert "GPU GPU-fake-1 (index 1) cannot be read: GPU is lost" in lost[0]
    back = [r.getMessage() for r in caplog.records if "is back" in r.getMessage()]
    assert len(back) == 1 and "GPU-fake-1 (index 1)" in back[0]
    assert not any("GPU-fake-0" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    # The energy thread of the lost GPU paused too, and resumed.
    counter_times = [r.t for r in collected.counter("GPU-fake-1")]
    assert not [t for t in counter_times if lost_at + 0.05 < t < back_at]
    assert any(t > back_at + 0.1 for t in counter_times)


def test_eight_gpus_at_10_ms_with_a_4_ms_energy_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(gpus=8, energy_cost_s=0.004)
    fake.install(monkeypatch)
    source = NvmlSource()
    source.open()
    collected, stop = Collector(), threading.Event()
    sampler = GpuSampler(source, collected, stop, energy_interval_s=0.1, retry_s=1.0)
    costs = sampler.measure_energy_read_cost(reads=2)
    assert all(cost is not None and 0.003 < cost < 0.05 for cost in costs)
    fake.energy_reads.clear()
    started = time.time()
    thread, result = _run(sampler, 0.01, stop)
    time.sleep(1.0)
    stop.set()
    thread.join()
    sampler.join()
    ended = time.time()
    ticks, missed = result[0]
    # Every GPU has a fast reading on (almost) every 10 ms tick, although 8 counter reads cost 32 ms a round.
    assert missed <= 5 and ticks >= 90
    for index in range(8):
        fast = collected.fast(f"GPU-fake-{index}")
        assert len(fast) == ticks and all(r.energy_mj is None for r in fast)
        counter = collected.counter(f"GPU-fake-{index}")
        assert 8 <= len(counter) <= 12 and all(r.power_w is None and r.temperature_c is None for r in counter)
    # Each counter row is stamped inside the read that produced it (the middle of it), never later.
    for reading in collected.readings:
        if reading.energy_mj is not None:
            assert started <= reading.t <= ended
    spans = sorted((start, end) for _, start, end in fake.energy_reads)
    stamps = sorted(r.t for r in collected.readings if r.energy_mj is not None)
    assert all(any(start <= t <= end for start, end in spans) for t in stamps)


def test_a_gpu_lost_before_start_is_named_and_the_others_are_sampled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeNvml(gpus=3)
    fake.install(monkeypatch)

    def uuid(handle: int) -> str:
        fake._check(handle)
        return f"GPU-fake-{handle}"

    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", uuid)
    fake.lost.add(1)
    source, reason = open_source("nvml")
    assert isinstance(source, NvmlSource) and reason is None
    assert source.gpus == [(0, "GPU-fake-0"), (2, "GPU-fake-2")]
    assert source.unavailable_at_open and source.unavailable_at_open[0][0] == 1
    fake.lost.update({0, 2})
    source.close()
    source, reason = open_source("nvml")
    assert source is None and reason is not None and "GPU index 0" in reason and "no readable GPU" in reason
