"""Telemetry heartbeats in Redis: the key names, how the daemon writes them and how anyone reads them back.

The telemetry daemon writes one hash per GPU (``lem:telemetry:gpu:<uuid>``) and one per host
(``lem:telemetry:host:<host>``) about every second, each with a TTL, so a daemon that dies takes its
heartbeats with it. The planner and ``lem doctor`` read them here without importing the telemetry service.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis

KEY_PREFIX = "lem:telemetry:"
GPU_KEY_PREFIX = KEY_PREFIX + "gpu:"
HOST_KEY_PREFIX = KEY_PREFIX + "host:"

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
        mapping = {name: value for name, value in fields.items() if value is not None}
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
