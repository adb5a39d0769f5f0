"""Several hosts for real (``conftest.py``): a campaign spread over two GPU hosts while one is lost, cut off from
the broker or from the database for 30 s, or has its clock 2 s off, and while the broker restarts. Every run
ends once, is measured once, and takes its energy from the right host's telemetry on the right clock.

Each test adds a row to the fleet's report (``LEM_FLEET_REPORT``, JSON lines): scenario, runs expected, runs
done once, runs doubled (measured more than once: a second metrics row, or a measurement a worker made and could
not record because the run had been taken from it), and samples lost from the GPU hosts' stored series."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from lem_shared.db.models import GpuSample, Run, RunMetrics, RunStatus
from lem_shared.db.session import session_scope
from lem_shared.dispatch import aware
from lem_shared.measure.energy import Sample, window_energy
from tests.fleet.conftest import (
    GPU_HOSTS,
    GPU_OF,
    FleetStack,
    campaign_status,
    datetime_utc,
    metrics_rows,
    runs_of,
    samples_lost,
)
from tests.integration.telemetry_helpers import wait_for

PARTITION_S = 30.0


@pytest.fixture
def fleet_up(fleet: FleetStack) -> FleetStack:
    """Every host up with its links, its clock true, before the test."""
    for name in GPU_HOSTS:
        host = fleet.host(name)
        for path in ("broker", "database"):
            host.set_link(path, True)
        if not (host.alive("worker") and host.alive("telemetry")):
            fleet.restart_gpu_host(name)
    fleet.start_control()
    fleet.wait_ready(["ctl", *GPU_HOSTS])
    return fleet


def running_on(campaign_id: int, host: str | None = None) -> Run | None:
    return next(
        (r for r in runs_of(campaign_id) if r.status == RunStatus.RUNNING and (host is None or r.host == host)), None
    )


def wasted(fleet: FleetStack, run_id: int) -> int:
    """Measurements of the run that a worker made and threw away (the run was no longer its claim)."""
    marker = f"run {run_id}: attempt "
    return sum(
        line.count(marker)
        for name in GPU_HOSTS
        for line in fleet.host(name).log("worker").splitlines()
        if "recorded nothing" in line
    )


def outcome(fleet: FleetStack, scenario: str, campaign_id: int, started: float, hosts: tuple[str, ...]) -> dict:
    """Check every run ended done and measured once; add the scenario's row to the report and return it."""
    runs = runs_of(campaign_id)
    once = [r for r in runs if r.status == RunStatus.DONE and metrics_rows(r.id) == 1]
    doubled = sum(max(metrics_rows(r.id) - 1, 0) + wasted(fleet, r.id) for r in runs)
    lost = sum(samples_lost(GPU_OF[h], started, time.time() - 2) for h in hosts)
    row = {
        "scenario": scenario,
        "runs_expected": len(runs),
        "runs_done_once": len(once),
        "runs_doubled": doubled,
        "samples_lost": lost,
    }
    fleet.report.append(row)
    print(row)
    assert [(r.status, metrics_rows(r.id)) for r in runs] == [("done", 1)] * len(runs), [
        (r.id, r.status, r.attempts, r.error) for r in runs
    ]
    assert doubled == 0, row
    return row


def energy_from(run: Run) -> RunMetrics:
    with session_scope() as s:
        metrics = s.get(RunMetrics, run.id)
    assert metrics is not None and metrics.energy_j is not None and metrics.energy_j > 0, (
        run.id,
        run.host,
        metrics and metrics.energy_note,
        metrics and metrics.analysis and [c for c in metrics.analysis.get("checks", []) if c["status"] != "pass"],
    )
    assert metrics.energy_source == "nvml_energy_counter", metrics.energy_source
    return metrics


def test_a_gpu_host_lost_mid_run_its_run_is_measured_once_on_the_other_host(fleet_up: FleetStack) -> None:
    fleet, started = fleet_up, time.time()
    campaign_id = fleet.start_campaign("host-lost", cycles=4, window_s=6)
    victim = wait_for(lambda: running_on(campaign_id, "gpua"), 180, "a run to start on gpua")
    lost_host = fleet.host("gpua")
    lost_host.kill_everything()  # every process of the host, engine host and telemetry included
    for path in ("broker", "database"):
        lost_host.set_link(path, False)

    wait_for(lambda: campaign_status(campaign_id) != "running", 300, "the campaign to end")
    run = next(r for r in runs_of(campaign_id) if r.id == victim.id)
    assert run.attempts == 2 and "vanished" in (run.error or ""), (run.attempts, run.error)
    assert (run.host, run.gpu_uuids) == ("gpub", [GPU_OF["gpub"]])  # measured again on the other host ...
    metrics = energy_from(run)  # ... with the energy of that host's replayed GPU (half the trace's power)
    assert metrics.mean_power_w is not None and metrics.mean_power_w < 400, metrics.mean_power_w
    outcome(fleet, "GPU host lost mid-run", campaign_id, started, ("gpub",))


@pytest.mark.parametrize("path", ["broker", "database"])
def test_a_gpu_host_cut_off_from_one_server_for_30_s_loses_nothing(fleet_up: FleetStack, path: str) -> None:
    """The link to one server down for 30 s while the host measures, then up: the run it holds is neither taken
    from it nor measured twice (the lease in the database or the heartbeat in the broker shows it alive), its
    telemetry spills to its disk and back-fills, and the campaign ends."""
    fleet, started = fleet_up, time.time()
    campaign_id = fleet.start_campaign(f"cut-off-{path}", cycles=4, window_s=6)
    held = wait_for(lambda: running_on(campaign_id, "gpua"), 180, "a run to start on gpua")
    host = fleet.host("gpua")
    host.set_link(path, False)
    time.sleep(PARTITION_S)
    host.set_link(path, True)

    wait_for(lambda: campaign_status(campaign_id) != "running", 300, "the campaign to end")
    run = next(r for r in runs_of(campaign_id) if r.id == held.id)
    assert run.attempts == 1 and run.host == "gpua" and run.gpu_uuids == [GPU_OF["gpua"]], (run.attempts, run.error)
    energy_from(run)
    row = outcome(fleet, f"GPU host cut off from the {path} for {PARTITION_S:.0f} s", campaign_id, started, GPU_HOSTS)
    assert row["samples_lost"] == 0, row
    if path == "database":
        assert "spilling samples" in host.log("telemetry") and "back-filled" in host.log("telemetry")


def test_clocks_2_s_off_are_detected_and_joined_by_their_offsets(fleet_up: FleetStack) -> None:
    """gpua's whole clock 2 s ahead (worker and telemetry agree: flagged, joined as stamped); gpub's telemetry 2 s
    ahead of its worker (the samples shifted onto the run's clock, and flagged)."""
    fleet = fleet_up
    fleet.restart_gpu_host("gpua", clock_offset_s=2.0)
    fleet.restart_gpu_host("gpub", telemetry_clock_offset_s=2.0)
    fleet.wait_ready(["ctl", *GPU_HOSTS])
    started = time.time()
    try:
        campaign_id = fleet.start_campaign("skewed-clocks", cycles=4, window_s=5)
        wait_for(lambda: campaign_status(campaign_id) != "running", 300, "the campaign to end")
        runs = runs_of(campaign_id)
        assert {r.host for r in runs} == set(GPU_HOSTS), [r.host for r in runs]
        for run in runs:
            metrics = energy_from(run)
            assert metrics.analysis is not None
            (check,) = [c for c in metrics.analysis["checks"] if c["name"] == "clock_join"]
            clock = metrics.analysis["clock"]
            assert check["status"] == "warning", check
            if run.host == "gpua":
                assert run.clock_offset_s == pytest.approx(2.0, abs=0.1), run.clock_offset_s
                assert clock["telemetry_offset_s"] == pytest.approx(2.0, abs=0.1) and clock["shift_s"] == 0.0
                assert "fix the host's time sync" in check["message"]
                shift = 0.0
            else:
                assert run.clock_offset_s == pytest.approx(0.0, abs=0.1), run.clock_offset_s
                assert clock["skew_s"] == pytest.approx(-2.0, abs=0.1) and clock["shift_s"] == clock["skew_s"]
                assert "shifted" in check["message"]
                shift = clock["shift_s"]
            # The energy is the counter's over the window on the samples' own clock: the run's window moved by
            # the skew into the telemetry's clock.
            start, end = aware(run.window_start).timestamp(), aware(run.window_end).timestamp()
            with session_scope() as s:
                rows = s.execute(
                    select(GpuSample.time, GpuSample.energy_mj, GpuSample.power_w)
                    .where(
                        GpuSample.gpu_uuid == run.gpu_uuid,
                        GpuSample.time >= datetime_utc(start - shift - 3),
                        GpuSample.time <= datetime_utc(end - shift + 3),
                    )
                    .order_by(GpuSample.time)
                ).all()
            samples = [Sample(aware(t).timestamp(), e, p) for t, e, p in rows]
            expected = window_energy(samples, start - shift, end - shift)
            assert metrics.energy_j == pytest.approx(expected.energy_j, rel=0.01), (run.host, expected)
        outcome(fleet, "clocks 2 s off (gpua whole host, gpub telemetry only)", campaign_id, started, GPU_HOSTS)
    finally:
        for name in GPU_HOSTS:
            fleet.restart_gpu_host(name)


def test_the_broker_restarted_with_runs_in_flight_on_two_hosts(fleet_up: FleetStack) -> None:
    fleet, started = fleet_up, time.time()
    campaign_id = fleet.start_campaign("broker-restart", cycles=4, window_s=8)
    wait_for(
        lambda: len([r for r in runs_of(campaign_id) if r.status == RunStatus.RUNNING]) == 2,
        180,
        "a run in flight on each host",
        poll=0.2,
    )
    in_flight = {r.id: r for r in runs_of(campaign_id) if r.status == RunStatus.RUNNING}
    fleet.fleet.kill_redis()  # every queued message and heartbeat is gone with it
    time.sleep(1)
    fleet.fleet.start_redis()

    wait_for(lambda: campaign_status(campaign_id) != "running", 300, "the campaign to end")
    for run in runs_of(campaign_id):
        if run.id in in_flight:
            assert run.attempts == 1 and run.host == in_flight[run.id].host, (run.attempts, run.host, run.error)
        energy_from(run)
    outcome(fleet, "broker restarted, runs in flight on two hosts", campaign_id, started, GPU_HOSTS)
