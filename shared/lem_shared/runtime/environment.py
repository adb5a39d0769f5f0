"""The environment one run saw: the host snapshot with only the run's GPU, the run's device, engine versions and,
where the adapter reads them, the loaded engine's facts (``engine``: attention backend, KV-cache size, ...).

Missing pieces are recorded as unavailable, never raised. ``hash`` groups runs on the same hardware and
software; the worker stores one ``environments`` row per hash.
"""

from __future__ import annotations

from typing import Any

from lem_shared.device.environment import environment_hash, host_environment
from lem_shared.runtime.adapter import DeviceInfo


def environment_snapshot(
    device: DeviceInfo, engine_versions: dict[str, str], engine_facts: dict[str, Any] | None = None
) -> dict[str, Any]:
    snapshot: dict[str, Any] = {
        "kind": "run",
        **host_environment(device.gpu_uuid, gpus=device.gpu_uuid is not None),
        "device": device.device,
        "device_name": device.name,
        "gpu_uuid": device.gpu_uuid,
        "engine_versions": engine_versions,
    }
    if engine_facts is not None:
        snapshot["engine"] = engine_facts
    snapshot["hash"] = environment_hash(snapshot)
    return snapshot
