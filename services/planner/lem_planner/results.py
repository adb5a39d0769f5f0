"""Read campaigns and their runs back out of the database as plain records (what ``--json`` prints), and summarise
each experiment across its cycles with bootstrap confidence intervals."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import joinedload, selectinload

from lem_shared.db.models import BatchTimingRow, Campaign, Experiment, Run, RunMetrics
from lem_shared.db.session import session_scope
from lem_shared.measure.metrics import request_traces, ttft_values
from lem_shared.measure.serving import request_latencies
from lem_shared.measure.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    PERCENTILE_BOOTSTRAP,
    bootstrap_ci,
    percentile,
)
from lem_shared.run_record import PHASE_COLUMNS, PHASES, RunRecord

# The per-run figures summarised across cycles, with the words used when no run has one.
SUMMARY_METRICS = {
    "j_per_token": "energy",
    "energy_j": "energy",
    "tokens_per_s": "throughput",
    "ttft_mean_s": "TTFT",
    "itl_mean_s": "inter-token latency",
}
# Serving experiments (workload.mode serving) are also summarised by these.
SERVING_SUMMARY_METRICS = {
    "steady_j_per_token": "steady-state energy",
    "tpot_p99_s": "p99 TPOT",
    "goodput_rps": "goodput",
    "request_energy_p50_j": "per-request energy",
}
ENERGY_METRICS = ("j_per_token", "energy_j", "steady_j_per_token", "request_energy_p50_j")
# Campaign, experiment and run ids are PostgreSQL integers: an id past this cannot exist, and asking for one
# fails in the database (NumericValueOutOfRange), so the commands refuse it first.
MAX_ID = 2**31 - 1


def list_campaigns() -> list[dict[str, Any]]:
    with session_scope() as s:
        rows = s.scalars(select(Campaign).order_by(Campaign.id)).all()
        return [
            {
                "id": c.id,
                "name": c.name,
                "status": c.status,
                "created": c.created_at.isoformat(),
                "finished": c.finished_at.isoformat() if c.finished_at else None,
            }
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


def _per_batch_itl(batches: list[BatchTimingRow]) -> list[float]:
    return [x for b in batches if (x := inter_token_latency([b])) is not None]


def _percentile(values: list[float], q: float) -> float | None:
    return percentile(values, q) if values else None


# The record's fields stored as run_metrics columns of the same name (the rest is derived below).
_STORED = [
    f.name for f in fields(RunRecord) if f.name in {c.name for c in RunMetrics.__table__.columns if not c.primary_key}
]


def _record(run: Run) -> RunRecord:
    """A run's record from its row with the rows loaded beside it (experiment, campaign, metrics, batches,
    environment); the read-time figures (percentiles, ITL, per-phase and environment columns) are computed here."""
    m, batches, experiment = run.metrics, run.batches, run.experiment
    campaign, config = experiment.campaign, experiment.config
    analysis = (m.analysis or {}) if m else {}
    ttfts, latencies, itls = ttft_values(batches), [b.latency_s for b in batches], _per_batch_itl(batches)
    itl_mean = inter_token_latency(batches) if m else None
    if run.requests:  # serving: each request's TTFT and end-to-end latency, and every gap between its tokens
        served = request_latencies(request_traces(run.requests))
        ttfts, latencies = [r.ttft_s for r in served], [r.e2e_s for r in served]
        itls = [gap for r in served for gap in r.itl_s]
        itl_mean = sum(itls) / len(itls) if itls else None
    imported = (run.imported or {}).get("tokens_per_s")
    shares = analysis.get("reason_share") or {}
    checks = analysis.get("checks")
    stored: dict[str, Any] = {name: getattr(m, name) if m else None for name in _STORED}
    adjusted, output_tokens = stored["energy_adjusted_j"], stored["output_tokens"]
    return RunRecord(
        campaign_id=campaign.id,
        campaign_name=campaign.name,
        campaign_source=campaign.source,
        experiment_index=experiment.index,
        config_hash=experiment.config_hash,
        experiment=config,
        run_id=run.id,
        run_key=run.run_key,
        cycle=run.cycle,
        status=run.status,
        attempts=run.attempts,
        backend=experiment.backend,
        model=config.get("model"),
        dtype=config.get("dtype"),
        batch_size=config.get("batch_size"),
        schema_version=run.schema_version,
        tool_version=run.tool_version,
        error=run.error,
        worker=run.worker,
        host=run.host,
        device=run.device,
        gpu_uuid=run.gpu_uuid,
        gpu_uuids=";".join(run.gpu_uuids) if run.gpu_uuids else run.gpu_uuid,
        energy_per_gpu=analysis.get("per_gpu"),
        window_start=run.window_start.isoformat() if run.window_start else None,
        window_end=run.window_end.isoformat() if run.window_end else None,
        **stored,
        j_per_token_adjusted=adjusted / output_tokens if adjusted is not None and output_tokens else None,
        # imported runs: the earlier tool's own tokens/s ({field, value, counts}), beside ours (output only)
        imported_throughput=imported,
        imported_tokens_per_s=(imported or {}).get("value"),
        imported_tokens_per_s_counts=(imported or {}).get("counts"),
        effective_batch_size=sum(b.batch_size for b in batches) / len(batches) if batches else None,
        # p50 as stored (imported runs have it without batches); p90/p99 from the batches
        latency_p90_s=_percentile(latencies, 90),
        latency_p99_s=_percentile(latencies, 99),
        ttft_p50_s=_percentile(ttfts, 50),
        ttft_p90_s=_percentile(ttfts, 90),
        ttft_p99_s=_percentile(ttfts, 99),
        itl_mean_s=itl_mean,
        itl_p50_s=_percentile(itls, 50),
        itl_p90_s=_percentile(itls, 90),
        itl_p99_s=_percentile(itls, 99),
        gpu_utilisation_mean_pct=analysis.get("utilization_mean_pct"),
        sm_clock_ratio=analysis.get("sm_clock_ratio"),
        throttle_shares={f"throttle_share_{label}": share for label, share in shares.items()},
        thermal_throttling=analysis.get("thermal_throttling"),
        power_brake=analysis.get("power_brake"),
        checks=checks,
        failed_checks="; ".join(
            f"{c['name']}: {c['status']}" for c in checks or [] if c["status"] in ("fail", "warning")
        )
        or None,
        phase_split=analysis.get("phase_split"),
        flops=analysis.get("flops"),
        **_phase_columns(analysis.get("phase_split"), analysis.get("flops")),
        **_environment_columns((run.environment.data if run.environment else None) or {}),
    )


def load_runs(campaign_id: int) -> list[RunRecord]:
    """The campaign's runs as records, in experiment then cycle order, from one query."""
    with session_scope() as s:
        runs = s.scalars(
            select(Run)
            .where(Run.campaign_id == campaign_id)
            .options(
                joinedload(Run.experiment).joinedload(Experiment.campaign),
                joinedload(Run.metrics),
                joinedload(Run.environment),
                selectinload(Run.batches),
                selectinload(Run.requests),
            )
        ).all()
        return [_record(run) for run in sorted(runs, key=lambda r: (r.experiment.index, r.cycle))]


def run_records(campaign_id: int) -> list[dict[str, Any]]:
    """One record per run, in experiment then cycle order: what ``lem results show --json`` prints."""
    return [record.shown() for record in load_runs(campaign_id)]


def _phase_columns(split: dict[str, Any] | None, flops: dict[str, Any] | None) -> dict[str, Any]:
    """The prefill/decode columns of the record from the analysis's split and counted FLOPs."""
    per_prompt = (split or {}).get("per_prompt") or {}
    figures_of = {phase: per_prompt.get(phase) or {} for phase in PHASES}
    phase_figures = {}
    for column in PHASE_COLUMNS:  # prefill_time_s: per_prompt["prefill"]["time_s"]; *_tflops from "flops"
        phase, _, figure = column.name.partition("_")
        value = figures_of[phase].get("flops" if figure == "tflops" else figure)
        phase_figures[column.name] = (value / 1e12 if value else None) if figure == "tflops" else value
    memory = figures_of["decode"].get("memory") or {}
    ratio = (flops or {}).get("ratio") or {}
    return {
        "phase_figures": phase_figures,
        "decode_bandwidth_tb_s": memory.get("achieved_tb_s"),
        "decode_bandwidth_utilisation": memory.get("bandwidth_utilisation"),
        "flops_counted_ratio_prefill": ratio.get("prefill"),
        "flops_counted_ratio_decode": ratio.get("decode"),
    }


def _environment_columns(env: dict[str, Any]) -> dict[str, Any]:
    """The environment snapshot's main facts (the full snapshot stays in the database). ``gpus`` is a list, or
    a text saying why NVML was unavailable (then the GPU columns are empty)."""
    gpus = env.get("gpus")
    gpu = gpus[0] if isinstance(gpus, list) and gpus else {}
    packages: dict[str, Any] = env["packages"] if isinstance(env.get("packages"), dict) else {}
    return {
        "env_gpu_name": gpu.get("name"),
        "env_driver_version": gpu.get("driver_version"),
        "env_cuda_version": gpu.get("cuda_driver_version"),
        "env_power_limit_w": gpu.get("power_limit_w"),
        "env_torch_version": packages.get("torch"),
        "env_engine_versions": json.dumps(packages, sort_keys=True) if packages else None,
        "env_engine_facts": json.dumps(env["engine"], sort_keys=True) if env.get("engine") else None,
        "env_hostname": env.get("host"),
        "env_cpu": env.get("cpu_model"),
    }


def _missing_reason(metric: str, runs: list[dict[str, Any]]) -> str:
    """Why no done run of an experiment has a figure for ``metric``."""
    if not runs:
        return "no runs done"
    what = {**SUMMARY_METRICS, **SERVING_SUMMARY_METRICS}[metric]
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
    serving = (runs[0]["experiment"].get("workload") or {}).get("mode") == "serving"
    for metric in [*SUMMARY_METRICS, *(SERVING_SUMMARY_METRICS if serving else ())]:
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
        metrics[metric] = {
            "mean": ci.estimate,
            "ci_low": ci.low,
            "ci_high": ci.high,
            "n": ci.n,
            "warning": ci.warning,
            "reason": reason,
        }
    first = runs[0]
    return {
        "experiment_index": first["experiment_index"],
        "experiment": first["experiment"],
        "backend": first["backend"],
        "runs": len(runs),
        "runs_done": len(done),
        "cycles_done": sorted(r["cycle"] for r in done),
        "ci": {"method": PERCENTILE_BOOTSTRAP, "confidence": DEFAULT_CONFIDENCE, "resamples": resamples, "seed": seed},
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


def j_per_token_text(value: float | None, low: float | None = None, high: float | None = None, sep: str = " ") -> str:
    """Energy per token in the unit its size calls for, three significant figures (4.46 J/token, 12.3 mJ/token);
    an interval, when given, in the same unit: ``4.46 J/token [4.40, 4.52]``. ``n/a`` without a value."""
    if value is None:
        return "n/a"
    scale, unit = next(((s, u) for s, u in _ENERGY_UNITS if abs(value) >= s), _ENERGY_UNITS[-1])
    text = f"{value / scale:.3g} {unit}/token"
    if low is None or high is None:
        return text
    return f"{text}{sep}[{low / scale:.3g}, {high / scale:.3g}]"
