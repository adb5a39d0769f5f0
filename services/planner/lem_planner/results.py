"""Read campaigns and their runs back out of the database as plain records (what ``--json`` prints)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from lem_shared.db.models import Campaign, Run
from lem_shared.db.session import session_scope


def list_campaigns() -> list[dict[str, Any]]:
    with session_scope() as s:
        rows = s.scalars(select(Campaign).order_by(Campaign.id)).all()
        return [
            {"id": c.id, "name": c.name, "status": c.status, "created": c.created_at.isoformat(),
             "finished": c.finished_at.isoformat() if c.finished_at else None}
            for c in rows
        ]


def campaign_exists(campaign_id: int) -> bool:
    with session_scope() as s:
        return s.get(Campaign, campaign_id) is not None


def campaign_progress(campaign_id: int) -> tuple[str, Counter[str]]:
    with session_scope() as s:
        campaign = s.get(Campaign, campaign_id)
        assert campaign is not None
        statuses = s.scalars(select(Run.status).where(Run.campaign_id == campaign_id)).all()
        return campaign.status, Counter(statuses)


def run_records(campaign_id: int) -> list[dict[str, Any]]:
    """One record per run, in experiment then cycle order."""
    with session_scope() as s:
        runs = s.scalars(
            select(Run)
            .where(Run.campaign_id == campaign_id)
            .options(joinedload(Run.experiment), joinedload(Run.metrics))
        ).all()
        records = []
        for run in sorted(runs, key=lambda r: (r.experiment.index, r.cycle)):
            m = run.metrics
            records.append({
                "run_id": run.id,
                "run_key": run.run_key,
                "experiment_index": run.experiment.index,
                "experiment": run.experiment.config,
                "backend": run.experiment.backend,
                "cycle": run.cycle,
                "status": run.status,
                "attempts": run.attempts,
                "worker": run.worker,
                "host": run.host,
                "device": run.device,
                "gpu_uuid": run.gpu_uuid,
                "window_start": run.window_start.isoformat() if run.window_start else None,
                "window_end": run.window_end.isoformat() if run.window_end else None,
                "error": run.error,
                "requests": m.requests if m else None,
                "output_tokens": m.output_tokens if m else None,
                "duration_s": m.duration_s if m else None,
                "tokens_per_s": m.tokens_per_s if m else None,
                "latency_mean_s": m.latency_mean_s if m else None,
                "latency_p95_s": m.latency_p95_s if m else None,
                "ttft_mean_s": m.ttft_mean_s if m else None,
                "peak_memory_bytes": m.peak_memory_bytes if m else None,
                "peak_memory_kind": m.peak_memory_kind if m else None,
                "model_load_s": m.model_load_s if m else None,
                "model_reused": m.model_reused if m else None,
                "warmup_iterations": m.warmup_iterations if m else None,
                "warmup_converged": m.warmup_converged if m else None,
                "warmup_final_cv": m.warmup_final_cv if m else None,
                "passes": m.passes if m else None,
                "energy_j": m.energy_j if m else None,
                "energy_source": m.energy_source if m else None,
                "energy_note": m.energy_note if m else None,
                "energy_power_integral_j": m.energy_power_integral_j if m else None,
                "energy_adjusted_j": m.energy_adjusted_j if m else None,
                "baseline_power_w": m.baseline_power_w if m else None,
                "baseline_method": m.baseline_method if m else None,
                "deep_idle_power_w": m.deep_idle_power_w if m else None,
                "idle_before_w": m.idle_before_w if m else None,
                "idle_after_w": m.idle_after_w if m else None,
                "mean_power_w": m.mean_power_w if m else None,
                "peak_power_w": m.peak_power_w if m else None,
                "max_temperature_c": m.max_temperature_c if m else None,
                "j_per_token": m.j_per_token if m else None,
                "j_per_request": m.j_per_request if m else None,
                "tokens_per_j": m.tokens_per_j if m else None,
                "verdict": m.verdict if m else None,
                "checks": (m.analysis or {}).get("checks") if m else None,
            })
        return records
