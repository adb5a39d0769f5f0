"""Energy finalisation by the control code, on the recorded H200 trace replayed into gpu_samples.

The trace is a stand-in for a GPU this machine does not have (the samples are stored with source
"nvml-replay"); the finalisation code, the database and the queries are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import delete, insert

from lem_planner.finalise import finalise_run
from lem_shared.db.models import Campaign, GpuSample, Run, RunMetrics
from lem_shared.db.session import session_scope
from tests.integration.manifest import measured_run, trace_rows

REPLAY_UUID = "GPU-replay-h200-finalise-test"


@pytest.fixture
def replayed_trace(stack_env, h200_trace_dir: Path):  # noqa: ANN001, ANN201
    rows = trace_rows(h200_trace_dir / "h200_nvml_trace.jsonl", REPLAY_UUID)
    with session_scope() as s:
        s.execute(insert(GpuSample), rows)
    marks = {}
    with open(h200_trace_dir / "h200_nvml_marks.jsonl") as f:
        for line in f:
            m = json.loads(line)
            marks[m["mark"].split(":")[0]] = m["t"]
    yield marks
    with session_scope() as s:
        s.execute(delete(GpuSample).where(GpuSample.gpu_uuid == REPLAY_UUID))


def test_finalise_attaches_counter_energy_of_the_window_and_closes_the_campaign(replayed_trace: dict) -> None:
    # decode at batch 1 of a random-initialised 0.85 B Llama on the H200: 1143.8 J by the counter, 256 tokens.
    start, end = replayed_trace["decode_bs1_start"], replayed_trace["decode_bs1_end"]
    phases = {
        "deep_idle": [replayed_trace["idle_start"], replayed_trace["idle_end"]],
        "idle_before": [start - 2.5, start - 0.5],
        "idle_after": [end + 0.5, end + 2.5],
    }
    run_id, campaign_id = measured_run((start, end), REPLAY_UUID, output_tokens=256, phases=phases)
    assert finalise_run(run_id, wait_s=0) == "finalised"
    with session_scope() as s:
        run, metrics, campaign = s.get(Run, run_id), s.get(RunMetrics, run_id), s.get(Campaign, campaign_id)
        assert run is not None and metrics is not None and campaign is not None
        assert run.status == "done" and campaign.status == "done"
        assert metrics.energy_source == "nvml_energy_counter"
        assert metrics.energy_j == pytest.approx(1143.8, rel=0.005)
        assert metrics.mean_power_w == pytest.approx(127, abs=2)
        assert metrics.energy_power_integral_j == pytest.approx(metrics.energy_j, rel=0.02)
        assert metrics.j_per_token == pytest.approx(metrics.energy_j / 256)
        assert metrics.tokens_per_j == pytest.approx(256 / metrics.energy_j)
        # Deep idle before the campaign: 77 W (DESIGN §6), subtracted over the window only.
        assert metrics.deep_idle_power_w == pytest.approx(77, abs=1.5)
        assert metrics.baseline_method == "deep_idle_before_campaign"
        duration = end - start
        assert metrics.energy_adjusted_j == pytest.approx(metrics.energy_j - metrics.deep_idle_power_w * duration)
        assert metrics.idle_before_w is not None and metrics.idle_after_w is not None
        assert metrics.verdict == "warning"  # a 9 s window is under the 10 s minimum
        checks = {c["name"]: c["status"] for c in metrics.analysis["checks"]}
        assert checks["window_duration"] == "warning" and checks["gpu_busy_before"] == "pass"
        assert metrics.analysis["reason_share"]["none"] == 1.0


def test_finalise_without_telemetry_records_why_and_does_not_hang(replayed_trace: dict) -> None:
    later = replayed_trace["cooldown_end"] + 3600  # no samples exist this late
    run_id, _ = measured_run((later, later + 10), REPLAY_UUID, output_tokens=10)
    assert finalise_run(run_id, wait_s=0) == "finalised"
    with session_scope() as s:
        metrics = s.get(RunMetrics, run_id)
        assert metrics is not None and metrics.energy_j is None
        assert "no telemetry" in (metrics.energy_note or "") and metrics.verdict is None


def test_a_cold_starts_load_energy_is_the_counter_over_its_load_span(replayed_trace: dict) -> None:
    # The load span here is the trace's decode phase, whose counter energy the trace's README gives (1143.8 J);
    # the window is the idle that follows it, so the two figures come from different spans.
    load = [replayed_trace["decode_bs1_start"], replayed_trace["decode_bs1_end"]]
    window = (load[1] + 1.0, load[1] + 4.0)
    run_id, _ = measured_run(window, REPLAY_UUID, output_tokens=10, phases={"model_load": load})
    assert finalise_run(run_id, wait_s=0) == "finalised"
    with session_scope() as s:
        metrics = s.get(RunMetrics, run_id)
        assert metrics is not None and metrics.energy_j is not None
        assert metrics.model_load_energy_j == pytest.approx(1143.8, rel=0.005)
        assert metrics.energy_j < metrics.model_load_energy_j


def _counter_at(t: float, trace_dir: Path) -> int:
    """What an edge read of the trace's GPU at ``t`` answers: the last counter value at or before it."""
    value = None
    with open(trace_dir / "h200_nvml_trace.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r["t"] > t:
                break
            value = r["energy_mj"]
    assert value is not None
    return value


def _edges(start: float, end: float, start_mj: int, end_mj: int, uuid: str = REPLAY_UUID) -> dict:
    return {
        "start": {"t": start, "read_s": 0.004, "gpus": {uuid: {"energy_mj": start_mj, "power_instant_w": None}}},
        "end": {"t": end, "read_s": 0.004, "gpus": {uuid: {"energy_mj": end_mj, "power_instant_w": None}}},
    }


def test_the_edge_reads_are_the_energy_and_telemetry_is_the_cross_check(
    replayed_trace: dict, h200_trace_dir: Path
) -> None:
    # A 2 s window at the start of the batch-16 decode: the edge reads are the counter at those instants.
    start = replayed_trace["decode_bs16_start"]
    end = start + 2.0
    exact = _edges(start, end, _counter_at(start, h200_trace_dir), _counter_at(end, h200_trace_dir))
    run_id, _ = measured_run((start, end), REPLAY_UUID, output_tokens=64, phases={"edges": exact})
    assert finalise_run(run_id, wait_s=0) == "finalised"
    with session_scope() as s:
        metrics = s.get(RunMetrics, run_id)
        assert metrics is not None and metrics.analysis is not None
        edges_mj = exact["end"]["gpus"][REPLAY_UUID]["energy_mj"] - exact["start"]["gpus"][REPLAY_UUID]["energy_mj"]
        assert metrics.energy_source == "nvml_energy_counter_at_edges"
        assert metrics.energy_j == pytest.approx(edges_mj / 1000)
        assert metrics.j_per_token == pytest.approx(edges_mj / 1000 / 64)
        checks = {c["name"]: c for c in metrics.analysis["checks"]}
        assert checks["edges_vs_telemetry"]["status"] == "pass"
        assert metrics.analysis["energy_counter_j"] == pytest.approx(metrics.energy_j, rel=0.10)

    # Edge reads that do not match the samples (another GPU's counter, a skewed clock): flagged, never hidden.
    off = _edges(
        start,
        end,
        exact["start"]["gpus"][REPLAY_UUID]["energy_mj"],
        exact["start"]["gpus"][REPLAY_UUID]["energy_mj"] + int(1.5 * edges_mj),
    )
    run_id, _ = measured_run((start, end), REPLAY_UUID, output_tokens=64, phases={"edges": off})
    assert finalise_run(run_id, wait_s=0) == "finalised"
    with session_scope() as s:
        metrics = s.get(RunMetrics, run_id)
        assert metrics is not None and metrics.analysis is not None
        checks = {c["name"]: c for c in metrics.analysis["checks"]}
        assert checks["edges_vs_telemetry"]["status"] == "warning" and metrics.verdict == "warning"

    # A run recorded before edge reads existed keeps telemetry's figure, and says why.
    run_id, _ = measured_run((start, end), REPLAY_UUID, output_tokens=64)
    assert finalise_run(run_id, wait_s=0) == "finalised"
    with session_scope() as s:
        metrics = s.get(RunMetrics, run_id)
        assert metrics is not None and metrics.analysis is not None
        assert metrics.energy_source == "nvml_energy_counter"
        checks = {c["name"]: c for c in metrics.analysis["checks"]}
        assert checks["edges_vs_telemetry"] == {
            "name": "edges_vs_telemetry",
            "status": "skipped",
            "message": "no counter reads at the window's edges",
        }
