"""Test helpers on the manifest: a measured run as a worker leaves it for the control worker to finalise; a
campaign's runs and status as they are now."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from lem_shared.config.schema import ExperimentConfig
from lem_shared.db.models import Campaign, Experiment, Run, RunMetrics
from lem_shared.db.session import session_scope
from lem_shared.wire.messages import run_key


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def trace_rows(trace: Path, gpu_uuid: str) -> list[dict[str, Any]]:
    """The recorded H200 trace as gpu_samples rows under ``gpu_uuid`` (a stand-in GPU, source "nvml-replay")."""
    rows = []
    for line in trace.read_text().splitlines():
        r = json.loads(line)
        rows.append(
            {
                "host": "h200-replay",
                "gpu_uuid": gpu_uuid,
                "gpu_index": 0,
                "time": utc(r["t"]),
                "source": "nvml-replay",
                "power_w": r["power_mw"] / 1000,
                "energy_mj": r["energy_mj"],
                "temperature_c": r["temp_c"],
                "sm_clock_mhz": r["sm_mhz"],
                "mem_clock_mhz": r["mem_mhz"],
                "clock_event_reasons": r["reasons"],
                "memory_used_bytes": r["mem_used_b"],
                "utilization_gpu": r["util_gpu"],
                "utilization_memory": r["util_mem"],
            }
        )
    return rows


def measured_run(
    window: tuple[float, float], gpu_uuid: str, output_tokens: int = 1, phases: dict | None = None
) -> tuple[int, int]:
    """(run id, campaign id) of a new one-run campaign whose run was measured over ``window`` on ``gpu_uuid``."""
    with session_scope() as s:
        campaign = Campaign(name="measured-run", spec={}, spec_hash="0" * 64)
        s.add(campaign)
        s.flush()
        config = ExperimentConfig().model_dump(mode="json")
        experiment = Experiment(
            campaign_id=campaign.id, index=0, backend="pytorch", config=config, config_hash="0" * 64
        )
        s.add(experiment)
        s.flush()
        run = Run(
            run_key=run_key(campaign.id, {}, 0),
            campaign_id=campaign.id,
            experiment_id=experiment.id,
            cycle=0,
            status="measured",
            attempts=1,
            device="cuda:0",
            gpu_uuid=gpu_uuid,
            phases=phases,
            window_start=utc(window[0]),
            window_end=utc(window[1]),
        )
        s.add(run)
        s.flush()
        s.add(
            RunMetrics(
                run_id=run.id,
                requests=1,
                input_tokens=1,
                output_tokens=output_tokens,
                duration_s=1,
                tokens_per_s=1,
                requests_per_s=1,
                latency_mean_s=1,
                latency_p50_s=1,
                latency_p95_s=1,
                ttft_mean_s=None,
                peak_memory_bytes=None,
                peak_memory_kind="none",
                model_load_s=0,
                model_reused=False,
                warmup_iterations=5,
                warmup_converged=True,
                warmup_final_cv=0.01,
                passes=1,
            )
        )
        return run.id, campaign.id


def runs_of(campaign_id: int) -> list[Run]:
    with session_scope() as s:
        runs = s.scalars(select(Run).where(Run.campaign_id == campaign_id).order_by(Run.position)).all()
        s.expunge_all()
        return list(runs)


def campaign_status(campaign_id: int) -> str:
    with session_scope() as s:
        return str(s.scalar(select(Campaign.status).where(Campaign.id == campaign_id)))


def finalised_metrics(run_id: int) -> RunMetrics:
    """Finalise a measured run with the control code (no wait for telemetry) and read its metrics back."""
    from lem_planner.finalise import finalise_run

    assert finalise_run(run_id, wait_s=0) == "finalised"
    with session_scope() as s:
        metrics = s.get(RunMetrics, run_id)
        assert metrics is not None
        s.expunge(metrics)
        return metrics
