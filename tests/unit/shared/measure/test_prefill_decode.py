"""Prefill/decode by difference (PREC-01): the arithmetic of the split, its uncertainty, and on the recorded H200
trace the property the method rests on: window energies add up (a window split in two gives the whole's energy
within the stated uncertainty)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lem_shared.config.presets import random_preset
from lem_shared.measure.analysis import analyse_window
from lem_shared.measure.prefill_decode import WindowFigures, energy_uncertainty, split
from lem_shared.measure.trace import read_trace

H200 = Path(__file__).resolve().parents[3] / "data" / "h200"


def test_the_split_is_per_prompt_and_adds_up_to_the_full_window() -> None:
    full = WindowFigures(energy_j=120.0, energy_uncertainty_j=1.2, duration_s=10.0, prompts=40)  # 3 J, 0.25 s a prompt
    prefill = WindowFigures(energy_j=50.0, energy_uncertainty_j=0.5, duration_s=5.0, prompts=100)  # 0.5 J, 0.05 s
    result = split(full, prefill, input_len=100, output_len=11, batch_size=4)
    p, d = result["per_prompt"]["prefill"], result["per_prompt"]["decode"]
    assert p["energy_j"] == pytest.approx(0.5) and d["energy_j"] == pytest.approx(2.5)
    assert p["time_s"] == pytest.approx(0.05) and d["time_s"] == pytest.approx(0.2)
    assert p["tokens_per_s"] == pytest.approx(100 / 0.05) and d["tokens_per_s"] == pytest.approx(10 / 0.2)
    assert p["j_per_token"] == pytest.approx(0.005) and d["j_per_token"] == pytest.approx(0.25)
    assert d["energy_uncertainty_j"] == pytest.approx(math.hypot(1.2 / 40, 0.5 / 100))
    window = result["window_energy_j"]
    assert window["prefill"] + window["decode"] == pytest.approx(window["full"])
    assert result["problems"] == []


def test_flops_and_efficiency_per_phase_with_a_model_shape() -> None:
    shape = random_preset("random:llama-1b")
    full = WindowFigures(energy_j=900.0, energy_uncertainty_j=9.0, duration_s=10.0, prompts=32)
    prefill = WindowFigures(energy_j=300.0, energy_uncertainty_j=3.0, duration_s=3.0, prompts=96)
    result = split(
        full,
        prefill,
        input_len=2048,
        output_len=128,
        batch_size=32,
        model_shape=shape,
        gpu_name="NVIDIA H200",
        dtype="bfloat16",
    )
    prefill_phase, decode_phase = result["per_prompt"]["prefill"], result["per_prompt"]["decode"]
    assert prefill_phase["flops"] > 0 and decode_phase["flops"] > 0
    assert prefill_phase["mfu"] == pytest.approx(prefill_phase["achieved_tflops"] / 989.0)
    assert decode_phase["j_per_tflop"] == pytest.approx(decode_phase["energy_j"] / (decode_phase["flops"] / 1e12))
    assert decode_phase["memory"]["achieved_tb_s"] > 0 and 0 < decode_phase["memory"]["bandwidth_utilisation"] < 1


def test_a_prefill_window_as_slow_as_the_full_one_is_reported() -> None:
    same = WindowFigures(energy_j=10.0, energy_uncertainty_j=0.1, duration_s=1.0, prompts=10)
    result = split(same, same, input_len=8, output_len=4, batch_size=2)
    assert result["problems"] and "decode time" in result["problems"][0]


def test_no_energy_still_splits_the_time() -> None:
    full = WindowFigures(None, None, 2.0, 8)
    prefill = WindowFigures(None, None, 1.0, 16)
    phases = split(full, prefill, input_len=8, output_len=4, batch_size=2)["per_prompt"]
    assert phases["decode"]["time_s"] == pytest.approx(0.25 - 0.0625) and phases["decode"]["energy_j"] is None


@pytest.mark.parametrize("name", ["decode_bs1", "decode_bs16", "decode_bs64", "matmul_burn"])
def test_window_energies_add_up_on_the_recorded_h200_trace(name: str) -> None:
    """A phase of the real trace cut at an arbitrary point: E(first) + E(second) = E(whole) within u."""
    samples = read_trace(H200 / "h200_nvml_trace.jsonl")
    marks = [json.loads(line) for line in (H200 / "h200_nvml_marks.jsonl").read_text().splitlines()]
    start = next(m["t"] for m in marks if m["mark"] == f"{name}_start")
    end = next(m["t"] for m in marks if m["mark"].startswith(f"{name}_end"))
    cut = start + 0.37 * (end - start)

    def figures(a: float, b: float) -> tuple[float, float]:
        w = analyse_window(samples, a, b)
        u = energy_uncertainty(w.energy_counter_j, w.energy_integral_j, w.mean_power_w, w.duration_s, w.counter_updates)
        return w.energy_counter_j, u

    whole, u_whole = figures(start, end)
    first, u_first = figures(start, cut)
    second, u_second = figures(cut, end)
    assert abs(first + second - whole) <= math.sqrt(u_whole**2 + u_first**2 + u_second**2)
