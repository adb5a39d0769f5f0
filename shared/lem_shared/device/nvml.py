"""The one wrapper over NVML (pynvml): init and shutdown, handles by UUID or index, the energy counter, the power
readings, memory in use, and which errors mean the GPU is gone. The telemetry daemon, the engine host's edge reads,
the environment record and the spawned engines' memory figure all read through it.

pynvml is imported here at module level: import this module lazily wherever pynvml is optional (CPU-only hosts,
``lem --help``). Functions look pynvml's up at call time, so a stand-in patched onto pynvml is what they call.

NVML counts ``nvmlInit`` calls itself: each ``init`` is paired with one ``shutdown``, and the library stays up until
the last one, so every user (a telemetry source, an edge reader, a one-off ``session``) holds its own.

Power: on Ampere (except GA100) and newer, the H200 included, ``nvmlDeviceGetPowerUsage`` is power averaged over one
second. The field-values API also answers the instantaneous reading (``NVML_FI_DEV_POWER_INSTANT``), per scope:
the GPU, its memory, the whole module, where the GPU exposes them. One call reads every supported field.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pynvml

NVMLError = pynvml.NVMLError

# NVML errors that mean the GPU (or the driver) is gone rather than one field being unsupported.
GONE_ERRORS = frozenset(
    getattr(pynvml, name)
    for name in (
        "NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_GPU_NOT_FOUND", "NVML_ERROR_UNINITIALIZED",
        "NVML_ERROR_DRIVER_NOT_LOADED", "NVML_ERROR_LIB_RM_VERSION_MISMATCH", "NVML_ERROR_RESET_REQUIRED",
    )
    if hasattr(pynvml, name)
)  # fmt: skip


def is_gone(error: BaseException) -> bool:
    """Whether this NVML error means the whole GPU (or the driver) is gone, not one reading unsupported."""
    return getattr(error, "value", None) in GONE_ERRORS


def init() -> None:
    pynvml.nvmlInit()


def shutdown() -> None:
    pynvml.nvmlShutdown()


@contextmanager
def session() -> Iterator[None]:
    """NVML initialised for the block (raises NVMLError when it cannot be)."""
    init()
    try:
        yield
    finally:
        shutdown()


def device_count() -> int:
    return int(pynvml.nvmlDeviceGetCount())


def handle_by_index(index: int) -> Any:
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def handle_by_uuid(gpu_uuid: str) -> Any:
    return pynvml.nvmlDeviceGetHandleByUUID(gpu_uuid)


def text(value: str | bytes) -> str:
    """NVML strings: bytes from older bindings, str from newer ones."""
    return value.decode() if isinstance(value, bytes) else value


def uuid_of(handle: Any) -> str:
    return text(pynvml.nvmlDeviceGetUUID(handle))


def index_of(handle: Any) -> int:
    return int(pynvml.nvmlDeviceGetIndex(handle))


def energy_mj(handle: Any) -> int:
    """The GPU's energy counter (mJ since the driver loaded); a few ms a read on an H200."""
    return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))


def power_usage_mw(handle: Any) -> int:
    """``nvmlDeviceGetPowerUsage``: averaged over one second on Ampere (except GA100) and newer."""
    return int(pynvml.nvmlDeviceGetPowerUsage(handle))


def temperature_c(handle: Any) -> int:
    return int(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))


def sm_clock_mhz(handle: Any) -> int:
    return int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))


def mem_clock_mhz(handle: Any) -> int:
    return int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM))


def utilization(handle: Any) -> Any:
    """``.gpu`` and ``.memory``, percent busy over the driver's last sample period."""
    return pynvml.nvmlDeviceGetUtilizationRates(handle)


def clock_event_reasons(handle: Any) -> int:
    # "Clocks event reasons" is the newer name of "clocks throttle reasons"; older bindings or drivers only
    # have the old one (a driver without the symbol answers FUNCTION_NOT_FOUND).
    get_reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if get_reasons is not None:
        try:
            return int(get_reasons(handle))
        except pynvml.NVMLError_FunctionNotFound:
            pass
    return int(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))


def memory_used_bytes(handle: Any) -> int:
    """Bytes in use on the GPU, by every process on it."""
    return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


# Column name -> (field id, scope). Values are mW. The H200 answers the GPU's instantaneous power and its memory's
# averaged power (nvidia-smi: "GPU Memory Power Readings, Average Power Draw"; no instantaneous memory reading).
POWER_FIELDS: dict[str, tuple[int, int]] = {
    "power_instant_w": (pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_POWER_SCOPE_GPU),
    "power_memory_w": (pynvml.NVML_FI_DEV_POWER_AVERAGE, pynvml.NVML_POWER_SCOPE_MEMORY),
    "power_module_w": (pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_POWER_SCOPE_MODULE),
}

_VALUE_MEMBER = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
}


def _watts(value: Any) -> float | None:
    if value.nvmlReturn != pynvml.NVML_SUCCESS:
        return None
    member = _VALUE_MEMBER.get(value.valueType)
    return None if member is None else float(getattr(value.value, member)) / 1000.0


def read_power_fields(handle: Any, columns: tuple[str, ...]) -> dict[str, float | None]:
    """The named power readings of one GPU in watts, one NVML call; a field the GPU does not answer is None.

    Raises pynvml.NVMLError when the call itself fails (the caller decides whether the GPU is gone)."""
    if not columns:
        return {}
    values = pynvml.nvmlDeviceGetFieldValues(handle, [POWER_FIELDS[c] for c in columns])
    return {column: _watts(value) for column, value in zip(columns, values, strict=True)}


def supported_power_fields(handle: Any) -> tuple[str, ...]:
    """The power fields this GPU answers (probed once at open); none on drivers without the field-values API."""
    try:
        readings = read_power_fields(handle, tuple(POWER_FIELDS))
    except pynvml.NVMLError:
        return ()
    return tuple(column for column, watts in readings.items() if watts is not None)
