"""The daemon's heartbeats (Redis, or the database on a stack without Redis): every ``telemetry_heartbeat_s`` one
per GPU and one for the host.

The host hash carries ``rapl`` (the RAPL status: available, absent, no_permission or error) and ``rapl_message``
(what was found, or why nothing can be read and the fix). Key names and the reader live in
``lem_shared.wire.heartbeat`` (the planner and ``lem doctor`` read them there).
Each lives ``telemetry_heartbeat_ttl_s``, so a daemon that dies stops looking alive; a daemon that stops cleanly
deletes its keys. The store being away is logged once (and its return once); sampling never waits for it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from lem_shared.redact import redact
from lem_shared.wire import heartbeat
from lem_telemetry.sampler import GpuSampler
from lem_telemetry.sources import HostReading

log = logging.getLogger(__name__)


class HeartbeatPublisher:
    def __init__(
        self,
        store: heartbeat.Beacons,
        host: str,
        source_name: str,
        sampler: GpuSampler | None,
        latest_host: Callable[[], HostReading | None],
        period_s: float,
        ttl_s: float,
        note: str | None = None,
        rapl: Callable[[], tuple[str, str]] | None = None,
    ) -> None:
        self.store = store
        self.host = host
        self.source_name = source_name
        self.sampler = sampler
        self.latest_host = latest_host
        self.period_s = period_s
        self.ttl_s = ttl_s
        self.note = note
        self.rapl = rapl  # (status, message), asked at every beat
        self.pid = os.getpid()
        self._away = False
        self._keys: set[str] = set()

    def run(self, stop: threading.Event) -> None:
        """Beat now and then every period until ``stop`` is set; then remove this daemon's heartbeats."""
        self.beat()
        while not stop.wait(self.period_s):
            self.beat()
        self.clear()

    def beats(self) -> list[tuple[str, dict[str, Any]]]:
        now = time.time()
        beats: list[tuple[str, dict[str, Any]]] = []
        if self.sampler is not None:
            for health in self.sampler.health:
                reading = self.sampler.latest.get(health.uuid)
                if reading is None:
                    continue
                beats.append((heartbeat.gpu_key(health.uuid), {
                    "host": self.host, "gpu_uuid": health.uuid, "gpu_index": health.index, "time": reading.t,
                    "power_w": reading.power_w, "temperature_c": reading.temperature_c,
                    "source": self.source_name, "state": "lost" if health.lost else "ok", "pid": self.pid,
                    "updated_at": now,
                }))  # fmt: skip
        host_reading = self.latest_host()
        beats.append((heartbeat.host_key(self.host), {
            "host": self.host, "time": now, "source": self.source_name,
            "gpus": 0 if self.sampler is None else len(self.sampler.health), "note": self.note, "pid": self.pid,
            "cpu_percent": None if host_reading is None else host_reading.cpu_percent,
            "memory_used_bytes": None if host_reading is None else host_reading.memory_used_bytes,
            "memory_total_bytes": None if host_reading is None else host_reading.memory_total_bytes,
            "updated_at": now,
        }))  # fmt: skip
        if self.rapl is not None:
            beats[-1][1]["rapl"], beats[-1][1]["rapl_message"] = self.rapl()
        return beats

    def beat(self) -> None:
        beats = self.beats()
        try:
            self.store.put(beats, self.ttl_s)
        except heartbeat.BeaconsAway as error:
            if not self._away:
                log.warning(
                    "heartbeat store unreachable (%s); heartbeats paused, sampling goes on",
                    redact(str(error)).splitlines()[0],
                )
                self._away = True
            return
        self._keys.update(key for key, _ in beats)
        if self._away:
            log.info("heartbeat store reachable again; heartbeats resumed")
            self._away = False

    def clear(self) -> None:
        if not self._keys:
            return
        try:
            self.store.delete(*self._keys)
        except heartbeat.BeaconsAway:
            pass  # they expire on their own within the TTL
        finally:
            self.store.close()
