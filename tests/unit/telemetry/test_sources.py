"""Telemetry sources: the recorded-H200 replay, NVML field handling (through a fake pynvml), the host."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest

from lem_telemetry import sources
from lem_telemetry.sources import REPLAY_UUID, NvmlSource, ReplaySource, host_reading, open_source


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def trace_path(h200_trace_dir: Path) -> Path:
    return h200_trace_dir / "h200_nvml_trace.jsonl"


@pytest.fixture
def trace(trace_path: Path) -> list[dict]:
    return [json.loads(line) for line in trace_path.read_text().splitlines() if line.strip()]


def test_replay_returns_the_trace_record_at_the_elapsed_offset(trace_path: Path, trace: list[dict]) -> None:
    clock = FakeClock()
    replay = ReplaySource(trace_path, clock=clock)
    replay.open()
    t0 = trace[0]["t"]
    # The matmul burn is recorded about 55-67 s in; pick a record there and ask for a moment just after it.
    record = next(r for r in trace if r["t"] - t0 >= 60.0)
    clock.now += record["t"] - t0 + 0.001
    [reading] = replay.read()
    assert replay.name == "nvml-replay"
    assert (reading.gpu_uuid, reading.gpu_index) == (REPLAY_UUID, 0)
    assert reading.power_w == record["power_mw"] / 1000
    assert reading.energy_mj == record["energy_mj"]
    assert reading.temperature_c == record["temp_c"]
    assert (reading.sm_clock_mhz, reading.mem_clock_mhz) == (record["sm_mhz"], record["mem_mhz"])
    assert reading.clock_event_reasons == record["reasons"]
    assert reading.memory_used_bytes == record["mem_used_b"]
    assert (reading.utilization_gpu, reading.utilization_memory) == (record["util_gpu"], record["util_mem"])


def test_replay_in_real_time_starts_at_the_trace_start(trace_path: Path, trace: list[dict]) -> None:
    replay = ReplaySource(trace_path)
    replay.open()
    time.sleep(0.1)
    [reading] = replay.read()
    first_records = {(r["power_mw"] / 1000, r["energy_mj"], r["sm_mhz"]) for r in trace[:20]}
    assert (reading.power_w, reading.energy_mj, reading.sm_clock_mhz) in first_records


def test_replay_energy_keeps_rising_across_loops(trace_path: Path, trace: list[dict]) -> None:
    clock = FakeClock()
    replay = ReplaySource(trace_path, clock=clock)
    replay.open()
    duration = trace[-1]["t"] - trace[0]["t"]
    energies = []
    while clock.now < 1000.0 + 2.2 * duration:
        energies.append(replay.read()[0].energy_mj)
        clock.now += 0.05
    assert all(b >= a for a, b in zip(energies, energies[1:], strict=False))
    total = trace[-1]["energy_mj"] - trace[0]["energy_mj"]
    assert energies[-1] > trace[0]["energy_mj"] + 2 * total
    # Each loop repeats the trace: power a loop later is the same record's power.
    clock.now = 1000.0 + 10.0
    power_first_loop = replay.read()[0].power_w
    clock.now += duration + duration / (len(trace) - 1)
    assert replay.read()[0].power_w == power_first_loop


def test_replay_readings_carry_the_current_time(trace_path: Path) -> None:
    clock = FakeClock()
    replay = ReplaySource(trace_path, clock=clock)
    replay.open()
    clock.now += 250.0  # well into the third loop
    [reading] = replay.read()
    assert abs(reading.t - time.time()) < 1.0


def test_open_source_nvml_without_nvml_gives_a_reason() -> None:
    source, reason = open_source("nvml")
    if source is not None:
        source.close()
        pytest.skip("this machine has NVML")
    assert reason is not None and "NVML is unavailable" in reason


def test_open_source_replay_and_its_failures(trace_path: Path, tmp_path: Path) -> None:
    source, reason = open_source(f"replay:{trace_path}")
    assert isinstance(source, ReplaySource) and reason is None
    assert source.read()[0].gpu_uuid == REPLAY_UUID
    source, reason = open_source(f"replay:{tmp_path / 'missing.jsonl'}")
    assert source is None and reason is not None and "missing.jsonl" in reason
    with pytest.raises(ValueError, match="unknown telemetry source"):
        open_source("nvidia-smi")


class FakeNvml:
    """Just enough of pynvml for two GPUs; the second one reports power and utilisation as NOT_SUPPORTED."""

    def __init__(self) -> None:
        self.shut_down = False
        self.energy_calls = 0

    def install(self, monkeypatch: pytest.MonkeyPatch, event_reasons: bool = True) -> None:
        def not_supported_on_gpu1(value: object) -> Callable[..., object]:
            def read(handle: int, *args: object) -> object:
                if handle == 1:
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
                return value

            return read

        def energy(handle: int) -> int:
            self.energy_calls += 1
            return 123_456_789

        patches = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: setattr(self, "shut_down", True),
            "nvmlDeviceGetCount": lambda: 2,
            "nvmlDeviceGetHandleByIndex": lambda index: index,
            "nvmlDeviceGetUUID": lambda handle: f"GPU-fake-{handle}".encode(),
            "nvmlDeviceGetPowerUsage": not_supported_on_gpu1(215_250),
            "nvmlDeviceGetTotalEnergyConsumption": energy,
            "nvmlDeviceGetTemperature": lambda handle, sensor: 41,
            "nvmlDeviceGetClockInfo": lambda handle, clock: {pynvml.NVML_CLOCK_SM: 1980, pynvml.NVML_CLOCK_MEM: 3201}[
                clock
            ],
            "nvmlDeviceGetCurrentClocksEventReasons": lambda handle: 0x4,
            "nvmlDeviceGetCurrentClocksThrottleReasons": lambda handle: 0x1,
            "nvmlDeviceGetMemoryInfo": lambda handle: SimpleNamespace(used=2**30, total=2**37, free=2**37 - 2**30),
            "nvmlDeviceGetUtilizationRates": not_supported_on_gpu1(SimpleNamespace(gpu=97, memory=40)),
        }
        for name, fake in patches.items():
            monkeypatch.setattr(pynvml, name, fake)
        if not event_reasons:
            monkeypatch.delattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons")


def test_nvml_source_reads_every_field_and_unsupported_ones_become_none(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml()
    fake.install(monkeypatch)
    nvml = NvmlSource()
    nvml.open()
    assert nvml.gpu_uuids == ["GPU-fake-0", "GPU-fake-1"]
    first, second = nvml.read()
    assert first.gpu_uuid == "GPU-fake-0" and first.gpu_index == 0
    assert first.power_w == pytest.approx(215.25)
    assert first.energy_mj == 123_456_789
    assert first.temperature_c == 41.0
    assert (first.sm_clock_mhz, first.mem_clock_mhz) == (1980, 3201)
    assert first.clock_event_reasons == 0x4
    assert first.memory_used_bytes == 2**30
    assert (first.utilization_gpu, first.utilization_memory) == (97, 40)
    assert abs(first.t - time.time()) < 1.0
    assert second.gpu_index == 1 and second.power_w is None and second.utilization_gpu is None
    assert second.utilization_memory is None and second.energy_mj == 123_456_789
    assert nvml.measure_energy_read_cost(n=5) >= 0 and fake.energy_calls == 2 + 5
    nvml.close()
    assert fake.shut_down


def test_nvml_source_falls_back_to_throttle_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml().install(monkeypatch, event_reasons=False)
    nvml = NvmlSource()
    nvml.open()
    assert nvml.read()[0].clock_event_reasons == 0x1


def test_nvml_source_falls_back_when_the_driver_lacks_event_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml().install(monkeypatch)

    def missing(handle: int) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", missing)
    nvml = NvmlSource()
    nvml.open()
    assert nvml.read()[0].clock_event_reasons == 0x1


def test_open_source_nvml_with_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml().install(monkeypatch)
    source, reason = open_source("nvml")
    assert isinstance(source, NvmlSource) and reason is None
    source.close()


def test_host_reading() -> None:
    reading = host_reading()
    assert 0.0 <= reading.cpu_percent <= 100.0 * (sources.psutil.cpu_count() or 1)
    assert 0 < reading.memory_used_bytes <= reading.memory_total_bytes
    assert abs(reading.t - time.time()) < 1.0
