"""NVML's power readings beyond ``nvmlDeviceGetPowerUsage``: instantaneous GPU power, memory and module power.

On Ampere (except GA100) and newer, the H200 included, ``nvmlDeviceGetPowerUsage`` is power averaged over one
second. The field-values API also answers the instantaneous reading (``NVML_FI_DEV_POWER_INSTANT``), per scope:
the GPU, its memory, the whole module, where the GPU exposes them. One call reads every supported field.
Used by the telemetry daemon (every tick) and by the engine host (at window edges); pynvml is imported by callers.
"""

from __future__ import annotations

from typing import Any

import pynvml

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
