"""The finaliser's serving energy on the real H200 trace: engine steps over the bs=16 decode window share the
counter's energy by token share, the requests' energies add up to the steps' span, and the steady state's J/token
is the counter's energy over that window per token emitted in it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lem_planner.finalise import serving_energy
from lem_shared.db.models import RequestTimingRow
from lem_shared.measure.energy import Sample, window_energy
from lem_shared.measure.serving import SteadyState
from lem_shared.measure.trace import read_trace

# Marks of the recorded trace (h200_nvml_marks.jsonl): batch-16 decode from 1795902832.96 to 1795902841.30.
START, END = 1795902833.0, 1795902841.0
STEP_S = 0.025


def _steady(start: float, end: float) -> SteadyState:
    return SteadyState(start, end, 4, "given by the test", (), START, END, 1.0)


def _counter_j(samples: list, start: float, end: float) -> float:
    """The counter's joules between two times, linearly interpolated between its samples (done here by hand)."""
    times = np.array([s.t for s in samples])
    joules = np.array([s.energy_mj / 1000 for s in samples])
    return float(np.interp(end, times, joules) - np.interp(start, times, joules))


def _workload() -> tuple[dict, list[RequestTimingRow]]:
    """Four requests on a 25 ms step clock: request r arrives at step 2r, is prefilled in that step (its 32 prompt
    tokens), then decodes one token a step for 40 steps."""
    steps, rows = [], []
    n_steps = int((END - START) / STEP_S)
    first_steps = {r: 2 * r for r in range(4)}
    for i in range(n_steps):
        tokens = {}
        for r, first in first_steps.items():
            if i == first:
                tokens[str(r)] = [32, 0]
            elif first < i <= first + 40:
                tokens[str(r)] = [0, 1]
        start = START + i * STEP_S
        steps.append([start, START + (i + 1) * STEP_S, len(tokens), 0, tokens])
    for r, first in first_steps.items():
        token_times = [START + (first + k + 1) * STEP_S for k in range(41)]
        rows.append(
            RequestTimingRow(
                request_index=r,
                arrival=START + first * STEP_S,
                first_token=token_times[0],
                finish=token_times[-1],
                prompt_tokens=32,
                output_tokens=41,
                token_times=token_times,
            )
        )
    return {"steps": steps, "facts": {}}, rows


def test_request_energies_add_up_and_the_steady_state_is_the_counter_over_its_window(h200_trace_dir: Path) -> None:
    samples = [s for s in read_trace(h200_trace_dir / "h200_nvml_trace.jsonl") if START - 2 <= s.t <= END + 2]
    serving, rows = _workload()
    out = serving_energy(serving, rows, samples, _steady(START + 0.2, START + 1.0))
    assert out is not None
    check = out["check"]
    assert check.name == "request_energy_sum"
    per_request = out["per_request_j"]
    assert sorted(per_request) == ["0", "1", "2", "3"]
    # The steps cover the whole span without gaps, but the steps after the last token have no tokens: their
    # energy goes to no request, so the sum check fails honestly and says how much went unattributed.
    span = window_energy([Sample(x.t, x.energy_mj, x.power_w) for x in samples], START, END).energy_j
    assert span is not None and sum(per_request.values()) < span
    assert check.status == "fail" and "add up to" in check.message
    # Steady state [START + 0.2, START + 1.0): energy from the counter, tokens by their times.
    assert abs(out["steady_energy_j"] - _counter_j(samples, START + 0.2, START + 1.0)) < 1e-6
    tokens = sum(1 for r in rows for t in r.token_times if START + 0.2 <= t < START + 1.0)
    assert tokens > 0 and abs(out["steady_j_per_token"] - out["steady_energy_j"] / tokens) < 1e-9
    assert out["request_energy_p50_j"] is not None and out["request_energy_mean_j"] > 0


def test_when_every_step_has_tokens_the_requests_hold_the_span_within_one_percent(h200_trace_dir: Path) -> None:
    samples = [s for s in read_trace(h200_trace_dir / "h200_nvml_trace.jsonl") if START - 2 <= s.t <= END + 2]
    serving, rows = _workload()
    serving["steps"] = [step for step in serving["steps"] if step[4]]  # the run ends with its last token
    last = serving["steps"][-1][1]
    out = serving_energy(serving, rows, samples, _steady(START + 0.2, START + 1.0))
    assert out is not None
    check = out["check"]
    assert check.status == "pass", check.message
    span = _counter_j(samples, START, last)
    assert abs(check_span(check.message) - span) < 0.01
    assert abs(sum(out["per_request_j"].values()) - span) <= 0.01 * span
    # The interpolated counter and the window analysis's own energy agree within one counter step at each edge.
    analysed = window_energy([Sample(x.t, x.energy_mj, x.power_w) for x in samples], START, last)
    assert analysed.energy_j is not None and analysed.mean_power_w is not None
    assert abs(analysed.energy_j - span) <= 2 * 0.1 * analysed.mean_power_w
    # Request 0 was alone for its first steps and shared the rest four ways: it holds the most energy.
    assert max(out["per_request_j"], key=out["per_request_j"].get) == "0"


def check_span(message: str) -> float:
    """The steps' span energy the check's message states ("... of the steps' 155.58 J, ...")."""
    return float(message.split("of the steps' ")[1].split(" J")[0])


def test_an_offline_run_has_no_serving_energy() -> None:
    assert serving_energy(None, [], [], None) is None
