"""Heartbeats and flags: small JSON values that live for a while ("beacons"), where every process reads them.

They live in Redis when the broker is Redis, else in the database's ``beacons`` table (the embedded stack, or a
broker that keeps no keys); ``beacons()`` picks by the one settings object. Either store says ``BeaconsAway``
when it cannot be reached, so a caller handles one error whatever the stack.

The telemetry daemon writes one beacon per GPU (``lem:telemetry:gpu:<uuid>``) and one per host
(``lem:telemetry:host:<host>``) about every second; each worker writes ``lem:worker:<name>`` (backend, host, the
run in progress, its engine version, device and GPU count) every few seconds; a cancelled campaign has a flag.
A worker measuring a run also renews the run's lease (``lem:lease:<run key>``) in the database, whatever the
broker: a worker cut off from the broker but not the database still holds its run, so nobody re-queues it.
Each beacon has a lifetime, so a process that dies takes its beacons with it. This module stays light (no Celery,
no ORM models), so ``lem campaign plan`` reads the engine versions cheaply.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from lem_shared.settings import Settings, get_settings, is_redis

KEY_PREFIX = "lem:telemetry:"
GPU_KEY_PREFIX = KEY_PREFIX + "gpu:"
HOST_KEY_PREFIX = KEY_PREFIX + "host:"
WORKER_KEY_PREFIX = "lem:worker:"
LEASE_KEY_PREFIX = "lem:lease:"


class BeaconsAway(Exception):
    """The store of beacons (Redis or the database) cannot be reached."""


class Beacons(Protocol):
    def put(self, items: Iterable[tuple[str, Mapping[str, Any]]], ttl_s: float) -> None:
        """Write each (key, value), replacing what was there, to live ``ttl_s`` seconds; one round trip."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def scan(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every live beacon whose key starts with ``prefix``, by key."""

    def delete(self, *keys: str) -> None: ...

    def up_s(self) -> float:
        """How long the store has kept its beacons: a restarted Redis has none, so a missing beacon means nothing
        until a lifetime after it came up. The database keeps them (its rows say when they expire): infinite."""

    def close(self) -> None: ...


class RedisBeacons:
    """Beacons in Redis: one JSON string per key with a TTL. A client that gives up quickly: a heartbeat is
    never worth stalling for."""

    def __init__(self, url: str, timeout_s: float = 1.0) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)

    @contextlib.contextmanager
    def _away(self) -> Iterator[None]:
        import redis

        try:
            yield
        except redis.RedisError as error:
            raise BeaconsAway(f"Redis: {error}") from error

    def put(self, items: Iterable[tuple[str, Mapping[str, Any]]], ttl_s: float) -> None:
        ttl_ms = max(int(ttl_s * 1000), 1)
        with self._away():
            pipe = self.client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key, json.dumps(dict(value)), px=ttl_ms)
            pipe.execute()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._away():
            raw = self.client.get(key)
        return json.loads(raw) if raw else None

    def scan(self, prefix: str) -> dict[str, dict[str, Any]]:
        with self._away():
            keys = sorted(key.decode() for key in self.client.scan_iter(match=prefix + "*", count=500))
            values = self.client.mget(keys) if keys else []
        return {key: json.loads(raw) for key, raw in zip(keys, values, strict=True) if raw}

    def delete(self, *keys: str) -> None:
        if keys:
            with self._away():
                self.client.delete(*keys)

    def up_s(self) -> float:
        with self._away():
            return float(self.client.info("server")["uptime_in_seconds"])

    def close(self) -> None:
        self.client.close()


def beacons(timeout_s: float = 2.0, settings: Settings | None = None) -> Beacons:
    """The store of this stack's beacons: the broker's Redis, or the database when the broker is not Redis."""
    settings = settings or get_settings()
    if is_redis(settings.broker_url):
        return RedisBeacons(settings.broker_url, timeout_s)
    from lem_shared.db.beacons import DatabaseBeacons

    return DatabaseBeacons(settings.database_url)


def gpu_key(gpu_uuid: str) -> str:
    return GPU_KEY_PREFIX + gpu_uuid


def host_key(host: str) -> str:
    return HOST_KEY_PREFIX + host


def read_heartbeats(store: Beacons, now: float | None = None) -> list[dict[str, Any]]:
    """Every live telemetry heartbeat, each a dict with ``kind`` ("gpu" or "host"), ``key``, the stored fields
    and ``age_s`` (seconds since its last sample); hosts first, then GPUs by host and index.

    GPU fields: host, gpu_uuid, gpu_index, time (Unix s of the last sample), power_w, temperature_c, source,
    state ("ok" or "lost"), pid. Host fields: host, time, cpu_percent, memory_used_bytes,
    memory_total_bytes, source (the GPU source, "none" without NVML), gpus (how many), note, pid, rapl.
    Raises BeaconsAway when the store cannot be reached.
    """
    now = time.time() if now is None else now
    beats = []
    for key, value in store.scan(KEY_PREFIX).items():
        beat = {name: field for name, field in value.items() if field is not None}
        beat["kind"] = "gpu" if key.startswith(GPU_KEY_PREFIX) else "host"
        beat["key"] = key
        beat["age_s"] = round(now - beat["time"], 3) if "time" in beat else None
        beats.append(beat)
    beats.sort(key=lambda b: (b["kind"] != "host", b.get("host", ""), b.get("gpu_index", -1), b["key"]))
    return beats


# --- worker heartbeats -----------------------------------------------------------------------------------------


def publish_worker_beat(
    store: Beacons,
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
    store.put([(WORKER_KEY_PREFIX + name, beat)], get_settings().worker_heartbeat_ttl_s)


def run_leases() -> Beacons:
    """Where run leases live: the database's beacons, reachable from a worker whose broker is away."""
    from lem_shared.db.beacons import DatabaseBeacons

    return DatabaseBeacons(get_settings().database_url)


def renew_lease(leases: Beacons, run_key: str, worker: str, attempt: int) -> None:
    beat = {"worker": worker, "attempt": attempt, "host": socket.gethostname(), "time": time.time()}
    leases.put([(LEASE_KEY_PREFIX + run_key, beat)], get_settings().worker_heartbeat_ttl_s)


def live_leases(leases: Beacons) -> dict[str, dict[str, Any]]:
    """Every live run lease, by run key."""
    return {key.removeprefix(LEASE_KEY_PREFIX): value for key, value in leases.scan(LEASE_KEY_PREFIX).items()}


def live_workers(store: Beacons) -> dict[str, dict[str, Any]]:
    """Every worker with a live heartbeat, by name (``pytorch@host``)."""
    return {beat["name"]: beat for beat in store.scan(WORKER_KEY_PREFIX).values()}


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
