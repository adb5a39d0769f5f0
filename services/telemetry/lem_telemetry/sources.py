"""Where telemetry readings come from: NVML, a replayed NVML trace standing in for a GPU, and the host.

No database or Celery code here: this module also runs on GPU boxes that have only pynvml, psutil and
pydantic installed.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psutil
import pynvml

REPLAY_UUID = "GPU-replay-h200-0000"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One reading of one GPU; a field is None when the GPU or driver does not report it."""

    gpu_uuid: str
    gpu_index: int
    t: float  # Unix seconds
    power_w: float | None
    energy_mj: int | None
    temperature_c: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    clock_event_reasons: int | None
    memory_used_bytes: int | None
    utilization_gpu: int | None
    utilization_memory: int | None


@dataclass(frozen=True, slots=True)
class HostReading:
    t: float  # Unix seconds
    cpu_percent: float
    memory_used_bytes: int
    memory_total_bytes: int


class GpuSource(Protocol):
    name: str

    @property
    def gpu_uuids(self) -> list[str]: ...

    def read(self) -> list[GpuReading]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Device:
    index: int
    uuid: str
    handle: Any


def _or_none(read: Callable[..., T], *args: Any) -> T | None:
    """The value, or None when NVML says the field cannot be read (NOT_SUPPORTED, GPU_IS_LOST, ...)."""
    try:
        return read(*args)
    except pynvml.NVMLError:
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _clock_event_reasons(handle: Any) -> int:
    # "Clocks event reasons" is the newer name of "clocks throttle reasons"; older bindings or drivers only
    # have the old one (a driver without the symbol answers FUNCTION_NOT_FOUND).
    get_reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if get_reasons is not None:
        try:
            return int(get_reasons(handle))
        except pynvml.NVMLError_FunctionNotFound:
            pass
    return int(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))


class NvmlSource:
    """Every GPU of this host, read through NVML and keyed by UUID."""

    name = "nvml"

    def __init__(self) -> None:
        self._devices: list[_Device] = []
        self._initialised = False

    def open(self) -> None:
        """Initialise NVML and enumerate the GPUs; raises pynvml.NVMLError when NVML is unavailable."""
        pynvml.nvmlInit()
        try:
            devices = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                devices.append(_Device(index, _text(pynvml.nvmlDeviceGetUUID(handle)), handle))
        except pynvml.NVMLError:
            pynvml.nvmlShutdown()
            raise
        self._devices = devices
        self._initialised = True

    @property
    def gpu_uuids(self) -> list[str]:
        return [device.uuid for device in self._devices]

    def read(self) -> list[GpuReading]:
        return [self._read_device(device) for device in self._devices]

    def close(self) -> None:
        if self._initialised:
            self._devices = []
            self._initialised = False
            _or_none(pynvml.nvmlShutdown)

    def measure_energy_read_cost(self, n: int = 20) -> float:
        """Seconds per nvmlDeviceGetTotalEnergyConsumption call on the first GPU (about 4 ms on an H200)."""
        if not self._devices:
            raise RuntimeError("NvmlSource is not open or found no GPU")
        handle = self._devices[0].handle
        started = time.perf_counter()
        for _ in range(n):
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return (time.perf_counter() - started) / n

    def _read_device(self, device: _Device) -> GpuReading:
        handle = device.handle
        t = time.time()
        power_mw = _or_none(pynvml.nvmlDeviceGetPowerUsage, handle)
        temperature = _or_none(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
        memory = _or_none(pynvml.nvmlDeviceGetMemoryInfo, handle)
        utilization = _or_none(pynvml.nvmlDeviceGetUtilizationRates, handle)
        return GpuReading(
            gpu_uuid=device.uuid,
            gpu_index=device.index,
            t=t,
            power_w=None if power_mw is None else power_mw / 1000.0,
            energy_mj=_or_none(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle),
            temperature_c=None if temperature is None else float(temperature),
            sm_clock_mhz=_or_none(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM),
            mem_clock_mhz=_or_none(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_MEM),
            clock_event_reasons=_or_none(_clock_event_reasons, handle),
            memory_used_bytes=None if memory is None else int(memory.used),
            utilization_gpu=None if utilization is None else int(utilization.gpu),
            utilization_memory=None if utilization is None else int(utilization.memory),
        )


def _optional(record: dict[str, Any], key: str, convert: Callable[[Any], T]) -> T | None:
    value = record.get(key)
    return None if value is None else convert(value)


def _reading_from_trace(record: dict[str, Any], offset: float) -> GpuReading:
    power_mw = record.get("power_mw")
    return GpuReading(
        gpu_uuid=REPLAY_UUID,
        gpu_index=0,
        t=offset,
        power_w=None if power_mw is None else power_mw / 1000.0,
        energy_mj=_optional(record, "energy_mj", int),
        temperature_c=_optional(record, "temp_c", float),
        sm_clock_mhz=_optional(record, "sm_mhz", int),
        mem_clock_mhz=_optional(record, "mem_mhz", int),
        clock_event_reasons=_optional(record, "reasons", int),
        memory_used_bytes=_optional(record, "mem_used_b", int),
        utilization_gpu=_optional(record, "util_gpu", int),
        utilization_memory=_optional(record, "util_mem", int),
    )


class ReplaySource:
    """A stand-in GPU for hosts without one: replays a recorded NVML trace (JSONL) in real time, looping.

    Readings carry the current wall-clock time, the fixed UUID ``REPLAY_UUID`` and the source name
    ``nvml-replay``, so nothing measured from them can pass for a real GPU. The energy counter keeps
    rising across loops (each loop adds the trace's total energy).
    """

    name = "nvml-replay"

    def __init__(self, trace_path: str | Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.trace_path = Path(trace_path)
        self._clock = clock
        self._offsets: list[float] = []
        self._readings: list[GpuReading] = []
        self._period = 0.0
        self._energy_per_loop = 0
        self._started: float | None = None

    def open(self) -> None:
        """Load the trace and start the replay clock; raises OSError or ValueError for an unusable trace."""
        if not self._readings:
            self._load()
        self._started = self._clock()

    def _load(self) -> None:
        with self.trace_path.open() as lines:
            records = [json.loads(line) for line in lines if line.strip()]
        if not records:
            raise ValueError(f"replay trace {self.trace_path} has no records")
        t0 = float(records[0]["t"])
        self._offsets = [float(record["t"]) - t0 for record in records]
        self._readings = [_reading_from_trace(r, o) for r, o in zip(records, self._offsets, strict=True)]
        # One loop lasts the trace plus one mean sampling step, so the last record is held like the others.
        duration = self._offsets[-1]
        step = duration / (len(records) - 1) if len(records) > 1 else 1.0
        self._period = duration + step
        energies = [r.energy_mj for r in self._readings if r.energy_mj is not None]
        self._energy_per_loop = energies[-1] - energies[0] if energies else 0

    @property
    def gpu_uuids(self) -> list[str]:
        return [REPLAY_UUID]

    def read(self) -> list[GpuReading]:
        if self._started is None:
            raise RuntimeError("ReplaySource.read() before open()")
        loops, into_loop = divmod(self._clock() - self._started, self._period)
        index = max(bisect.bisect_right(self._offsets, into_loop) - 1, 0)
        reading = self._readings[index]
        energy = reading.energy_mj
        if energy is not None:
            energy += int(loops) * self._energy_per_loop
        return [dataclasses.replace(reading, t=time.time(), energy_mj=energy)]

    def close(self) -> None:
        self._started = None


# cpu_percent(interval=None) reports the CPU use since its previous call; prime it so the first reading
# covers the time since import rather than answering a meaningless 0.0.
psutil.cpu_percent(interval=None)


def host_reading() -> HostReading:
    memory = psutil.virtual_memory()
    return HostReading(
        t=time.time(),
        cpu_percent=psutil.cpu_percent(interval=None),
        # total - available is the memory applications cannot have; psutil's "used" differs by platform.
        memory_used_bytes=memory.total - memory.available,
        memory_total_bytes=memory.total,
    )


def open_source(spec: str) -> tuple[GpuSource | None, str | None]:
    """Open the GPU source named by ``spec`` ("nvml" or "replay:PATH").

    Returns (source, None), or (None, reason) when there is no GPU to read here. An unknown spec raises
    ValueError: that is a configuration mistake, not a host without a GPU.
    """
    if spec == "nvml":
        nvml = NvmlSource()
        try:
            nvml.open()
        except pynvml.NVMLError as error:
            return None, f"NVML is unavailable: {error}"
        if not nvml.gpu_uuids:
            nvml.close()
            return None, "NVML found no GPU on this host"
        return nvml, None
    if spec.startswith("replay:"):
        replay = ReplaySource(spec.removeprefix("replay:"))
        try:
            replay.open()
        except (OSError, ValueError, KeyError) as error:
            return None, f"replay trace {replay.trace_path} is unusable: {error!r}"
        return replay, None
    raise ValueError(f"unknown telemetry source {spec!r}: expected 'nvml' or 'replay:PATH'")
