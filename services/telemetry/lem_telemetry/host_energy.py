"""The host's CPU package and DRAM energy: the daemon's RAPL thread, beside the GPUs' energy-counter threads.

Every ``telemetry_energy_interval_s`` (the NVML energy counter's cadence) ``RaplSampler`` reads every RAPL domain
through ``rapl.RaplReader`` and emits one ``HostEnergyReading`` per summed domain (``package-N`` and
``package-N/dram``; core, uncore and psys overlap the package and are left out). ``energy_j`` is the reader's
cumulative counter with wraps bridged; ``reset`` marks a reading whose increment is unknown. The first reading of
each domain after the daemon starts is a reset too: the counter's base and any wrap while no daemon ran are
unknown, so no difference may be taken across a restart.

No database or Redis code here: this module runs wherever ``sources`` runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lem_telemetry.rapl import RaplDomain, RaplReader, RaplReadError, RaplStatus
from lem_telemetry.sampler import run_on_schedule

log = logging.getLogger(__name__)

# The heartbeat's ``rapl`` field for a powercap tree whose counters are there but do not hold numbers.
RAPL_BROKEN = "error"


@dataclass(frozen=True, slots=True)
class HostEnergyReading:
    t: float  # Unix seconds
    domain: str  # "package-0", "package-0/dram"
    energy_j: float  # cumulative, wraps bridged; comparable only with readings of the same daemon process
    reset: bool  # the increment since the previous reading of this domain is unknown (none of it was counted)


class RaplSampler:
    """Reads RAPL on a schedule and hands each read's readings to ``emit`` (which must be thread-safe).

    ``status`` and ``message`` say what the heartbeat publishes: ``available``, ``absent``, ``no_permission``
    (with the fix), or ``error`` for a tree whose counters are not numbers; while reads fail, the message says why.
    """

    def __init__(
        self, root: Path, emit: Callable[[list[HostEnergyReading]], None], stop: threading.Event, interval_s: float
    ) -> None:
        self.emit = emit
        self.stop = stop
        self.interval_s = interval_s
        self.reader: RaplReader | None = None
        self.ticks = 0
        self.missed = 0
        self._read_error: str | None = None
        self._thread: threading.Thread | None = None
        self._summed: tuple[RaplDomain, ...] = ()
        self._seen: set[str] = set()
        self.resets: dict[str, int] = {}  # counter resets seen per domain (the daemon's own first reads aside)
        try:
            self.reader = RaplReader(root)
        except RaplReadError as error:
            self._status, self._message = RAPL_BROKEN, str(error)
            log.error("RAPL error: %s; recording no CPU package or DRAM energy", error)
            return
        self._status, self._message = self.reader.status.value, self.reader.discovery.message
        self._summed = tuple(domain for domain in self.reader.domains if domain.summed)
        longest = self.reader.max_read_interval_s
        if longest is not None and interval_s >= longest:
            log.warning(
                "RAPL is read every %.3g s, but a counter can wrap in %.3g s: every reading will count as a reset",
                interval_s,
                longest,
            )

    @property
    def available(self) -> bool:
        return self.reader is not None and self.reader.status is RaplStatus.AVAILABLE and bool(self._summed)

    @property
    def status(self) -> str:
        return self._status

    @property
    def message(self) -> str:
        if self._read_error is not None:
            return f"reads failing: {self._read_error}"
        return self._message

    def start(self) -> None:
        """Start the reading thread, when there is RAPL to read."""
        if not self.available:
            return
        self._thread = threading.Thread(target=self._read_until_stopped, name="telemetry-rapl", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def read_once(self) -> list[HostEnergyReading]:
        """One read of every summed domain; [] when RAPL cannot be read (logged once, and its return once)."""
        assert self.reader is not None
        try:
            reading = self.reader.read()
        except RaplReadError as error:
            if self._read_error is None:
                log.error("RAPL cannot be read (%s); retrying every %.3g s", error, self.interval_s)
            self._read_error = str(error)
            return []
        if self._read_error is not None:
            log.info("RAPL can be read again")
            self._read_error = None
        readings = []
        for domain in self._summed:
            energy = reading.domains[domain.domain_id]
            first = domain.domain_id not in self._seen
            self._seen.add(domain.domain_id)
            reset = first or energy.reset_reason is not None
            readings.append(HostEnergyReading(reading.t, domain.domain_id, energy.energy_j, reset))
            if energy.reset_reason is not None:
                self.resets[domain.domain_id] = self.resets.get(domain.domain_id, 0) + 1
                if self.resets[domain.domain_id] == 1:  # later ones are counted, and the count logged at stop
                    log.warning(
                        "RAPL %s reset (%s): its energy over that read is unknown",
                        domain.domain_id,
                        energy.reset_reason,
                    )
        return readings

    def _read_until_stopped(self) -> None:
        def step() -> None:
            readings = self.read_once()
            if readings:
                self.emit(readings)

        self.ticks, self.missed = run_on_schedule(self.interval_s, self.stop, step, "reading RAPL")
