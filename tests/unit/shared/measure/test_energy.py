"""Window energy: counter difference at interpolated edges, resets, coverage, and the real H200 trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lem_shared.measure.energy import Sample, window_energy


def steady(power_w: float, start: float, end: float, step: float = 0.1) -> list[Sample]:
    n = round((end - start) / step)
    return [Sample(start + i * step, round(power_w * i * step * 1000), power_w) for i in range(n + 1)]


def test_constant_power_gives_power_times_duration() -> None:
    result = window_energy(steady(200.0, 0.0, 10.0), 2.05, 7.05)
    assert result.energy_j == pytest.approx(1000.0, rel=1e-6)
    assert result.power_integral_j == pytest.approx(1000.0, rel=1e-9)
    assert result.mean_power_w == pytest.approx(200.0, rel=1e-6)
    assert result.samples_in_window == 50
    assert result.counter_updates == 49 and result.counter_resets == 0


def test_coarse_sampling_is_not_biased_low() -> None:
    # 100 ms samples offset from the window edges: the inner samples cover ~0.1 s less than the window.
    result = window_energy(steady(300.0, 0.0, 20.0), 5.05, 15.05)
    assert result.energy_j == pytest.approx(3000.0, rel=1e-6)


def test_counter_reset_inside_the_window_is_bridged() -> None:
    samples = steady(100.0, 0.0, 4.0)
    reset_at = 20  # the counter restarts from zero at t = 2.0 s
    offset = samples[reset_at].energy_mj
    bridged = samples[:reset_at] + [Sample(s.t, s.energy_mj - offset + 10, s.power_w) for s in samples[reset_at:]]
    result = window_energy(bridged, 1.0, 3.0)
    # 100 J/s over the window, less the 10 J - 10 mJ step the reset hides in one 0.1 s interval.
    assert result.energy_j == pytest.approx(200.0 - (10.0 - 0.010), abs=1e-6)
    assert result.counter_resets == 1


def test_window_without_samples_gives_no_energy_and_says_why() -> None:
    result = window_energy(steady(100.0, 0.0, 5.0), 6.0, 8.0)
    assert result.energy_j is None and result.note == "no telemetry samples inside the window"


def test_samples_ending_early_still_give_counter_energy_but_no_integral() -> None:
    result = window_energy(steady(100.0, 0.0, 5.0), 4.0, 5.05)
    assert result.energy_j == pytest.approx(105.0, rel=1e-6) and result.power_integral_j is None
    assert "do not reach past both edges" in (result.note or "")


def test_no_counter_falls_back_to_nothing_but_keeps_the_power_integral() -> None:
    samples = [Sample(s.t, None, s.power_w) for s in steady(50.0, 0.0, 3.0)]
    result = window_energy(samples, 1.0, 2.0)
    assert result.energy_j is None and result.power_integral_j == pytest.approx(50.0)
    assert "no energy-counter readings" in (result.note or "")


# Reference figures from ../shared/data/h200/README.md: counter joules and ∫P dt vs counter, per marked window.
H200_WINDOWS = {
    "idle": (1158.3, -0.13),
    "decode_bs1": (1143.8, -0.96),
    "decode_bs16": (1287.7, -0.14),
    "decode_bs64": (1761.0, -0.88),
    "matmul_burn": (8260.5, -3.32),
    "cooldown": (1807.9, 16.67),
}


def load_trace(trace_dir: Path) -> tuple[list[Sample], dict[str, tuple[float, float]]]:
    samples = []
    with open(trace_dir / "h200_nvml_trace.jsonl") as f:
        for line in f:
            r = json.loads(line)
            samples.append(Sample(r["t"], r["energy_mj"], r["power_mw"] / 1000))
    starts, windows = {}, {}
    with open(trace_dir / "h200_nvml_marks.jsonl") as f:
        for line in f:
            mark = json.loads(line)
            name, _, edge = mark["mark"].split(":")[0].rpartition("_")
            if edge == "start":
                starts[name] = mark["t"]
            elif edge == "end":
                windows[name] = (starts[name], mark["t"])
    return samples, windows


@pytest.mark.parametrize("window", sorted(H200_WINDOWS))
def test_real_h200_trace_windows_match_the_reference(h200_trace_dir: Path, window: str) -> None:
    samples, windows = load_trace(h200_trace_dir)
    start, end = windows[window]
    result = window_energy(samples, start, end)
    counter_j, integral_vs_counter_pct = H200_WINDOWS[window]
    assert result.energy_j == pytest.approx(counter_j, rel=0.005)
    if window == "cooldown":  # the trace stops 13 ms before this mark: no sample past the edge to integrate to
        assert result.power_integral_j is None
        return
    assert result.power_integral_j is not None and result.energy_j is not None
    disagreement = 100 * (result.power_integral_j - result.energy_j) / result.energy_j
    assert disagreement == pytest.approx(integral_vs_counter_pct, abs=0.5)
