"""The whole machine's energy, finalised by the control code: a run on two GPUs (the recorded H200 trace loaded
as two stand-in GPUs, the second at half the power), the host's CPU package and DRAM energy from RAPL samples
(stand-in readings of a host), their total and its carbon at a constant and a series intensity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, update

from lem_shared.db.models import Campaign, GpuSample, HostEnergySample, Run
from lem_shared.db.session import session_scope
from tests.integration.manifest import finalised_metrics, measured_run, trace_rows, utc

GPU_A, GPU_B = "GPU-whole-machine-a", "GPU-whole-machine-b"
HOST = "whole-machine-test-host"


@pytest.fixture
def two_gpus(stack_env, h200_trace_dir: Path):  # noqa: ANN001, ANN201
    """The trace as GPU A, and as GPU B with half its power and energy (and, with ``hot``, thermal throttling)."""
    a = trace_rows(h200_trace_dir / "h200_nvml_trace.jsonl", GPU_A)
    b = [
        {**r, "gpu_uuid": GPU_B, "gpu_index": 1, "power_w": r["power_w"] / 2, "energy_mj": r["energy_mj"] // 2}
        for r in trace_rows(h200_trace_dir / "h200_nvml_trace.jsonl", GPU_B)
    ]
    with session_scope() as s:
        s.execute(insert(GpuSample), a + b)
    marks = {}
    for line in (h200_trace_dir / "h200_nvml_marks.jsonl").read_text().splitlines():
        m = json.loads(line)
        marks[m["mark"].split(":")[0]] = m["t"]
    yield marks
    with session_scope() as s:
        s.execute(delete(GpuSample).where(GpuSample.gpu_uuid.in_([GPU_A, GPU_B])))
        s.execute(delete(HostEnergySample).where(HostEnergySample.host == HOST))


def _run_on(window: tuple[float, float], gpus: list[str], carbon: dict | None = None) -> int:
    run_id, campaign_id = measured_run(window, gpus[0], output_tokens=256)
    with session_scope() as s:
        s.execute(update(Run).where(Run.id == run_id).values(gpu_uuids=gpus, host=HOST))
        if carbon:
            campaign = s.get(Campaign, campaign_id)
            assert campaign is not None
            campaign.spec = {**campaign.spec, "carbon": carbon}
    return run_id


def _rapl(start: float, end: float, package_w: float, dram_w: float, step_s: float = 0.1) -> None:
    """Stand-in RAPL readings of HOST: package-0 and its dram at constant power, every ``step_s``."""
    rows, t = [], start - 3
    while t <= end + 3:
        for domain, watts in (("package-0", package_w), ("package-0/dram", dram_w)):
            rows.append({"host": HOST, "time": utc(t), "domain": domain, "energy_j": 1e6 + watts * t, "reset": False})
        t += step_s
    with session_scope() as s:
        s.execute(insert(HostEnergySample), rows)


def test_a_two_gpu_run_sums_its_gpus_and_keeps_each_ones_figures(two_gpus: dict) -> None:
    window = (two_gpus["decode_bs1_start"], two_gpus["decode_bs1_end"])
    both = finalised_metrics(_run_on(window, [GPU_A, GPU_B]))
    alone = finalised_metrics(_run_on(window, [GPU_A]))
    assert both.energy_j is not None and alone.energy_j is not None and both.analysis is not None
    per_gpu = both.analysis["per_gpu"]
    assert set(per_gpu) == {GPU_A, GPU_B}
    assert per_gpu[GPU_A]["energy_j"] == pytest.approx(alone.energy_j, rel=1e-9)
    # GPU B is the trace at half its power: the run's energy is 1.5 times GPU A's, within a counter step
    assert per_gpu[GPU_B]["energy_j"] == pytest.approx(alone.energy_j / 2, rel=0.01)
    assert both.energy_j == pytest.approx(per_gpu[GPU_A]["energy_j"] + per_gpu[GPU_B]["energy_j"], rel=1e-9)
    assert both.energy_gpu_j == both.energy_j and both.j_per_token == pytest.approx(both.energy_j / 256)
    assert both.mean_power_w == pytest.approx(per_gpu[GPU_A]["mean_power_w"] + per_gpu[GPU_B]["mean_power_w"])
    names = {c["message"].split(":")[0] for c in both.analysis["checks"]}
    assert names == {f"GPU {GPU_A}", f"GPU {GPU_B}"}  # every check, once per GPU
    assert both.energy_host_note is not None and both.energy_host_note.startswith("n/a (no RAPL)")
    assert both.energy_total_j == both.energy_j  # nothing else measured: the total is the GPUs'


def _throttle_gpu_b(start: float, end: float, reasons: int) -> None:
    with session_scope() as s:
        s.execute(
            update(GpuSample)
            .where(GpuSample.gpu_uuid == GPU_B, GpuSample.time >= utc(start), GpuSample.time <= utc(end))
            .values(clock_event_reasons=reasons)
        )


def test_one_throttling_gpu_of_two_fails_or_warns_the_run(two_gpus: dict) -> None:
    start, end = two_gpus["decode_bs1_start"], two_gpus["decode_bs1_end"]
    _throttle_gpu_b(start, end, 0x40)  # HW thermal slowdown on GPU B only: a warning, as on one GPU
    warned = finalised_metrics(_run_on((start, end), [GPU_A, GPU_B]))
    assert warned.analysis is not None and warned.verdict == "warning"
    thermal = [c for c in warned.analysis["checks"] if c["name"] == "thermal_throttling"]
    assert [c["status"] for c in thermal] == ["pass", "warning"] and thermal[1]["message"].startswith(f"GPU {GPU_B}")
    _throttle_gpu_b(start, end, 0x80)  # the HW power brake on GPU B: the run is invalid
    metrics = finalised_metrics(_run_on((start, end), [GPU_A, GPU_B]))
    assert metrics.analysis is not None and metrics.verdict == "invalid"
    failed = [c for c in metrics.analysis["checks"] if c["status"] == "fail"]
    assert failed and all(c["message"].startswith(f"GPU {GPU_B}") for c in failed)
    assert metrics.analysis["per_gpu"][GPU_A]["verdict"] != "invalid"
    assert metrics.analysis["per_gpu"][GPU_B]["verdict"] == "invalid"


def test_host_energy_from_rapl_joins_the_total_and_carbon(two_gpus: dict) -> None:
    start, end = two_gpus["decode_bs1_start"], two_gpus["decode_bs1_end"]
    _rapl(start - 10, end, package_w=60.0, dram_w=9.0)
    metrics = finalised_metrics(_run_on((start, end), [GPU_A], carbon={"g_per_kwh": 400.0}))
    duration = end - start
    assert metrics.energy_cpu_j == pytest.approx(60.0 * duration, rel=1e-6)
    assert metrics.energy_dram_j == pytest.approx(9.0 * duration, rel=1e-6)
    assert metrics.energy_gpu_j is not None and metrics.energy_total_j == pytest.approx(
        metrics.energy_gpu_j + 69.0 * duration, rel=1e-6
    )
    assert metrics.energy_host_note is not None and "package-0/dram" in metrics.energy_host_note
    assert metrics.carbon_g == pytest.approx(metrics.energy_total_j / 3.6e6 * 400.0, rel=1e-9)
    assert metrics.carbon_source == "constant 400 g/kWh"


def test_carbon_from_a_series_and_a_window_outside_it(two_gpus: dict) -> None:
    start, end = two_gpus["decode_bs1_start"], two_gpus["decode_bs1_end"]
    series = {"series": [[start - 100, 200.0], [start + (end - start) / 2, 600.0], [end + 100, 600.0]], "source": "s"}
    metrics = finalised_metrics(_run_on((start, end), [GPU_A], carbon=series))
    assert metrics.energy_total_j is not None
    # the intensity holds until the next point: half the window at 200, half at 600 g/kWh
    assert metrics.carbon_g == pytest.approx(metrics.energy_total_j / 3.6e6 * 400.0, rel=1e-6)
    late = {"series": [[end + 10, 300.0], [end + 20, 300.0]], "source": "late"}
    outside = finalised_metrics(_run_on((start, end), [GPU_A], carbon=late))
    assert outside.carbon_g is None and outside.carbon_source is not None and "outside" in outside.carbon_source
