"""Read campaigns and their runs back out of the database as plain records (what ``--json`` prints), and summarise
each experiment across its cycles with bootstrap confidence intervals."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from lem_shared.db.models import BatchTimingRow, Campaign, Run
from lem_shared.db.session import session_scope
from lem_shared.metrics import percentile, ttft_values
from lem_shared.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, PERCENTILE_BOOTSTRAP, bootstrap_ci

# The per-run figures summarised across cycles, with the words used when no run has one.
SUMMARY_METRICS = {
    "j_per_token": "energy",
    "energy_j": "energy",
    "tokens_per_s": "throughput",
    "ttft_mean_s": "TTFT",
    "itl_mean_s": "inter-token latency",
}
ENERGY_METRICS = ("j_per_token", "energy_j")
# Campaign, experiment and run ids are PostgreSQL integers: an id past this cannot exist, and asking for one
# fails in the database (NumericValueOutOfRange), so the commands refuse it first.
MAX_ID = 2**31 - 1


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


def inter_token_latency(batches: Iterable[BatchTimingRow]) -> float | None:
    """Mean over batches of (latency - TTFT) / (output tokens per sequence - 1): the time per token after the first.

    Batches without a TTFT or with one output token per sequence say nothing about it; None when no batch does.
    """
    per_batch = []
    for b in batches:
        tokens_per_sequence = b.output_tokens / b.batch_size if b.batch_size else 0
        if b.ttft_s is not None and tokens_per_sequence > 1:
            per_batch.append((b.latency_s - b.ttft_s) / (tokens_per_sequence - 1))
    return sum(per_batch) / len(per_batch) if per_batch else None


def run_records(campaign_id: int) -> list[dict[str, Any]]:
    """One record per run, in experiment then cycle order."""
    with session_scope() as s:
        runs = s.scalars(
            select(Run)
            .where(Run.campaign_id == campaign_id)
            .options(joinedload(Run.experiment), joinedload(Run.metrics))
        ).all()
        batches_of: dict[int, list[BatchTimingRow]] = defaultdict(list)
        for batch in s.scalars(
            select(BatchTimingRow).join(Run, BatchTimingRow.run_id == Run.id).where(Run.campaign_id == campaign_id)
        ):
            batches_of[batch.run_id].append(batch)
        records = []
        for run in sorted(runs, key=lambda r: (r.experiment.index, r.cycle)):
            m = run.metrics
            ttfts = ttft_values(batches_of[run.id])
            latencies = [b.latency_s for b in batches_of[run.id]]
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
                # imported runs: the earlier tool's own tokens/s ({field, value, counts}), beside ours (output only)
                "imported_tokens_per_s": (run.imported or {}).get("tokens_per_s"),
                "latency_mean_s": m.latency_mean_s if m else None,
                # p50 as stored (imported runs have it without batches); p90/p99 from the batches
                "latency_p50_s": m.latency_p50_s if m else None,
                **{f"latency_p{q}_s": percentile(latencies, q) if latencies else None for q in (90, 99)},
                "ttft_mean_s": m.ttft_mean_s if m else None,
                **{f"ttft_p{q}_s": percentile(ttfts, q) if ttfts else None for q in (50, 90, 99)},
                "itl_mean_s": inter_token_latency(batches_of[run.id]) if m else None,
                "kv_cache_usage_peak": m.kv_cache_usage_peak if m else None,
                "kv_cache_usage_mean": m.kv_cache_usage_mean if m else None,
                "preemptions": m.preemptions if m else None,
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
                "phase_split": (m.analysis or {}).get("phase_split") if m else None,
                "flops": (m.analysis or {}).get("flops") if m else None,
            })
        return records


def _missing_reason(metric: str, runs: list[dict[str, Any]]) -> str:
    """Why no done run of an experiment has a figure for ``metric``."""
    if not runs:
        return "no runs done"
    what = SUMMARY_METRICS[metric]
    if metric in ENERGY_METRICS:
        notes = sorted({r["energy_note"] for r in runs if r["energy_note"]})
        if notes and all(n.startswith("n/a (no NVML)") for n in notes):
            return f"no {what} figures (no NVML)"
        if notes:
            return f"no {what} figures ({'; '.join(notes)})"
    return f"no {what} figures"


def summarise_experiment(
    runs: list[dict[str, Any]], resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Mean and bootstrap CI across the done cycles of one experiment, from its ``run_records`` (all statuses)."""
    done = [r for r in runs if r["status"] == "done"]
    metrics: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for metric in SUMMARY_METRICS:
        values = [r[metric] for r in done if r[metric] is not None]
        ci = bootstrap_ci(values, resamples=resamples, seed=seed)
        reason = None
        if not values:
            reason = _missing_reason(metric, done)
        elif not ci.has_interval:
            reason = f"{len(values)} cycle: no interval (it needs 2)"
        if ci.warning and ci.warning not in warnings:
            warnings.append(ci.warning)
        if 0 < len(values) < len(done):
            warnings.append(f"{metric}: {len(done) - len(values)} of {len(done)} done runs have no figure")
        metrics[metric] = {"mean": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "n": ci.n,
                           "warning": ci.warning, "reason": reason}
    first = runs[0]
    return {
        "experiment_index": first["experiment_index"],
        "experiment": first["experiment"],
        "backend": first["backend"],
        "runs": len(runs),
        "runs_done": len(done),
        "cycles_done": sorted(r["cycle"] for r in done),
        "ci": {"method": PERCENTILE_BOOTSTRAP, "confidence": DEFAULT_CONFIDENCE, "resamples": resamples,
               "seed": seed},
        "metrics": metrics,
        "warnings": warnings,
    }


def experiment_summaries(
    campaign_id: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, records: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One summary per experiment of the campaign, in experiment order: for each of J/token, energy, tokens/s,
    TTFT and ITL the mean over its done cycles and a seeded percentile-bootstrap 95 % CI (none under 2 cycles,
    a warning under 3). ``records`` are the campaign's ``run_records`` when the caller already has them."""
    by_experiment: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records if records is not None else run_records(campaign_id):
        by_experiment[record["experiment_index"]].append(record)
    return [summarise_experiment(by_experiment[i], resamples=resamples, seed=seed) for i in sorted(by_experiment)]


def summary_notes(summary: dict[str, Any]) -> list[str]:
    """What ``show`` and ``compare`` print under an experiment's figures: its interval warnings (fewer than 3
    cycles) and why a metric has no figure or no interval."""
    reasons = sorted({m["reason"] for m in summary["metrics"].values() if m["reason"]})
    return [*summary["warnings"], *reasons]


_ENERGY_UNITS = ((1e3, "kJ"), (1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"))


def j_per_token_text(value: float | None, low: float | None = None, high: float | None = None,
                     sep: str = " ") -> str:
    """Energy per token in the unit its size calls for, three significant figures (4.46 J/token, 12.3 mJ/token);
    an interval, when given, in the same unit: ``4.46 J/token [4.40, 4.52]``. ``n/a`` without a value."""
    if value is None:
        return "n/a"
    scale, unit = next(((s, u) for s, u in _ENERGY_UNITS if abs(value) >= s), _ENERGY_UNITS[-1])
    text = f"{value / scale:.3g} {unit}/token"
    if low is None or high is None:
        return text
    return f"{text}{sep}[{low / scale:.3g}, {high / scale:.3g}]"
