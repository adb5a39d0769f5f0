"""A snapshot of the software and hardware a run saw. Missing pieces are recorded as unavailable, never raised."""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

from lem_shared.runtime.adapter import DeviceInfo


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError as exc:
        return f"unavailable: {exc}"
    return platform.processor() or "unavailable: not reported"


def environment_snapshot(device: DeviceInfo, engine_versions: dict[str, str]) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "device": device.device,
        "device_name": device.name,
        "gpu_uuid": device.gpu_uuid,
        "engine_versions": engine_versions,
    }
