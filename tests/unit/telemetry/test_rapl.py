"""RAPL energy through powercap sysfs, read from a STAND-IN powercap tree built in tmp_path.

The stand-in copies the kernel's layout: zones live under devices/virtual/powercap/intel-rapl/ (subzones nested
in their package) and class/powercap/ lists every zone flat as a link, as /sys/class/powercap does. Each zone
has name, energy_uj and max_energy_range_uj; the tests write energy_uj to move the counters.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from lem_telemetry.rapl import (
    RaplReader,
    RaplReadError,
    RaplStatus,
    discover,
    energy_between,
    summed_energy_between,
)

# max_energy_range_uj as a Xeon reports it (2^32 counts of 61.035 uJ)
XEON_RANGE_UJ = 262143328850


class Clock:
    """Stands in for both time.time and time.monotonic; the tests move it by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class StandInPowercap:
    """A stand-in powercap tree: ``root`` plays /sys/class/powercap, ``devices`` /sys/devices/virtual/powercap."""

    def __init__(self, base: Path, control_type: str = "intel-rapl") -> None:
        self.root = base / "class" / "powercap"
        self.devices = base / "devices" / "virtual" / "powercap"
        self.control_type = control_type
        self.root.mkdir(parents=True)
        (self.devices / control_type).mkdir(parents=True)
        self.zones: dict[str, Path] = {}

    def add_zone(
        self,
        package: int,
        sub: int | None,
        name: str,
        energy_uj: int | str,
        max_range_uj: int | str | None = XEON_RANGE_UJ,
        control_type: str | None = None,
    ) -> str:
        control = control_type or self.control_type
        package_dir_name = f"{control}:{package}"
        if sub is None:
            (self.devices / control).mkdir(parents=True, exist_ok=True)
            zone_dir = self.devices / control / package_dir_name
            dir_name = package_dir_name
        else:
            dir_name = f"{package_dir_name}:{sub}"
            zone_dir = self.devices / control / package_dir_name / dir_name
        zone_dir.mkdir(parents=True)
        (zone_dir / "name").write_text(name + "\n")
        (zone_dir / "energy_uj").write_text(f"{energy_uj}\n")
        if max_range_uj is not None:
            (zone_dir / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
        (self.root / dir_name).symlink_to(zone_dir, target_is_directory=True)
        self.zones[dir_name] = zone_dir
        return dir_name

    def set_energy(self, dir_name: str, energy_uj: int | str) -> None:
        (self.zones[dir_name] / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def two_packages(tmp_path: Path) -> StandInPowercap:
    """Two packages, each with a dram subzone; package 0 also has core and uncore."""
    tree = StandInPowercap(tmp_path)
    tree.add_zone(0, None, "package-0", 1_000_000_000)
    tree.add_zone(0, 0, "core", 600_000_000)
    tree.add_zone(0, 1, "uncore", 50_000_000)
    tree.add_zone(0, 2, "dram", 200_000_000)
    tree.add_zone(1, None, "package-1", 3_000_000_000)
    tree.add_zone(1, 0, "dram", 400_000_000)
    return tree


def _reader(tree: StandInPowercap, clock: Clock, **kwargs: float) -> RaplReader:
    return RaplReader(tree.root, wall_clock=clock, monotonic_clock=clock, **kwargs)


def test_discovery_finds_packages_and_their_subzones_with_stable_ids(two_packages: StandInPowercap) -> None:
    found = discover(two_packages.root)
    assert found.status is RaplStatus.AVAILABLE
    assert found.control_type == "intel-rapl"
    by_id = {d.domain_id: d for d in found.domains}
    assert list(by_id) == [
        "package-0",
        "package-1",
        "package-0/core",
        "package-0/uncore",
        "package-0/dram",
        "package-1/dram",
    ]
    assert {i: d.kind for i, d in by_id.items()} == {
        "package-0": "package",
        "package-1": "package",
        "package-0/core": "core",
        "package-0/uncore": "uncore",
        "package-0/dram": "dram",
        "package-1/dram": "dram",
    }
    assert [i for i, d in by_id.items() if d.summed] == ["package-0", "package-1", "package-0/dram", "package-1/dram"]
    assert all(d.max_energy_range_uj == XEON_RANGE_UJ for d in found.domains)
    assert by_id["package-1/dram"].zone_dir.name == "intel-rapl:1:0"
    assert "package-0/dram" in found.message


def test_the_nested_devices_layout_gives_the_same_domains(two_packages: StandInPowercap) -> None:
    flat = [d.domain_id for d in discover(two_packages.root).domains]
    nested = [d.domain_id for d in discover(two_packages.devices).domains]
    assert nested == flat


def test_mmio_zones_are_not_read_beside_the_msr_ones(two_packages: StandInPowercap) -> None:
    # intel-rapl-mmio re-exposes package-0: reading it too would count the package twice
    two_packages.add_zone(0, None, "package-0", 999, control_type="intel-rapl-mmio")
    found = discover(two_packages.root)
    assert [d.domain_id for d in found.domains if d.kind == "package"] == ["package-0", "package-1"]
    assert all(d.zone_dir.name.startswith("intel-rapl:") for d in found.domains)


def test_amd_rapl_folder_and_die_names_are_packages(tmp_path: Path) -> None:
    tree = StandInPowercap(tmp_path, control_type="amd-rapl")
    tree.add_zone(0, None, "package-0-die-0", 10)
    tree.add_zone(1, None, "package-0-die-1", 20)
    tree.add_zone(2, None, "psys", 30)
    found = discover(tree.root)
    assert found.status is RaplStatus.AVAILABLE
    assert found.control_type == "amd-rapl"
    assert [(d.domain_id, d.kind, d.summed) for d in found.domains] == [
        ("package-0-die-0", "package", True),
        ("package-0-die-1", "package", True),
        ("psys", "psys", False),  # psys contains the packages: recorded, never summed
    ]


def test_reading_gives_joules_and_hand_worked_differences(two_packages: StandInPowercap, clock: Clock) -> None:
    reader = _reader(two_packages, clock)
    first = reader.read()
    assert first.t == clock.now
    assert first.domains["package-0"].energy_j == pytest.approx(1000.0)
    assert first.domains["package-1/dram"].energy_j == pytest.approx(400.0)
    assert all(e.wraps == 0 and e.resets == 0 and e.reset_reason is None for e in first.domains.values())

    clock.now += 2.0
    two_packages.set_energy("intel-rapl:0", 1_000_000_000 + 150_000_000)  # 150 J in 2 s: 75 W
    two_packages.set_energy("intel-rapl:0:0", 600_000_000 + 100_000_000)
    two_packages.set_energy("intel-rapl:0:1", 50_000_000 + 10_000_000)
    two_packages.set_energy("intel-rapl:0:2", 200_000_000 + 12_500_000)
    two_packages.set_energy("intel-rapl:1", 3_000_000_000 + 90_000_000)
    two_packages.set_energy("intel-rapl:1:0", 400_000_000 + 7_250_000)
    second = reader.read()
    assert second.t == first.t + 2.0
    assert second.domains["package-0"].energy_j == pytest.approx(1150.0)
    assert second.domains["package-0"].raw_uj == 1_150_000_000
    deltas = energy_between(first, second)
    assert deltas == {
        "package-0": pytest.approx(150.0),
        "package-1": pytest.approx(90.0),
        "package-0/core": pytest.approx(100.0),
        "package-0/uncore": pytest.approx(10.0),
        "package-0/dram": pytest.approx(12.5),
        "package-1/dram": pytest.approx(7.25),
    }
    # packages + dram only: 150 + 90 + 12.5 + 7.25; core and uncore lie inside the package
    assert summed_energy_between(first, second, reader.domains) == pytest.approx(259.75)
    with pytest.raises(ValueError, match="time order"):
        energy_between(second, first)


def test_a_wraparound_continues_the_counter(two_packages: StandInPowercap, clock: Clock) -> None:
    two_packages.set_energy("intel-rapl:0", XEON_RANGE_UJ - 1_000_000)  # 1 J below the top
    reader = _reader(two_packages, clock)
    before = reader.read()
    clock.now += 1.0
    two_packages.set_energy("intel-rapl:0", 500_000)  # wrapped: 1 J to the top, then 0.5 J
    after = reader.read()
    package = after.domains["package-0"]
    assert package.wraps == 1
    assert package.reset_reason is None
    assert package.energy_j == pytest.approx((XEON_RANGE_UJ + 500_000) / 1e6)
    assert energy_between(before, after)["package-0"] == pytest.approx(1.5)
    # the other domains did not move, so the sum is the wrapped package's 1.5 J
    assert summed_energy_between(before, after, reader.domains) == pytest.approx(1.5)


def test_two_wraps_over_time_sum_to_the_true_energy(tmp_path: Path, clock: Clock) -> None:
    tree = StandInPowercap(tmp_path)
    start_uj = XEON_RANGE_UJ // 2  # wraps after 131 kJ and again after 393 kJ
    tree.add_zone(0, None, "package-0", start_uj)
    tree.add_zone(0, 0, "dram", 0)
    reader = _reader(tree, clock)
    first = reader.read()
    package_w, dram_w, step_s, steps = 250.0, 20.0, 60.0, 36  # 36 min at 250 W: 540 kJ
    for i in range(1, steps + 1):
        clock.now += step_s
        tree.set_energy("intel-rapl:0", (start_uj + int(package_w * step_s * 1e6) * i) % XEON_RANGE_UJ)
        tree.set_energy("intel-rapl:0:0", int(dram_w * step_s * 1e6) * i)
        last = reader.read()
    assert last.domains["package-0"].wraps == 2
    assert last.domains["package-0"].resets == 0
    assert last.domains["package-0"].energy_j == pytest.approx((start_uj + 540_000_000_000) / 1e6)
    assert energy_between(first, last) == {
        "package-0": pytest.approx(540_000.0),
        "package-0/dram": pytest.approx(43_200.0),
    }
    assert summed_energy_between(first, last, reader.domains) == pytest.approx(583_200.0)


def test_a_decrease_without_a_known_range_is_a_reset_not_energy(tmp_path: Path, clock: Clock) -> None:
    tree = StandInPowercap(tmp_path)
    tree.add_zone(0, None, "package-0", 5_000_000, max_range_uj="garbage")
    reader = _reader(tree, clock)
    assert reader.domains[0].max_energy_range_uj is None
    assert reader.max_read_interval_s is None
    first = reader.read()
    clock.now += 1.0
    tree.set_energy("intel-rapl:0", 1_000_000)
    after_reset = reader.read()
    package = after_reset.domains["package-0"]
    assert package.resets == 1 and package.wraps == 0
    assert "max_energy_range_uj is unknown" in (package.reset_reason or "")
    assert package.energy_j == pytest.approx(5.0)  # nothing invented
    assert energy_between(first, after_reset) == {"package-0": None}
    assert summed_energy_between(first, after_reset, reader.domains) is None
    clock.now += 1.0
    tree.set_energy("intel-rapl:0", 3_000_000)  # counting resumes from the new baseline
    later = reader.read()
    assert later.domains["package-0"].reset_reason is None
    assert later.domains["package-0"].energy_j == pytest.approx(7.0)
    assert energy_between(after_reset, later) == {"package-0": pytest.approx(2.0)}


def test_an_implausible_jump_is_a_reset(two_packages: StandInPowercap, clock: Clock) -> None:
    reader = _reader(two_packages, clock)
    reader.read()
    clock.now += 1.0
    two_packages.set_energy("intel-rapl:0", 1_000_000_000 + 5_000_000_000)  # 5 kJ in 1 s
    reading = reader.read()
    package = reading.domains["package-0"]
    assert package.resets == 1
    assert "5000 W" in (package.reset_reason or "")
    assert package.energy_j == pytest.approx(1000.0)
    # a forward "wrap" after a real counter reset (to near zero from low) is just as implausible
    clock.now += 1.0
    two_packages.set_energy("intel-rapl:1", 1_000)
    assert reader.read().domains["package-1"].resets == 1


def test_a_gap_long_enough_to_hide_a_wrap_is_a_reset(two_packages: StandInPowercap, clock: Clock) -> None:
    reader = _reader(two_packages, clock, max_plausible_power_w=500.0)
    assert reader.max_read_interval_s == pytest.approx(XEON_RANGE_UJ / 500e6)  # 524 s
    reader.read()
    clock.now += 600.0
    two_packages.set_energy("intel-rapl:0", 1_000_000_000 + 60_000_000_000)  # 100 W, but a wrap could hide in it
    package = reader.read().domains["package-0"]
    assert package.resets == 1
    assert "whole wrap" in (package.reset_reason or "")


def test_missing_dram_leaves_the_package_alone(tmp_path: Path, clock: Clock) -> None:
    tree = StandInPowercap(tmp_path)
    tree.add_zone(0, None, "package-0", 1_000_000)
    tree.add_zone(0, 0, "core", 500_000)
    reader = _reader(tree, clock)
    assert [d.domain_id for d in reader.domains] == ["package-0", "package-0/core"]
    first = reader.read()
    clock.now += 1.0
    tree.set_energy("intel-rapl:0", 41_000_000)
    tree.set_energy("intel-rapl:0:0", 30_500_000)
    assert summed_energy_between(first, reader.read(), reader.domains) == pytest.approx(40.0)


@pytest.mark.parametrize("make", ["no folder", "empty folder", "other control types only"])
def test_an_absent_tree_is_absent(tmp_path: Path, clock: Clock, make: str) -> None:
    root = tmp_path / "powercap"
    if make != "no folder":
        root.mkdir()
    if make == "other control types only":
        zone = root / "dtpm:0"
        zone.mkdir()
        (zone / "name").write_text("soc\n")
        (zone / "energy_uj").write_text("1\n")
    reader = RaplReader(root, wall_clock=clock, monotonic_clock=clock)
    assert reader.status is RaplStatus.ABSENT
    assert "virtual machines" in reader.discovery.message
    assert reader.domains == ()
    reading = reader.read()
    assert reading.domains == {} and reading.t == clock.now


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file, whatever its mode")
def test_a_root_only_counter_is_no_permission_with_the_fix(two_packages: StandInPowercap, clock: Clock) -> None:
    (two_packages.zones["intel-rapl:1:0"] / "energy_uj").chmod(0)
    reader = _reader(two_packages, clock)
    assert reader.status is RaplStatus.NO_PERMISSION
    message = reader.discovery.message
    assert "intel-rapl:1:0/energy_uj cannot be read by this user" in message
    assert f"sudo chmod o+r {two_packages.root}/intel-rapl:*/energy_uj" in message
    assert "udev rule" in message and "as root" in message
    assert len(reader.discovery.domains) == 6  # still listed, so the user sees what would be measured
    assert reader.domains == ()
    assert reader.read().domains == {}


def test_garbage_in_energy_uj_names_the_file(two_packages: StandInPowercap, clock: Clock) -> None:
    two_packages.set_energy("intel-rapl:0:2", "12a34")
    with pytest.raises(RaplReadError, match=r"intel-rapl:0:2/energy_uj holds '12a34'"):
        discover(two_packages.root)
    two_packages.set_energy("intel-rapl:0:2", 1)
    reader = _reader(two_packages, clock)
    reader.read()
    for garbage in ("", "-5", "1.5e6"):
        two_packages.set_energy("intel-rapl:1", garbage)
        with pytest.raises(ValueError, match=r"intel-rapl:1/energy_uj holds .*not a whole number of microjoules"):
            reader.read()


def test_a_counter_above_its_range_is_refused(two_packages: StandInPowercap, clock: Clock) -> None:
    reader = _reader(two_packages, clock)
    two_packages.set_energy("intel-rapl:0", XEON_RANGE_UJ + 1)
    with pytest.raises(RaplReadError, match="above its max_energy_range_uj"):
        reader.read()


@pytest.mark.parametrize("bad", [0.0, -10.0, float("nan"), float("inf"), True, 1e9])
def test_a_bad_power_ceiling_is_refused(two_packages: StandInPowercap, bad: float) -> None:
    with pytest.raises(ValueError, match="max_plausible_power_w"):
        RaplReader(two_packages.root, max_plausible_power_w=bad)


@pytest.mark.parametrize("state", ["available", "absent"])
def test_the_status_is_reported_once_not_per_read(
    two_packages: StandInPowercap, clock: Clock, caplog: pytest.LogCaptureFixture, state: str
) -> None:
    root = two_packages.root if state == "available" else two_packages.root / "missing"
    with caplog.at_level(logging.INFO, logger="lem_telemetry.rapl"):
        reader = RaplReader(root, wall_clock=clock, monotonic_clock=clock)
        for _ in range(3):
            clock.now += 1.0
            reader.read()
    records = [r for r in caplog.records if r.name == "lem_telemetry.rapl"]
    assert len(records) == 1
    assert f"RAPL {state}" in records[0].getMessage()
    assert records[0].levelno == (logging.INFO if state == "available" else logging.WARNING)
    # the status is settled when the reader is made: a tree that appears later is not picked up per read
    if state == "absent":
        (two_packages.root / "missing").mkdir()
        (two_packages.root / "missing" / "intel-rapl:0").symlink_to(two_packages.zones["intel-rapl:0"])
        assert reader.read().domains == {}
        assert reader.status is RaplStatus.ABSENT
