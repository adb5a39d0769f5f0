"""CPU package and DRAM energy from RAPL, read through Linux powercap sysfs (issue 19).

Each RAPL zone has ``energy_uj``, a cumulative microjoule counter that wraps at ``max_energy_range_uj``.
``RaplReader`` finds the zones once, reports once whether they can be read, and turns the raw counters into
per-domain counters in joules that keep counting across wraps. Pure stdlib: this runs on bare GPU hosts.
"""

from __future__ import annotations

import enum
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_POWERCAP_ROOT = Path("/sys/class/powercap")

# Control types that expose RAPL energy, in order of preference. AMD parts appear under "intel-rapl" on mainline
# kernels; "amd-rapl" is accepted for kernels that name it so. Only one control type is read: the others
# ("intel-rapl-mmio" and the like) re-expose the same package counters, and summing both would count it twice.
RAPL_CONTROL_TYPES = ("intel-rapl", "amd-rapl")

# Kinds whose energy adds up to the CPU's: package and DRAM are disjoint on Intel (AMD has no DRAM zone).
# core and uncore lie inside the package, and psys contains it, so they are recorded but never summed.
SUMMED_KINDS = frozenset({"package", "dram"})

# No CPU package or DRAM draws 1 kW (the largest server parts are rated near 500 W). An increment implying more
# is taken as a counter reset, not as energy.
DEFAULT_MAX_PLAUSIBLE_POWER_W = 1000.0

# Slack added to the interval in the plausibility check: RAPL updates its counter about every millisecond, so
# over a very short interval one update can hold more energy than the interval's length explains.
_PLAUSIBILITY_SLACK_S = 0.05

_ZONE_DIR = re.compile(r"^(?P<control>[a-z][a-z-]*):(?P<package>\d+)(?::(?P<sub>\d+))?$")
_PACKAGE_NAME = re.compile(r"^package-\d+(-die-\d+)?$")


class RaplStatus(enum.Enum):
    AVAILABLE = "available"
    ABSENT = "absent"  # no powercap folder or no RAPL zone in it: virtual machines, most cloud instances
    NO_PERMISSION = "no_permission"  # energy_uj is root-only on kernels patched against PLATYPUS (CVE-2020-8694)


class RaplReadError(ValueError):
    """An ``energy_uj`` file could not be read or did not hold a counter; the message names the file."""


@dataclass(frozen=True, slots=True)
class RaplDomain:
    domain_id: str  # stable: "package-0", "package-0/dram", "package-0/core"
    kind: str  # "package", "dram", "core", "uncore" or the zone's own name (e.g. "psys")
    zone_dir: Path
    max_energy_range_uj: int | None  # None when the file is missing or unreadable: a decrease is then a reset

    @property
    def summed(self) -> bool:
        return self.kind in SUMMED_KINDS

    @property
    def energy_file(self) -> Path:
        return self.zone_dir / "energy_uj"


@dataclass(frozen=True, slots=True)
class RaplDiscovery:
    status: RaplStatus
    domains: tuple[RaplDomain, ...]  # listed even when NO_PERMISSION, so the user sees what would be measured
    message: str  # one line: what was found, or why nothing can be read and how to fix it
    control_type: str | None = None  # the powercap control type read ("intel-rapl"); None when ABSENT


@dataclass(frozen=True, slots=True)
class DomainEnergy:
    energy_j: float  # cumulative, never decreasing; starts at the counter's raw value on the first read
    raw_uj: int  # energy_uj as read
    wraps: int  # wraparounds bridged so far
    resets: int  # readings so far whose increment could not be known (none of it was counted)
    reset_reason: str | None  # why this reading is a reset; None when its increment was counted


@dataclass(frozen=True, slots=True)
class RaplReading:
    t: float  # Unix seconds
    t_monotonic: float
    domains: dict[str, DomainEnergy]  # by domain_id; empty unless the status is AVAILABLE


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _parse_counter(text: str, path: Path) -> int:
    if not (text.isascii() and text.isdigit()):
        raise RaplReadError(
            f"{path} holds {text[:40]!r}, not a whole number of microjoules: the powercap driver or the tree at "
            f"this root is broken; check it with `cat {path}` or point the reader at the right powercap folder"
        )
    return int(text)


def _read_max_range(zone_dir: Path) -> int | None:
    text = _read_text(zone_dir / "max_energy_range_uj")
    if text is None or not (text.isascii() and text.isdigit()) or int(text) == 0:
        return None
    return int(text)


def permission_fix(root: Path, control_type: str) -> str:
    """The one-line fix for root-only energy_uj files under ``root``."""
    return (
        f"run telemetry as root, or let other users read the counters with "
        f"`sudo chmod o+r {root}/{control_type}:*/energy_uj` (lost at reboot; a udev rule running the same chmod "
        f"makes it last). Note that the kernel restricted these files because any local user can use them as a "
        f"side channel (PLATYPUS)"
    )


def _zone_dirs(root: Path) -> dict[str, Path]:
    """Every zone folder by name. /sys/class/powercap lists zones flat (as links) and nests subzones in their
    package; /sys/devices/virtual/powercap nests everything under the control type. Both are searched."""
    found: dict[str, Path] = {}
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name in found or not entry.is_dir():
                continue
            if _ZONE_DIR.match(entry.name):
                found[entry.name] = entry
                pending.append(entry)
            elif folder == root and entry.name in RAPL_CONTROL_TYPES:
                pending.append(entry)
    return found


def discover(root: Path = DEFAULT_POWERCAP_ROOT) -> RaplDiscovery:
    """Find the RAPL packages and their subzones under ``root`` and check that their counters can be read.

    Raises RaplReadError when a counter is readable but does not hold a number."""
    root = Path(root)
    if not root.is_dir():
        return RaplDiscovery(
            RaplStatus.ABSENT, (), f"no powercap folder at {root} (virtual machines and most clouds have none)"
        )
    zones = _zone_dirs(root)
    by_control: dict[str, list[tuple[int, int | None, Path]]] = {}
    for dir_name, zone_dir in zones.items():
        match = _ZONE_DIR.match(dir_name)
        assert match is not None  # _zone_dirs keeps only matching names
        sub = match["sub"]
        entry = (int(match["package"]), None if sub is None else int(sub), zone_dir)
        by_control.setdefault(match["control"], []).append(entry)
    control_type = next((c for c in RAPL_CONTROL_TYPES if c in by_control), None)
    if control_type is None:
        return RaplDiscovery(
            RaplStatus.ABSENT, (), f"no RAPL zone under {root} (virtual machines and most clouds expose none)"
        )

    domains: list[RaplDomain] = []
    top_ids: dict[int, str] = {}
    # Top-level zones first, so that each subzone can be named after its package.
    for package, sub, zone_dir in sorted(by_control[control_type], key=lambda e: (e[1] is not None, e[0], e[1] or 0)):
        name = _read_text(zone_dir / "name")
        if not name or not (zone_dir / "energy_uj").exists():
            continue  # a zone without a name or a counter measures nothing we could report
        if sub is None:
            kind = "package" if _PACKAGE_NAME.match(name) else name
            domain_id = name
            top_ids[package] = domain_id
        else:
            kind = name
            domain_id = f"{top_ids.get(package, f'{control_type}:{package}')}/{name}"
        if any(d.domain_id == domain_id for d in domains):
            domain_id = f"{domain_id}@{zone_dir.name}"  # two zones of one name: keep both, told apart by folder
        domains.append(RaplDomain(domain_id, kind, zone_dir, _read_max_range(zone_dir)))

    if not domains:
        return RaplDiscovery(
            RaplStatus.ABSENT, (), f"RAPL zones under {root} have no name or energy_uj file", control_type
        )

    unreadable: list[Path] = []
    for domain in domains:
        try:
            text = domain.energy_file.read_text().strip()
        except PermissionError:
            unreadable.append(domain.energy_file)
            continue
        except OSError as err:
            raise RaplReadError(f"{domain.energy_file}: cannot be read ({err.strerror})") from err
        _parse_counter(text, domain.energy_file)
    listed = ", ".join(d.domain_id for d in domains)
    if unreadable:
        return RaplDiscovery(
            RaplStatus.NO_PERMISSION,
            tuple(domains),
            f"RAPL found ({listed}) but {unreadable[0]} cannot be read by this user "
            f"(energy_uj is root-only on kernels patched against PLATYPUS): "
            f"{permission_fix(root, control_type)}",
            control_type,
        )
    return RaplDiscovery(RaplStatus.AVAILABLE, tuple(domains), f"RAPL domains under {root}: {listed}", control_type)


@dataclass(slots=True)
class _Counter:
    last_raw_uj: int
    last_monotonic: float
    total_uj: int
    wraps: int = 0
    resets: int = 0


class RaplReader:
    """Reads every RAPL domain found under ``root`` as counters in joules that bridge wraparound.

    The status is found and logged once, when the reader is made; ``read`` never logs it again and, unless the
    status is AVAILABLE, returns a reading with no domains. Call ``read`` at least every ``max_read_interval_s``:
    over a longer interval a whole wrap could pass unseen, so such a reading is marked a reset.
    """

    def __init__(
        self,
        root: Path = DEFAULT_POWERCAP_ROOT,
        *,
        max_plausible_power_w: float = DEFAULT_MAX_PLAUSIBLE_POWER_W,
        wall_clock: Callable[[], float] = time.time,
        monotonic_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_plausible_power_w, bool) or not (
            isinstance(max_plausible_power_w, int | float) and math.isfinite(max_plausible_power_w)
        ):
            raise ValueError(f"max_plausible_power_w must be a finite number of watts, got {max_plausible_power_w!r}")
        if not 1.0 <= max_plausible_power_w <= 100_000.0:
            raise ValueError(
                f"max_plausible_power_w must lie between 1 and 100000 W (the default {DEFAULT_MAX_PLAUSIBLE_POWER_W:g}"
                f" W suits any CPU package), got {max_plausible_power_w!r}"
            )
        self._max_power_uw = float(max_plausible_power_w) * 1e6
        self._wall_clock = wall_clock
        self._monotonic_clock = monotonic_clock
        self.root = Path(root)
        discovery = discover(self.root)
        self.discovery = discovery
        self._counters: dict[str, _Counter] = {}
        level = logging.INFO if discovery.status is RaplStatus.AVAILABLE else logging.WARNING
        log.log(level, "RAPL %s: %s", discovery.status.value, discovery.message)

    @property
    def status(self) -> RaplStatus:
        return self.discovery.status

    @property
    def domains(self) -> tuple[RaplDomain, ...]:
        return self.discovery.domains if self.status is RaplStatus.AVAILABLE else ()

    @property
    def max_read_interval_s(self) -> float | None:
        """The longest gap between reads over which no wrap can go unseen; None when no range is known."""
        ranges = [d.max_energy_range_uj for d in self.domains if d.max_energy_range_uj is not None]
        return min(ranges) / self._max_power_uw if ranges else None

    def read(self) -> RaplReading:
        """Every domain's counter now. Raises RaplReadError when a counter cannot be read or is not a number."""
        if self.status is not RaplStatus.AVAILABLE:
            return RaplReading(self._wall_clock(), self._monotonic_clock(), {})
        raws: dict[str, int] = {}
        for domain in self.domains:
            path = domain.energy_file
            try:
                text = path.read_text().strip()
            except PermissionError as err:
                fix = permission_fix(self.root, self.discovery.control_type or RAPL_CONTROL_TYPES[0])
                raise RaplReadError(f"{path} can no longer be read by this user: {fix}") from err
            except OSError as err:
                raise RaplReadError(f"{path}: cannot be read ({err.strerror}); the zone may have gone away") from err
            raws[domain.domain_id] = _parse_counter(text, path)
        now_monotonic = self._monotonic_clock()
        energies = {
            domain.domain_id: self._advance(domain, raws[domain.domain_id], now_monotonic) for domain in self.domains
        }
        return RaplReading(self._wall_clock(), now_monotonic, energies)

    def _advance(self, domain: RaplDomain, raw_uj: int, now: float) -> DomainEnergy:
        range_uj = domain.max_energy_range_uj
        if range_uj is not None and raw_uj > range_uj:
            raise RaplReadError(
                f"{domain.energy_file} reads {raw_uj} uJ, above its max_energy_range_uj of {range_uj}: the counter "
                f"or its range is wrong; check both files in {domain.zone_dir}"
            )
        counter = self._counters.get(domain.domain_id)
        if counter is None:
            counter = _Counter(last_raw_uj=raw_uj, last_monotonic=now, total_uj=raw_uj)
            self._counters[domain.domain_id] = counter
            return DomainEnergy(raw_uj / 1e6, raw_uj, 0, 0, None)

        elapsed_s = max(now - counter.last_monotonic, 0.0)
        allowed_uj = self._max_power_uw * (elapsed_s + _PLAUSIBILITY_SLACK_S)
        reason: str | None = None
        increment_uj = raw_uj - counter.last_raw_uj
        wrapped = increment_uj < 0
        if wrapped:
            if range_uj is None:
                reason = "counter went back and max_energy_range_uj is unknown"
            else:
                increment_uj += range_uj
        if reason is None and range_uj is not None and self._max_power_uw * elapsed_s >= range_uj:
            reason = f"{elapsed_s:.0f} s since the last read: long enough for a whole wrap to pass unseen"
        if reason is None and increment_uj > allowed_uj:
            watts = increment_uj / 1e6 / max(elapsed_s, 1e-9)
            reason = f"increment of {increment_uj / 1e6:.3f} J in {elapsed_s:.3f} s implies {watts:.0f} W"

        counter.last_raw_uj = raw_uj
        counter.last_monotonic = now
        if reason is None:
            counter.total_uj += increment_uj
            counter.wraps += int(wrapped)
        else:
            counter.resets += 1
        return DomainEnergy(counter.total_uj / 1e6, raw_uj, counter.wraps, counter.resets, reason)


def energy_between(earlier: RaplReading, later: RaplReading) -> dict[str, float | None]:
    """Joules each domain used between two readings of one reader; None where a reset lies between them."""
    if later.t_monotonic < earlier.t_monotonic:
        raise ValueError("energy_between: `later` was read before `earlier`; pass the readings in time order")
    result: dict[str, float | None] = {}
    for domain_id, end in later.domains.items():
        start = earlier.domains.get(domain_id)
        if start is None or end.resets != start.resets:
            result[domain_id] = None
        else:
            result[domain_id] = end.energy_j - start.energy_j
    return result


def summed_energy_between(earlier: RaplReading, later: RaplReading, domains: tuple[RaplDomain, ...]) -> float | None:
    """Package plus DRAM joules between two readings (core, uncore and psys left out, as they overlap the
    package); None when any summed domain was reset in between or there is no summed domain."""
    by_id = energy_between(earlier, later)
    summed = [by_id.get(d.domain_id) for d in domains if d.summed]
    if not summed or any(e is None for e in summed):
        return None
    return sum(e for e in summed if e is not None)
