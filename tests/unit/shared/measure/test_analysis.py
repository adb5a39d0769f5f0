"""Window analysis and validity checks, on the recorded H200 trace and on constructed cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lem_shared.measure.analysis import (
    ENERGY_CHECKS,
    NO_TELEMETRY,
    RunContext,
    RunFacts,
    TelemetrySample,
    Thresholds,
    analyse_window,
    checks_without_telemetry,
    run_checks,
    verdict_of,
    window_check,
)
from lem_shared.measure.trace import TraceError, read_trace, read_windows

README_COUNTER_J = {
    "idle": 1158.3,
    "decode_bs1": 1143.8,
    "decode_bs16": 1287.7,
    "decode_bs64": 1761.0,
    "matmul_burn": 8260.5,
    "cooldown": 1807.9,
}


@pytest.fixture(scope="module")
def windows_file(h200_trace_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    starts, lines = {}, []
    for line in (h200_trace_dir / "h200_nvml_marks.jsonl").read_text().splitlines():
        mark = json.loads(line)
        name, _, edge = mark["mark"].split(":")[0].rpartition("_")
        if edge == "start":
            starts[name] = mark["t"]
        elif edge == "end":
            lines.append(json.dumps({"name": name, "start": starts[name], "end": mark["t"]}))
    path = tmp_path_factory.mktemp("w") / "windows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_marked_phase_matches_the_reference_within_half_a_percent(
    h200_trace_dir: Path, windows_file: Path
) -> None:
    samples = read_trace(h200_trace_dir / "h200_nvml_trace.jsonl")
    for name, start, end in read_windows(windows_file):
        result = analyse_window(samples, start, end, name=name)
        assert result.energy_counter_j == pytest.approx(README_COUNTER_J[name], rel=0.005), name


def test_matmul_burn_shows_the_software_power_cap(h200_trace_dir: Path, windows_file: Path) -> None:
    samples = read_trace(h200_trace_dir / "h200_nvml_trace.jsonl")
    spans = {name: (start, end) for name, start, end in read_windows(windows_file)}
    burn = analyse_window(samples, *spans["matmul_burn"], name="matmul_burn")
    assert burn.reason_share["sw_power_cap"] > 0.9
    assert burn.peak_power_w is not None and burn.peak_power_w > 650
    assert burn.temperature_rise_c is not None and burn.temperature_rise_c > 10
    assert {c.name: c.status for c in burn.checks}["temperature_drift"] == "warning"
    idle = analyse_window(samples, *spans["idle"], name="idle")
    assert idle.reason_share["gpu_idle"] == 1.0 and idle.verdict == "valid"


def test_at_least_ten_checks_each_with_status_and_message(h200_trace_dir: Path, windows_file: Path) -> None:
    samples = read_trace(h200_trace_dir / "h200_nvml_trace.jsonl")
    name, start, end = read_windows(windows_file)[1]
    checks = analyse_window(samples, start, end, name=name).checks
    assert len({c.name for c in checks}) >= 10
    assert all(c.status in ("pass", "warning", "fail", "skipped") and c.message for c in checks)


def steady(start: float, end: float, power_w: float = 200.0, step: float = 0.1, **fields: int) -> list[TelemetrySample]:
    n = round((end - start) / step)
    return [
        TelemetrySample(
            t=start + i * step,
            power_w=power_w,
            energy_mj=round(power_w * (start + i * step) * 1000),
            temperature_c=50,
            sm_clock_mhz=fields.get("sm", 1980),
            clock_event_reasons=fields.get("reasons", 0),
            utilization_gpu=fields.get("util", 0),
        )
        for i in range(n + 1)
    ]


def status_of(samples: list[TelemetrySample], start: float, end: float, **kw: object) -> dict[str, str]:
    result = analyse_window(samples, start, end, **kw)  # type: ignore[arg-type]
    return {c.name: c.status for c in result.checks} | {"verdict": result.verdict}


def test_a_clean_steady_window_is_valid() -> None:
    samples = steady(0, 30)
    ctx = RunContext(interval_s=0.1, before=(5, 9.9), after=(21.1, 25), warmup_converged=True)
    statuses = status_of(samples, 10.05, 21.05, context=ctx)
    assert statuses["verdict"] == "valid", statuses


def test_thermal_events_warn_and_power_brake_invalidates() -> None:
    assert status_of(steady(0, 20, reasons=0x20), 5, 16)["thermal_throttling"] == "warning"
    braked = status_of(steady(0, 20, reasons=0x80), 5, 16)
    assert braked["hw_power_brake"] == "fail" and braked["verdict"] == "invalid"


def test_short_window_and_too_few_counter_updates_fail() -> None:
    statuses = status_of(steady(0, 5), 1.0, 1.5)
    assert statuses["window_duration"] == "fail" and statuses["counter_updates"] == "fail"


def test_our_own_warmup_lingering_in_the_utilisation_average_is_not_someone_else() -> None:
    lingering = steady(0, 5.3, util=30) + steady(5.4, 30, util=0)  # NVML averages over up to a second
    statuses = status_of(lingering, 7.05, 20.05, context=RunContext(before=(5.05, 7.0)))
    assert statuses["gpu_busy_before"] == "pass"


def test_someone_else_busy_before_the_window_invalidates_it() -> None:
    samples = steady(0, 5, util=0) + steady(5.05, 10, util=60)[:10] + steady(6.05, 30)
    samples.sort(key=lambda s: s.t)
    statuses = status_of(samples, 7.05, 20.05, context=RunContext(before=(5.05, 6.0)))
    assert statuses["gpu_busy_before"] == "fail" and statuses["verdict"] == "invalid"


def test_baseline_drift_clock_drop_and_unconverged_warmup_warn() -> None:
    before = steady(0, 5, power_w=80)
    window = steady(5.05, 20, power_w=300, sm=1200)
    after = steady(20.05, 25, power_w=120)
    samples = before + window + after
    ctx = RunContext(before=(1, 4.9), after=(20.1, 24.9), warmup_converged=False, warmup_cv=0.2)
    statuses = status_of(samples, 5.05, 19.95, context=ctx)
    assert statuses["baseline_drift"] == "warning"
    assert statuses["sm_clock_drop"] == "warning"
    assert statuses["warmup_converged"] == "warning"


def test_low_sample_coverage_and_counter_reset_warn() -> None:
    sparse = steady(0, 30)[::3]  # a third of the samples a 0.1 s interval promises
    assert status_of(sparse, 5, 20, context=RunContext(interval_s=0.1))["sample_coverage"] == "warning"
    samples = steady(0, 30)
    reset = [s if s.t < 12 else TelemetrySample(s.t, s.power_w, (s.energy_mj or 0) - 2_400_000) for s in samples]
    assert status_of(reset, 5, 20)["counter_reset"] == "warning"


def lem(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("lem")), *args], capture_output=True, text=True)


def test_lem_energy_analyse_prints_one_object_per_window(h200_trace_dir: Path, windows_file: Path) -> None:
    result = lem(
        "energy",
        "analyse",
        "--trace",
        str(h200_trace_dir / "h200_nvml_trace.jsonl"),
        "--windows",
        str(windows_file),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == list(README_COUNTER_J)
    required = {
        "name",
        "duration_s",
        "energy_counter_j",
        "energy_integral_j",
        "disagreement_pct",
        "mean_power_w",
        "peak_power_w",
        "samples",
        "counter_updates",
        "reason_share",
        "verdict",
        "checks",
    }
    assert all(required <= set(r) for r in rows)


def test_lem_energy_analyse_names_a_bad_line(tmp_path: Path, h200_trace_dir: Path) -> None:
    bad = tmp_path / "windows.jsonl"
    bad.write_text('{"name": "a", "start": 1}\n')
    result = lem("energy", "analyse", "--trace", str(h200_trace_dir / "h200_nvml_trace.jsonl"), "--windows", str(bad))
    assert result.returncode == 2 and f"{bad}:1: bad or missing field 'end'" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(TraceError):
        read_windows(tmp_path / "missing.jsonl")


def test_thresholds_are_settable() -> None:
    statuses = status_of(steady(0, 20), 5, 12, thresholds=Thresholds(min_window_s=5))
    assert statuses["window_duration"] == "pass"


# --- Checks without GPU telemetry (CPU runs) ----------------------------------------------------------------------


def facts(
    tokens: int = 128,
    expected: int = 128,
    latencies: tuple[float, ...] = (1.0, 1.02, 0.98, 1.01),
    batches: int | None = None,
) -> RunFacts:
    count = len(latencies) if batches is None else batches
    return RunFacts(
        output_tokens=tokens,
        expected_output_tokens=expected,
        batches=count,
        expected_batches=len(latencies),
        batch_latencies_s=latencies,
    )


def cpu_statuses(duration_s: float = 3.0, run: RunFacts | None = None, **warmup: object) -> dict[str, str]:
    context = RunContext(
        **({"warmup_converged": True, "warmup_cv": 0.03, "warmup_iterations": 4, "warmup_cv_threshold": 0.05} | warmup)
    )  # type: ignore[arg-type]
    checks = checks_without_telemetry(duration_s, run or facts(), context, Thresholds(min_window_s=2))
    return {c.name: c.status for c in checks} | {"verdict": verdict_of(checks)}


def test_a_steady_cpu_run_is_valid_and_its_energy_checks_are_not_applicable() -> None:
    context = RunContext(warmup_converged=True, warmup_cv=0.03, warmup_iterations=4, warmup_cv_threshold=0.05)
    checks = checks_without_telemetry(3.0, facts(), context, Thresholds(min_window_s=2))
    assert verdict_of(checks) == "valid"
    by_name = {c.name: c for c in checks}
    assert {by_name[n].status for n in ("warmup_converged", "window_duration", "tokens_counted", "latency_spread")} == {
        "pass"
    }
    assert all(by_name[n].status == "skipped" and by_name[n].message == NO_TELEMETRY for n in ENERGY_CHECKS)
    assert {"energy_counter", "counter_updates", "baseline_drift"} <= set(ENERGY_CHECKS)


def test_a_capped_warmup_warns_with_its_cv_against_the_threshold() -> None:
    context = RunContext(warmup_converged=False, warmup_cv=0.322, warmup_iterations=6, warmup_cv_threshold=0.05)
    checks = checks_without_telemetry(3.0, facts(), context, Thresholds(min_window_s=2))
    warm = next(c for c in checks if c.name == "warmup_converged")
    assert warm.status == "warning" and verdict_of(checks) == "warning"
    assert "6 batches" in warm.message and "0.322" in warm.message and "0.05" in warm.message


def test_a_short_cpu_window_warns_and_only_an_energy_counter_makes_under_one_second_fail() -> None:
    assert cpu_statuses(duration_s=1.5)["window_duration"] == "warning"
    assert cpu_statuses(duration_s=0.4)["window_duration"] == "warning"  # no counter steps to dominate
    assert cpu_statuses(duration_s=2.0)["window_duration"] == "pass"
    limits = Thresholds(min_window_s=2)
    assert window_check(0.4, limits, energy_counter=True).status == "fail"
    assert window_check(1.5, limits, energy_counter=True).status == "warning"


def test_a_token_or_batch_mismatch_invalidates_the_run() -> None:
    short = cpu_statuses(run=facts(tokens=120))
    assert short["tokens_counted"] == "fail" and short["verdict"] == "invalid"
    missing_batch = cpu_statuses(run=facts(batches=3))
    assert missing_batch["tokens_counted"] == "fail" and missing_batch["verdict"] == "invalid"
    message = run_checks(facts(tokens=120), Thresholds())[0].message
    assert "120 tokens" in message and "expected 128" in message


def test_latency_spread_warns_above_its_threshold_and_needs_two_batches_of_one_size() -> None:
    assert cpu_statuses(run=facts(latencies=(1.0, 1.6, 0.7, 1.2)))["latency_spread"] == "warning"
    assert cpu_statuses(run=facts(latencies=(1.0,)))["latency_spread"] == "skipped"
    mixed = RunFacts(
        output_tokens=96,
        expected_output_tokens=96,
        batches=2,
        expected_batches=2,
        batch_latencies_s=(1.0, 0.5),
        batch_shapes=2,
    )
    assert cpu_statuses(run=mixed)["latency_spread"] == "skipped"
    spread = run_checks(facts(latencies=(1.0, 1.6, 0.7, 1.2)), Thresholds(max_latency_cv=0.5))[1]
    assert spread.status == "pass" and "0.5" in spread.message


def test_without_batch_timings_the_run_checks_are_skipped_not_passed() -> None:
    statuses = {c.name: c.status for c in run_checks(None, Thresholds())}
    assert statuses == {"tokens_counted": "skipped", "latency_spread": "skipped"}
