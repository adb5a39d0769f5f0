"""Where telemetry readings come from: NVML, a replayed NVML trace standing in for a GPU, and the host.

No database or Celery code here: this module also runs on GPU boxes that have only pynvml, psutil and
pydantic installed. NVML is read through ``lem_shared.device.nvml``.

Source specs (``LEM_TELEMETRY_SOURCE``): ``nvml``; ``replay:PATH``, the trace replayed as one stand-in GPU
(``REPLAY_UUID``); ``replay:PATH?gpus=N``, the same trace replayed as N stand-in GPUs (1 to
``MAX_REPLAY_GPUS``; a PATH holding ``?`` cannot be replayed); ``replay:PATH?gpus=N&first=F``, GPUs F .. F+N-1
of such a replay (a fleet's hosts each playing their own GPUs of one numbering). GPU k (k = F .. F+N-1) has UUID
``replay_uuids(F + N)[k]`` (``GPU-replay-h200-0000``, ``-0001``, ...), NVML index k - F on its host, and replays
the same records at the same times, with every power field and the energy counter multiplied by
``replay_scale(k)`` = 1 / (k + 1): the second GPU draws half the first one's power and counts half its energy,
so a test can tell them apart. Temperatures, clocks, memory and utilisation are the trace's own for every GPU.
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

from lem_shared.device import nvml
from lem_shared.device.nvml import POWER_FIELDS, read_power_fields, supported_power_fields

REPLAY_UUID = "GPU-replay-h200-0000"
MAX_REPLAY_GPUS = 64


def replay_uuids(n: int) -> list[str]:
    """The UUIDs of an n-GPU replay, in NVML index order: ``REPLAY_UUID`` first, then ``GPU-replay-h200-0001``..."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_REPLAY_GPUS:
        raise ValueError(f"replay GPU count must be a whole number from 1 to {MAX_REPLAY_GPUS}, got {n!r}")
    return [f"GPU-replay-h200-{k:04d}" for k in range(n)]


def replay_scale(position: int) -> float:
    """The factor on the power fields and energy counter of replayed GPU ``position`` (0 is the trace itself)."""
    return 1.0 / (position + 1)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One reading of one GPU; a field is None when the GPU or driver does not report it."""

    gpu_uuid: str
    gpu_index: int
    t: float  # Unix seconds
    power_w: float | None  # nvmlDeviceGetPowerUsage: averaged over ~1 s on Ampere and newer (the H200 included)
    energy_mj: int | None
    temperature_c: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    clock_event_reasons: int | None
    memory_used_bytes: int | None
    utilization_gpu: int | None
    utilization_memory: int | None
    # The field-values API's instantaneous power: the GPU's, its memory's and the module's (None where absent).
    power_instant_w: float | None = None
    power_memory_w: float | None = None
    power_module_w: float | None = None


@dataclass(frozen=True, slots=True)
class HostReading:
    t: float  # Unix seconds
    cpu_percent: float
    memory_used_bytes: int
    memory_total_bytes: int


class GpuUnavailable(Exception):
    """One GPU cannot be read at all (NVML says GPU_IS_LOST, ...); the other GPUs are unaffected."""


class GpuSource(Protocol):
    """GPUs addressed by their position in ``gpus``; a read of one GPU never touches another."""

    name: str

    @property
    def gpus(self) -> list[tuple[int, str]]:
        """(NVML index, UUID) of every GPU, in position order."""
        ...

    @property
    def gpu_uuids(self) -> list[str]: ...

    def read_gpu(self, position: int) -> GpuReading:
        """Every cheap field of one GPU (microseconds), stamped now; ``energy_mj`` is always None here.
        Raises GpuUnavailable when the GPU cannot be read."""
        ...

    def read_energy(self, position: int) -> int | None:
        """The GPU's energy counter in mJ (about 4 ms a read on an H200), None when it has none.
        Raises GpuUnavailable when the GPU cannot be read."""
        ...

    def recover(self, position: int) -> None:
        """Find a GPU that was unavailable again (by UUID); raises GpuUnavailable while it is still gone."""
        ...

    def read(self) -> list[GpuReading]:
        """Every field of every GPU, the energy counter included (slow with NVML; for simple callers)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Device:
    index: int
    uuid: str
    handle: Any
    power_fields: tuple[str, ...] = ()  # the instantaneous power fields this GPU answers (probed at open)


def _or_none(read: Callable[..., T], *args: Any) -> T | None:
    """The value, or None when NVML says this field cannot be read (NOT_SUPPORTED, NO_PERMISSION, ...).

    An error that means the whole GPU is gone (GPU_IS_LOST, ...) raises GpuUnavailable instead.
    """
    try:
        return read(*args)
    except nvml.NVMLError as error:
        if nvml.is_gone(error):
            raise GpuUnavailable(str(error)) from error
        return None


class NvmlSource:
    """Every GPU of this host, read through NVML and keyed by UUID."""

    name = "nvml"

    def __init__(self) -> None:
        self._devices: list[_Device] = []
        self._initialised = False
        # (NVML index, reason) of each GPU that could not even be enumerated at open(); the others are read.
        self.unavailable_at_open: list[tuple[int, str]] = []

    def open(self) -> None:
        """Initialise NVML and enumerate the GPUs; raises NVMLError when NVML is unavailable.

        A GPU that cannot be enumerated (lost already) is skipped and listed in ``unavailable_at_open``.
        """
        nvml.init()
        try:
            count = nvml.device_count()
        except nvml.NVMLError:
            nvml.shutdown()
            raise
        devices, unavailable = [], []
        for index in range(count):
            try:
                handle = nvml.handle_by_index(index)
                devices.append(_Device(index, nvml.uuid_of(handle), handle, supported_power_fields(handle)))
            except nvml.NVMLError as error:
                unavailable.append((index, str(error)))
        self._devices = devices
        self.unavailable_at_open = unavailable
        self._initialised = True

    @property
    def gpus(self) -> list[tuple[int, str]]:
        return [(device.index, device.uuid) for device in self._devices]

    @property
    def gpu_uuids(self) -> list[str]:
        return [device.uuid for device in self._devices]

    def power_readings(self) -> dict[str, dict[str, bool]]:
        """Which power readings each GPU answers, by UUID: the averaged one and each instantaneous field."""
        return {
            device.uuid: {"power_w": True, **{column: column in device.power_fields for column in POWER_FIELDS}}
            for device in self._devices
        }

    def read(self) -> list[GpuReading]:
        return [
            dataclasses.replace(self._read_device(device), energy_mj=self._read_energy(device))
            for device in self._devices
        ]

    def read_gpu(self, position: int) -> GpuReading:
        return self._read_device(self._devices[position])

    def read_energy(self, position: int) -> int | None:
        return self._read_energy(self._devices[position])

    def recover(self, position: int) -> None:
        device = self._devices[position]
        try:
            handle = nvml.handle_by_uuid(device.uuid)
            index = nvml.index_of(handle)
        except nvml.NVMLError as error:
            raise GpuUnavailable(str(error)) from error
        self._devices[position] = _Device(index, device.uuid, handle, device.power_fields)
        self._read_device(self._devices[position])  # raises GpuUnavailable while it is still gone

    def close(self) -> None:
        if self._initialised:
            self._devices = []
            self._initialised = False
            _or_none(nvml.shutdown)

    def measure_energy_read_cost(self, n: int = 20, position: int = 0) -> float:
        """Seconds per nvmlDeviceGetTotalEnergyConsumption call on one GPU (about 4 ms on an H200)."""
        if not self._devices:
            raise RuntimeError("NvmlSource is not open or found no GPU")
        handle = self._devices[position].handle
        started = time.perf_counter()
        for _ in range(n):
            nvml.energy_mj(handle)
        return (time.perf_counter() - started) / n

    def measure_read_cost(self, n: int = 200, position: int = 0) -> dict[str, float]:
        """Seconds per call of the averaged power read and of the instantaneous power fields on one GPU."""
        if not self._devices:
            raise RuntimeError("NvmlSource is not open or found no GPU")
        device = self._devices[position]
        costs: dict[str, float] = {}
        started = time.perf_counter()
        for _ in range(n):
            nvml.power_usage_mw(device.handle)
        costs["power_usage"] = (time.perf_counter() - started) / n
        if device.power_fields:
            started = time.perf_counter()
            for _ in range(n):
                read_power_fields(device.handle, device.power_fields)
            costs["power_fields"] = (time.perf_counter() - started) / n
        return costs

    @staticmethod
    def _read_energy(device: _Device) -> int | None:
        return _or_none(nvml.energy_mj, device.handle)

    def _read_device(self, device: _Device) -> GpuReading:
        """The cheap fields; the energy counter (milliseconds a read) is read apart, on its own cadence."""
        handle = device.handle
        power_mw = _or_none(nvml.power_usage_mw, handle)
        instant = _or_none(read_power_fields, handle, device.power_fields) or {}
        # Stamped when the power reads return: NVML serialises calls, so they may have waited (up to ~4 ms) behind
        # an energy-counter read of another thread; the values are the ones current at their return.
        t = time.time()
        temperature = _or_none(nvml.temperature_c, handle)
        memory_used = _or_none(nvml.memory_used_bytes, handle)
        utilization = _or_none(nvml.utilization, handle)
        return GpuReading(
            gpu_uuid=device.uuid,
            gpu_index=device.index,
            t=t,
            power_w=None if power_mw is None else power_mw / 1000.0,
            energy_mj=None,
            temperature_c=None if temperature is None else float(temperature),
            sm_clock_mhz=_or_none(nvml.sm_clock_mhz, handle),
            mem_clock_mhz=_or_none(nvml.mem_clock_mhz, handle),
            clock_event_reasons=_or_none(nvml.clock_event_reasons, handle),
            memory_used_bytes=memory_used,
            utilization_gpu=None if utilization is None else int(utilization.gpu),
            utilization_memory=None if utilization is None else int(utilization.memory),
            **instant,
        )


def _optional(record: dict[str, Any], key: str, convert: Callable[[Any], T]) -> T | None:
    value = record.get(key)
    return None if value is None else convert(value)


def _milliwatts(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    return None if value is None else float(value) / 1000.0


def _reading_from_trace(record: dict[str, Any], offset: float) -> GpuReading:
    """One trace record; ``power_instant_mw`` and the memory/module fields are optional (older traces lack them)."""
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
        power_instant_w=_milliwatts(record, "power_instant_mw"),
        power_memory_w=_milliwatts(record, "power_memory_mw"),
        power_module_w=_milliwatts(record, "power_module_mw"),
    )


class ReplaySource:
    """A stand-in GPU for hosts without one: replays a recorded NVML trace (JSONL) in real time, looping.

    Readings carry the current wall-clock time, the fixed UUIDs of ``replay_uuids`` and the source name
    ``nvml-replay``, so nothing measured from them can pass for a real GPU. The energy counter keeps
    rising across loops (each loop adds the trace's total energy). A trace may hold every field in each record
    (the team's recording) or, as the daemon stores them, fast records and counter records apart. With
    ``gpus`` > 1 it plays that many GPUs, each scaled by ``replay_scale`` (see the module docstring).
    """

    name = "nvml-replay"

    def __init__(
        self, trace_path: str | Path, clock: Callable[[], float] = time.monotonic, gpus: int = 1, first: int = 0
    ) -> None:
        self._first = first
        self._uuids = replay_uuids(first + gpus)[first:]
        self.trace_path = Path(trace_path)
        self._clock = clock
        self._offsets: list[float] = []
        self._readings: list[GpuReading] = []
        self._counter_offsets: list[float] = []
        self._counters: list[int] = []
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
        fast = [r for r in records if r.get("power_mw") is not None or r.get("energy_mj") is None]
        counters = [r for r in records if r.get("energy_mj") is not None]
        self._offsets = [float(record["t"]) - t0 for record in fast]
        self._readings = [_reading_from_trace(r, o) for r, o in zip(fast, self._offsets, strict=True)]
        self._counter_offsets = [float(record["t"]) - t0 for record in counters]
        self._counters = [int(record["energy_mj"]) for record in counters]
        # One loop lasts the trace plus one mean sampling step, so the last record is held like the others.
        duration = float(records[-1]["t"]) - t0
        step = duration / (len(fast) - 1) if len(fast) > 1 else 1.0
        self._period = duration + step
        self._energy_per_loop = self._counters[-1] - self._counters[0] if self._counters else 0

    @property
    def gpus(self) -> list[tuple[int, str]]:
        return list(enumerate(self._uuids))

    @property
    def gpu_uuids(self) -> list[str]:
        return list(self._uuids)

    def _as_gpu(self, position: int, reading: GpuReading, energy_mj: int | None) -> GpuReading:
        """The trace's reading as GPU ``position`` reads it now: its UUID and index, powers and energy scaled."""
        if self._first + position == 0:
            return dataclasses.replace(reading, t=time.time(), energy_mj=energy_mj)
        scale = replay_scale(self._first + position)

        def scaled(watts: float | None) -> float | None:
            return None if watts is None else watts * scale

        return dataclasses.replace(
            reading,
            gpu_uuid=self._uuids[position],
            gpu_index=position,
            t=time.time(),
            power_w=scaled(reading.power_w),
            energy_mj=None if energy_mj is None else round(energy_mj * scale),
            power_instant_w=scaled(reading.power_instant_w),
            power_memory_w=scaled(reading.power_memory_w),
            power_module_w=scaled(reading.power_module_w),
        )

    def _now(self) -> tuple[GpuReading, int | None]:
        """The trace record due now, and its energy counter carried on across loops."""
        if self._started is None:
            raise RuntimeError("ReplaySource read before open()")
        loops, into_loop = divmod(self._clock() - self._started, self._period)
        reading = self._readings[max(bisect.bisect_right(self._offsets, into_loop) - 1, 0)]
        if not self._counters:
            return reading, None
        energy = self._counters[max(bisect.bisect_right(self._counter_offsets, into_loop) - 1, 0)]
        return reading, energy + int(loops) * self._energy_per_loop

    def read(self) -> list[GpuReading]:
        reading, energy = self._now()
        return [self._as_gpu(position, reading, energy) for position in range(len(self._uuids))]

    def read_gpu(self, position: int) -> GpuReading:
        reading, _ = self._now()
        return self._as_gpu(position, reading, None)

    def read_energy(self, position: int) -> int | None:
        energy = self._now()[1]
        if energy is None or self._first + position == 0:
            return energy
        return round(energy * replay_scale(self._first + position))

    def recover(self, position: int) -> None:
        """A replay never loses its GPU."""

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
    """Open the GPU source named by ``spec`` ("nvml", "replay:PATH" or "replay:PATH?gpus=N").

    Returns (source, None), or (None, reason) when there is no GPU to read here. An unknown spec raises
    ValueError: that is a configuration mistake, not a host without a GPU.
    """
    if spec == "nvml":
        source = NvmlSource()
        try:
            source.open()
        except nvml.NVMLError as error:
            return None, f"NVML is unavailable: {error}"
        if not source.gpu_uuids:
            lost = "; ".join(f"GPU index {index}: {reason}" for index, reason in source.unavailable_at_open)
            source.close()
            return None, (
                f"NVML found no readable GPU on this host ({lost})" if lost else "NVML found no GPU on this host"
            )
        return source, None
    if spec.startswith("replay:"):
        path, gpus, first = _replay_spec(spec)
        replay = ReplaySource(path, gpus=gpus, first=first)
        try:
            replay.open()
        except (OSError, ValueError, KeyError) as error:
            return None, f"replay trace {replay.trace_path} is unusable: {error!r}"
        return replay, None
    raise ValueError(f"unknown telemetry source {spec!r}: expected 'nvml', 'replay:PATH' or 'replay:PATH?gpus=N'")


def _replay_spec(spec: str) -> tuple[str, int, int]:
    """(trace path, GPU count, first GPU) of a ``replay:PATH[?gpus=N[&first=F]]`` spec; ValueError naming the fix
    for a bad query."""
    path, question, query = spec.removeprefix("replay:").partition("?")
    if not question:
        return path, 1, 0
    values = {"gpus": 1, "first": 0}
    for part in query.split("&"):
        name, equals, value = part.partition("=")
        if name not in values or not equals or not (value.isascii() and value.isdigit()):
            raise ValueError(
                f"telemetry source {spec!r}: after '?' only gpus=N and first=F are understood "
                f"(e.g. replay:{path}?gpus=2&first=4), got {part!r}"
            )
        values[name] = int(value)
    count, first = values["gpus"], values["first"]
    if not 1 <= count <= MAX_REPLAY_GPUS:
        raise ValueError(f"telemetry source {spec!r}: gpus must be from 1 to {MAX_REPLAY_GPUS}, got {count}")
    if first + count > MAX_REPLAY_GPUS:
        raise ValueError(
            f"telemetry source {spec!r}: first + gpus must be at most {MAX_REPLAY_GPUS}, got {first + count}"
        )
    return path, count, first
