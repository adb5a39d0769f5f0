"""Heartbeats in Redis: the key names, how the telemetry daemon and the workers write them and how anyone reads
them back.

The telemetry daemon writes one hash per GPU (``lem:telemetry:gpu:<uuid>``) and one per host
(``lem:telemetry:host:<host>``) about every second, each with a TTL, so a daemon that dies takes its
heartbeats with it. The planner and ``lem doctor`` read them here without importing the telemetry service.
Each worker writes ``lem:worker:<name>`` (JSON: backend, host, the run in progress, the engine version it runs,
its device and how many GPUs it owns) every few seconds with a TTL; this module stays light (no Celery, no
database), so ``lem campaign plan`` can read the engine versions cheaply.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from lem_shared.settings import get_settings

KEY_PREFIX = "lem:telemetry:"
GPU_KEY_PREFIX = KEY_PREFIX + "gpu:"
HOST_KEY_PREFIX = KEY_PREFIX + "host:"
WORKER_KEY_PREFIX = "lem:worker:"

# Fields stored as numbers; everything else is text. Absent values are not stored at all.
_FLOAT_FIELDS = {"time", "power_w", "temperature_c", "cpu_percent", "interval_s", "updated_at"}
_INT_FIELDS = {"gpu_index", "pid", "gpus", "memory_used_bytes", "memory_total_bytes"}


def gpu_key(gpu_uuid: str) -> str:
    return GPU_KEY_PREFIX + gpu_uuid


def host_key(host: str) -> str:
    return HOST_KEY_PREFIX + host


def client(redis_url: str, timeout_s: float = 1.0) -> redis.Redis:
    """A client that gives up quickly: a heartbeat is never worth stalling for."""
    return redis.Redis.from_url(redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)


def publish(connection: redis.Redis, beats: Iterable[tuple[str, Mapping[str, Any]]], ttl_s: float) -> None:
    """Write each (key, fields) hash, replacing what was there, with a TTL, in one round trip."""
    pipe = connection.pipeline(transaction=False)
    ttl_ms = max(int(ttl_s * 1000), 1)
    for key, fields in beats:
        mapping: dict[FieldT, EncodableT] = {name: value for name, value in fields.items() if value is not None}
        pipe.delete(key)
        pipe.hset(key, mapping=mapping)
        pipe.pexpire(key, ttl_ms)
    pipe.execute()


def _decode(key: str, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    beat: dict[str, Any] = {}
    for name_bytes, value_bytes in raw.items():
        name, value = name_bytes.decode(), value_bytes.decode()
        if name in _FLOAT_FIELDS:
            beat[name] = float(value)
        elif name in _INT_FIELDS:
            beat[name] = int(value)
        else:
            beat[name] = value
    beat["kind"] = "gpu" if key.startswith(GPU_KEY_PREFIX) else "host"
    beat["key"] = key
    return beat


def read_heartbeats(redis_url: str, now: float | None = None) -> list[dict[str, Any]]:
    """Every live heartbeat, each a dict with ``kind`` ("gpu" or "host"), ``key``, the stored fields and
    ``age_s`` (seconds since its last sample); hosts first, then GPUs by host and index.

    GPU fields: host, gpu_uuid, gpu_index, time (Unix s of the last sample), power_w, temperature_c, source,
    state ("ok" or "lost"), pid. Host fields: host, time, cpu_percent, memory_used_bytes,
    memory_total_bytes, source (the GPU source, "none" without NVML), gpus (how many), note, pid.
    Raises redis.RedisError when Redis cannot be reached.
    """
    connection = client(redis_url)
    try:
        keys = sorted(key.decode() for key in connection.scan_iter(match=KEY_PREFIX + "*", count=500))
        pipe = connection.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        raws = pipe.execute()
    finally:
        connection.close()
    now = time.time() if now is None else now
    beats = [_decode(key, raw) for key, raw in zip(keys, raws, strict=True) if raw]
    for beat in beats:
        beat["age_s"] = round(now - beat["time"], 3) if "time" in beat else None
    beats.sort(key=lambda b: (b["kind"] != "host", b.get("host", ""), b.get("gpu_index", -1), b["key"]))
    return beats


# --- worker heartbeats -----------------------------------------------------------------------------------------


def publish_worker_beat(
    connection: redis.Redis,
    name: str,
    backend: str,
    run_key: str | None,
    engine_version: str | None = None,
    gpus: int = 1,
    device: str = "",
) -> None:
    """``engine_version``: the version of the backend's engine package the worker runs (plan-time checks use
    its parameter snapshot); ``gpus``: the size of the worker's GPU set (the dispatcher sends it runs needing at
    most that many); ``device``: its ``LEM_DEVICE`` (``cuda:0,1``)."""
    settings = get_settings()
    beat = {
        "name": name,
        "backend": backend,
        "host": socket.gethostname(),
        "run_key": run_key or "",
        "engine_version": engine_version or "",
        "gpus": gpus,
        "device": device,
        "time": time.time(),
    }
    connection.set(WORKER_KEY_PREFIX + name, json.dumps(beat), px=int(settings.worker_heartbeat_ttl_s * 1000))


def live_workers(connection: redis.Redis) -> dict[str, dict[str, Any]]:
    """Every worker with a live heartbeat, by name (``pytorch@host``)."""
    keys = list(connection.scan_iter(match=WORKER_KEY_PREFIX + "*", count=500))
    values = connection.mget(keys) if keys else []
    beats = [json.loads(v) for v in values if v]
    return {b["name"]: b for b in beats}


def worker_gpus(beat: Mapping[str, Any]) -> int:
    """The GPU set size a worker's heartbeat advertises; 1 for a beat without one (a worker of an earlier
    version, which owns one GPU) or with a value that is not a positive whole number."""
    gpus = beat.get("gpus", 1)
    return gpus if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 1 else 1


def advertised_engine_versions(workers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """``{backend: {worker: engine version}}`` of the live workers (``live_workers``) that advertise one."""
    out: dict[str, dict[str, str]] = {}
    for name, beat in workers.items():
        if beat.get("engine_version"):
            out.setdefault(beat["backend"], {})[name] = beat["engine_version"]
    return out
