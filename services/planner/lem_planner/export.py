"""Results as files for notebooks (MEAS-07): one row per run, or per experiment with bootstrap CIs, as CSV,
Parquet or JSON; and the side-by-side comparison of two experiments or campaigns.

``COLUMNS`` is the one place every exported column is documented (name, unit, meaning); ``lem results columns``
prints it, and a test checks the files hold exactly these columns (plus ``config.*``, the flattened experiment).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import UnionType
from typing import Any, BinaryIO, Union, get_args, get_origin

from pydantic import BaseModel
from sqlalchemy import select

from lem_planner.results import SUMMARY_METRICS, inter_token_latency, run_records, summarise_experiment
from lem_planner.safe_write import check_target, write_atomically
from lem_shared.analysis import CLOCK_EVENT_REASONS
from lem_shared.config import ExperimentConfig, flatten
from lem_shared.db.models import BatchTimingRow, Campaign, Environment, Run, RunMetrics
from lem_shared.db.session import session_scope
from lem_shared.params.engine import EngineSection

FORMATS = ("csv", "parquet", "json")


# A column's type, the same in every file and every campaign (Parquet's schema is built from it).
INT, FLOAT, BOOL, TEXT, TIMESTAMP = "int", "float", "bool", "text", "timestamp"


@dataclass(frozen=True)
class Column:
    name: str
    unit: str
    type: str
    meaning: str


def _c(name: str, unit: str, type_: str, meaning: str) -> Column:
    return Column(name, unit, type_, meaning)


_THROTTLE = [_c(f"throttle_share_{label}", "fraction", FLOAT, f"share of the window's samples with NVML's {label} "
                "clock event reason set") for label in [*CLOCK_EVENT_REASONS.values(), "none"]]

RUN_COLUMNS: list[Column] = [
    _c("campaign_id", "", INT, "campaign id in the database"),
    _c("campaign_name", "", TEXT, "campaign name"),
    _c("campaign_source", "", TEXT,
       "lem (measured by this tool) or imported (read from the earlier tool's files)"),
    _c("experiment_index", "", INT, "the experiment's position in its campaign"),
    _c("config_hash", "", TEXT, "sha256 of the experiment's canonical config JSON"),
    _c("run_id", "", INT, "run id in the database"),
    _c("run_key", "", TEXT, "the run's unique key (also its Celery task id)"),
    _c("cycle", "", INT, "repetition number, from 0"),
    _c("status", "", TEXT, "done, failed, cancelled, ..."),
    _c("backend", "", TEXT, "pytorch, vllm or trtllm"),
    _c("model", "", TEXT, "model id (random:* presets are random-initialised)"),
    _c("dtype", "", TEXT, "weights' precision as configured"),
    _c("batch_size", "prompts", INT, "configured batch size"),
    _c("schema_version", "", TEXT, "Alembic revision the run was recorded under"),
    _c("tool_version", "", TEXT, "tool that recorded the run"),
    _c("error", "", TEXT, "why the run failed, when it did"),
    _c("energy_j", "J", FLOAT, "GPU energy in the measurement window (NVML's total-energy counter)"),
    _c("energy_power_integral_j", "J", FLOAT, "the same window's energy from integrating the power samples (a check)"),
    _c("energy_adjusted_j", "J", FLOAT, "energy_j minus baseline_power_w x window length: what the workload added"),
    _c("energy_source", "", TEXT, "where energy_j came from (counter, power integral; imported:gpu for the earlier "
       "tool's GPU-only figures, imported:gpu+cpu+ram for CodeCarbon's total, imported:unnamed where its file does "
       "not say)"),
    _c("baseline_power_w", "W", FLOAT, "the idle power subtracted for energy_adjusted_j"),
    _c("baseline_method", "", TEXT, "which idle baseline: deep idle before the campaign, or the run's own idle gaps"),
    _c("deep_idle_power_w", "W", FLOAT, "the GPU's idle power measured before the campaign's first run on it"),
    _c("idle_before_w", "W", FLOAT, "mean power in the idle gap just before the window"),
    _c("idle_after_w", "W", FLOAT, "mean power in the idle gap just after the window"),
    _c("j_per_token", "J/token", FLOAT, "energy_j over output tokens"),
    _c("j_per_token_adjusted", "J/token", FLOAT, "energy_adjusted_j over output tokens"),
    _c("tokens_per_j", "token/J", FLOAT, "output tokens over energy_j"),
    _c("j_per_request", "J/request", FLOAT, "energy_j over requests (prompts)"),
    _c("mean_power_w", "W", FLOAT, "mean power in the window"),
    _c("peak_power_w", "W", FLOAT, "highest power sample in the window"),
    _c("max_temperature_c", "degC", FLOAT, "highest GPU temperature in the window"),
    _c("duration_s", "s", FLOAT, "length of the measurement window"),
    _c("requests", "prompts", INT, "prompts completed in the window"),
    _c("input_tokens", "tokens", INT, "prompt tokens processed in the window"),
    _c("output_tokens", "tokens", INT, "tokens generated in the window"),
    _c("tokens_per_s", "token/s", FLOAT, "output tokens over the window's length"),
    _c("imported_tokens_per_s", "token/s", FLOAT, "imported runs: the earlier tool's own headline throughput (its "
       "avg_tokens_per_second), which counts the tokens imported_tokens_per_s_counts names; tokens_per_s is ours"),
    _c("imported_tokens_per_s_counts", "", TEXT, "the tokens imported_tokens_per_s counts: input + output tokens "
       "(the rewrite's result.json) or output tokens (v2/v3), per second of the earlier tool's inference time"),
    _c("requests_per_s", "prompt/s", FLOAT, "prompts over the window's length"),
    _c("effective_batch_size", "prompts", FLOAT, "mean prompts per generate call in the window"),
    _c("ttft_mean_s", "s", FLOAT, "time to first token: mean over the window's requests where the engine reports each "
       "request's (vLLM), else over its batches (a batch's first token)"),
    _c("ttft_p50_s", "s", FLOAT, "time to first token: median over requests (vLLM) or batches"),
    _c("ttft_p90_s", "s", FLOAT, "time to first token: 90th percentile over requests (vLLM) or batches"),
    _c("ttft_p99_s", "s", FLOAT, "time to first token: 99th percentile over requests (vLLM) or batches"),
    _c("itl_mean_s", "s", FLOAT, "inter-token latency: (batch latency - TTFT) / (tokens per sequence - 1), mean"),
    _c("itl_p50_s", "s", FLOAT, "inter-token latency: median over batches"),
    _c("itl_p90_s", "s", FLOAT, "inter-token latency: 90th percentile over batches"),
    _c("itl_p99_s", "s", FLOAT, "inter-token latency: 99th percentile over batches"),
    _c("latency_mean_s", "s", FLOAT, "end-to-end latency of a generate call (every prompt of a batch finishes with "
       "it), mean over batches"),
    _c("latency_p50_s", "s", FLOAT, "end-to-end latency: median over batches"),
    _c("latency_p90_s", "s", FLOAT, "end-to-end latency: 90th percentile over batches (empty for imported runs)"),
    _c("latency_p99_s", "s", FLOAT, "end-to-end latency: 99th percentile over batches (empty for imported runs)"),
    _c("kv_cache_usage_peak", "fraction", FLOAT, "highest share of the engine's KV-cache blocks in use at an "
       "engine step of the window (vLLM's scheduler stats; empty for engines that do not report it)"),
    _c("kv_cache_usage_mean", "fraction", FLOAT, "KV-cache share in use, mean over the window's engine steps (the mean "
       "of each batch's mean)"),
    _c("preemptions", "requests", INT, "requests the engine preempted in the window (KV cache full; vLLM)"),
    _c("peak_memory_bytes", "B", INT, "peak device memory (CUDA: torch's max allocated; CPU: process peak RSS)"),
    _c("peak_memory_kind", "", TEXT, "what peak_memory_bytes measures"),
    _c("gpu_utilisation_mean_pct", "%", FLOAT, "NVML GPU utilisation averaged over the window"),
    _c("sm_clock_ratio", "", FLOAT, "mean SM clock in the window over the clock just before it"),
    *_THROTTLE,
    _c("thermal_throttling", "", BOOL, "true when any window sample had a thermal clock event"),
    _c("power_brake", "", BOOL, "true when any window sample had the HW power brake"),
    _c("verdict", "", TEXT, "valid, warning or invalid: the window checks' outcome"),
    _c("failed_checks", "", TEXT, "checks that failed or warned, name: status, separated by ;"),
    *(column for phase, tokens in (("prefill", "prompt tokens, and the first new token"),
                                   ("decode", "the new tokens after the first")) for column in (
        _c(f"{phase}_time_s", "s", FLOAT,
           f"{phase} time per prompt (measurement.phase_split; by difference for decode)"),
        _c(f"{phase}_energy_j", "J", FLOAT, f"{phase} energy per prompt (decode = full - prefill window, per prompt)"),
        _c(f"{phase}_energy_uncertainty_j", "J", FLOAT, f"uncertainty of {phase}_energy_j (see lem_shared/phases.py)"),
        _c(f"{phase}_tokens_per_s", "token/s", FLOAT, f"{phase} throughput: {tokens} per second"),
        _c(f"{phase}_j_per_token", "J/token", FLOAT, f"{phase} energy per token ({tokens})"),
        _c(f"{phase}_tflops", "TFLOP", FLOAT, f"analytic {phase} FLOPs per prompt (lem_shared/flops.py), in 1e12"),
        _c(f"{phase}_achieved_tflops", "TFLOP/s", FLOAT, f"{phase} FLOPs over {phase} time"),
        _c(f"{phase}_mfu", "fraction", FLOAT, f"{phase} model FLOPs utilisation against the GPU's dense BF16 peak"),
        _c(f"{phase}_j_per_tflop", "J/TFLOP", FLOAT, f"{phase} energy per 1e12 analytic FLOPs"),
    )),
    _c("decode_bandwidth_tb_s", "TB/s", FLOAT, "decode's achieved memory bandwidth (weights + KV cache read per step)"),
    _c("decode_bandwidth_utilisation", "fraction", FLOAT, "decode_bandwidth_tb_s over the GPU's peak"),
    _c("flops_counted_ratio_prefill", "", FLOAT, "profiler: flops: counted / analytic prefill FLOPs (one batch)"),
    _c("flops_counted_ratio_decode", "", FLOAT, "profiler: flops: counted / analytic decode FLOPs (one batch)"),
    _c("model_load_s", "s", FLOAT, "time to load the model (0 when the engine was reused)"),
    _c("model_reused", "", BOOL, "true when the loaded engine of an earlier run was reused"),
    _c("model_load_energy_j", "J", FLOAT, "GPU energy of the model load (cold starts)"),
    _c("warmup_iterations", "batches", INT, "warm-up batches before the window"),
    _c("warmup_converged", "", BOOL, "true when warm-up latencies settled before the cap"),
    _c("passes", "", INT, "passes over the workload in the window"),
    _c("window_start", "UTC", TIMESTAMP, "measurement window start (CSV and JSON: ISO 8601 text)"),
    _c("window_end", "UTC", TIMESTAMP, "measurement window end (CSV and JSON: ISO 8601 text)"),
    _c("worker", "", TEXT, "the Celery worker that measured the run"),
    _c("host", "", TEXT, "host name of the worker"),
    _c("device", "", TEXT, "cuda:N or cpu"),
    _c("gpu_uuid", "", TEXT, "NVML UUID of the GPU"),
    _c("env_gpu_name", "", TEXT, "GPU model"),
    _c("env_driver_version", "", TEXT, "NVIDIA driver version"),
    _c("env_cuda_version", "", TEXT, "CUDA version (driver)"),
    _c("env_power_limit_w", "W", FLOAT, "GPU power limit when the run was recorded"),
    _c("env_torch_version", "", TEXT, "torch version of the worker"),
    _c("env_engine_versions", "", TEXT, "engine package versions of the worker (JSON)"),
    _c("env_engine_facts", "", TEXT, "what the loaded engine used (JSON; vLLM: version, compilation and CUDA-graph "
       "mode, KV-cache blocks and tokens, gpu_memory_utilization, the FlashInfer-sampler switch)"),
    _c("env_hostname", "", TEXT, "host the environment was read on"),
    _c("env_cpu", "", TEXT, "host CPU model"),
]

_UNIT = {c.name: c.unit for c in RUN_COLUMNS}
_MEANING = {c.name: c.meaning for c in RUN_COLUMNS}
_EXPERIMENT_IDENTITY = ["campaign_id", "campaign_name", "campaign_source", "experiment_index", "config_hash",
                        "backend", "model", "dtype", "batch_size"]
EXPERIMENT_COLUMNS: list[Column] = [
    *(c for c in RUN_COLUMNS if c.name in _EXPERIMENT_IDENTITY),
    _c("runs", "runs", INT, "runs of the experiment (all statuses)"),
    _c("runs_done", "runs", INT, "runs measured and finalised"),
    _c("runs_valid", "runs", INT, "done runs whose verdict is valid"),
    *(column for metric in SUMMARY_METRICS for column in (
        _c(f"{metric}_mean", _UNIT[metric], FLOAT, f"{_MEANING[metric]}: mean over the done runs"),
        _c(f"{metric}_ci_low", _UNIT[metric], FLOAT,
           f"{_MEANING[metric]}: lower end of the 95 % percentile-bootstrap interval (empty under 2 runs)"),
        _c(f"{metric}_ci_high", _UNIT[metric], FLOAT, f"{_MEANING[metric]}: upper end of that interval"),
        _c(f"{metric}_n", "runs", INT, f"{_MEANING[metric]}: runs with a figure"),
    )),
]
COLUMNS = {"run": RUN_COLUMNS, "experiment": EXPERIMENT_COLUMNS}
# backend, model, dtype and batch_size are columns of their own, so config.* leaves them out.
_OWN_COLUMNS = ("backend", "model", "dtype", "batch_size")
CONFIG_COLUMN = Column(
    "config.*", "", "", "the rest of the experiment's configuration, flattened to dotted keys: every experiment "
    "field (workload.*, measurement.*) with its value, defaults included; engine parameters (pytorch.*, vllm.*, "
    "trtllm.*) only where set (unset means the engine's default); typed as the field is (engine parameters and "
    "imported keys: as their values are, text when they differ)")


def _percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _per_batch_itl(batches: list[BatchTimingRow]) -> list[float]:
    return [x for b in batches if (x := inter_token_latency([b])) is not None]


def run_rows(campaign_id: int, records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per run of the campaign: RUN_COLUMNS, then ``config.*`` (``records``: its ``run_records`` when
    the caller already has them)."""
    records = run_records(campaign_id) if records is None else records
    with session_scope() as s:
        campaign = s.get(Campaign, campaign_id)
        runs = {r.id: r for r in s.scalars(select(Run).where(Run.campaign_id == campaign_id))}
        metrics = {m.run_id: m for m in s.scalars(select(RunMetrics).where(RunMetrics.run_id.in_(runs)))}
        batches: dict[int, list[BatchTimingRow]] = defaultdict(list)
        for b in s.scalars(select(BatchTimingRow).where(BatchTimingRow.run_id.in_(runs))):
            batches[b.run_id].append(b)
        environments = {e.id: e.data for e in s.scalars(select(Environment).where(
            Environment.id.in_({r.environment_id for r in runs.values() if r.environment_id})))}
        identity = {"campaign_id": campaign.id, "campaign_name": campaign.name, "campaign_source": campaign.source}
        hashes = {e.id: e.config_hash for e in campaign.experiments}
        rows = []
        for record in records:
            run, m = runs[record["run_id"]], metrics.get(record["run_id"])
            analysis = (m.analysis or {}) if m else {}
            config = record["experiment"]
            env = environments.get(run.environment_id) or {}
            itls = _per_batch_itl(batches[run.id])
            shares = analysis.get("reason_share") or {}
            checks = [f"{c['name']}: {c['status']}" for c in (record["checks"] or [])
                      if c["status"] in ("fail", "warning")]
            row = {
                **identity,
                "experiment_index": record["experiment_index"], "config_hash": hashes[run.experiment_id],
                "run_id": run.id, "run_key": run.run_key, "cycle": run.cycle, "status": run.status,
                "backend": record["backend"], "model": config.get("model"), "dtype": config.get("dtype"),
                "batch_size": config.get("batch_size"), "schema_version": run.schema_version,
                "tool_version": run.tool_version, "error": run.error,
                **{key: record[key] for key in (
                    "energy_j", "energy_power_integral_j", "energy_adjusted_j", "energy_source", "baseline_power_w",
                    "baseline_method", "deep_idle_power_w", "idle_before_w", "idle_after_w", "j_per_token",
                    "tokens_per_j", "j_per_request", "mean_power_w", "peak_power_w", "max_temperature_c",
                    "duration_s", "requests", "output_tokens", "tokens_per_s", "ttft_mean_s", "ttft_p50_s",
                    "ttft_p90_s", "ttft_p99_s", "kv_cache_usage_peak", "kv_cache_usage_mean", "preemptions",
                    "itl_mean_s", "latency_mean_s", "latency_p50_s", "latency_p90_s", "latency_p99_s",
                    "peak_memory_bytes", "peak_memory_kind", "verdict",
                    "model_load_s", "model_reused", "warmup_iterations", "warmup_converged", "passes",
                    "window_start", "window_end", "worker", "host", "device", "gpu_uuid")},
                "j_per_token_adjusted": (record["energy_adjusted_j"] / record["output_tokens"]
                                         if record["energy_adjusted_j"] is not None and record["output_tokens"]
                                         else None),
                "imported_tokens_per_s": (record["imported_tokens_per_s"] or {}).get("value"),
                "imported_tokens_per_s_counts": (record["imported_tokens_per_s"] or {}).get("counts"),
                "input_tokens": m.input_tokens if m else None,
                "requests_per_s": m.requests_per_s if m else None,
                "effective_batch_size": (sum(b.batch_size for b in batches[run.id]) / len(batches[run.id])
                                         if batches[run.id] else None),
                "itl_p50_s": _percentile(itls, 50), "itl_p90_s": _percentile(itls, 90),
                "itl_p99_s": _percentile(itls, 99),
                "gpu_utilisation_mean_pct": analysis.get("utilization_mean_pct"),
                "sm_clock_ratio": analysis.get("sm_clock_ratio"),
                **{c.name: shares.get(c.name.removeprefix("throttle_share_")) if shares else None for c in _THROTTLE},
                "thermal_throttling": analysis.get("thermal_throttling"),
                "power_brake": analysis.get("power_brake"),
                "failed_checks": "; ".join(checks) or None,
                "model_load_energy_j": m.model_load_energy_j if m else None,
                **_phase_columns(record["phase_split"], record["flops"]),
                **_environment_columns(env),
            }
            rows.append({**{c.name: row[c.name] for c in RUN_COLUMNS}, **config_columns(config)})
    return rows


def _phase_columns(split: dict[str, Any] | None, flops: dict[str, Any] | None) -> dict[str, Any]:
    per_prompt = (split or {}).get("per_prompt") or {}
    out: dict[str, Any] = {}
    for phase in ("prefill", "decode"):
        figures = per_prompt.get(phase) or {}
        out.update({f"{phase}_time_s": figures.get("time_s"), f"{phase}_energy_j": figures.get("energy_j"),
                    f"{phase}_energy_uncertainty_j": figures.get("energy_uncertainty_j"),
                    f"{phase}_tokens_per_s": figures.get("tokens_per_s"),
                    f"{phase}_j_per_token": figures.get("j_per_token"),
                    f"{phase}_tflops": figures["flops"] / 1e12 if figures.get("flops") else None,
                    f"{phase}_achieved_tflops": figures.get("achieved_tflops"), f"{phase}_mfu": figures.get("mfu"),
                    f"{phase}_j_per_tflop": figures.get("j_per_tflop")})
    memory = (per_prompt.get("decode") or {}).get("memory") or {}
    ratio = (flops or {}).get("ratio") or {}
    out.update(decode_bandwidth_tb_s=memory.get("achieved_tb_s"),
               decode_bandwidth_utilisation=memory.get("bandwidth_utilisation"),
               flops_counted_ratio_prefill=ratio.get("prefill"), flops_counted_ratio_decode=ratio.get("decode"))
    return out


def _environment_columns(env: dict[str, Any]) -> dict[str, Any]:
    """The environment snapshot's main facts (the full snapshot stays in the database). ``gpus`` is a list, or
    a text saying why NVML was unavailable (then the GPU columns are empty)."""
    gpus = env.get("gpus")
    gpu = gpus[0] if isinstance(gpus, list) and gpus else {}
    packages = env.get("packages") if isinstance(env.get("packages"), dict) else {}
    return {
        "env_gpu_name": gpu.get("name"), "env_driver_version": gpu.get("driver_version"),
        "env_cuda_version": gpu.get("cuda_driver_version"), "env_power_limit_w": gpu.get("power_limit_w"),
        "env_torch_version": packages.get("torch"),
        "env_engine_versions": json.dumps(packages, sort_keys=True) if packages else None,
        "env_engine_facts": json.dumps(env["engine"], sort_keys=True) if env.get("engine") else None,
        "env_hostname": env.get("host"), "env_cpu": env.get("cpu_model"),
    }


def experiment_rows(campaign_id: int, resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per experiment: identity, run counts, and per summary metric the mean and bootstrap CI."""
    by_experiment: dict[int, list[dict[str, Any]]] = defaultdict(list)
    rows_by_experiment: dict[int, list[dict[str, Any]]] = defaultdict(list)
    records = run_records(campaign_id)
    for record in records:
        by_experiment[record["experiment_index"]].append(record)
    for row in run_rows(campaign_id, records):
        rows_by_experiment[row["experiment_index"]].append(row)
    out = []
    for index in sorted(by_experiment):
        summary = summarise_experiment(by_experiment[index], resamples=resamples, seed=seed)
        first = rows_by_experiment[index][0]
        row = {name: first[name] for name in _EXPERIMENT_IDENTITY}
        row.update(runs=summary["runs"], runs_done=summary["runs_done"],
                   runs_valid=sum(1 for r in by_experiment[index] if r["status"] == "done" and r["verdict"] == "valid"))
        for metric, figures in summary["metrics"].items():
            row.update({f"{metric}_mean": figures["mean"], f"{metric}_ci_low": figures["ci_low"],
                        f"{metric}_ci_high": figures["ci_high"], f"{metric}_n": figures["n"]})
        out.append({**{c.name: row[c.name] for c in EXPERIMENT_COLUMNS},
                    **{k: v for k, v in first.items() if k.startswith("config.")}})
    return out


def config_columns(config: dict[str, Any]) -> dict[str, Any]:
    """The experiment's configuration as ``config.*`` columns: every set key but the ones with columns of their
    own (``_OWN_COLUMNS``); a key whose value is None (an option left to its default) has none."""
    return {f"config.{k}": v for k, v in flatten(config).items() if k not in _OWN_COLUMNS and v is not None}


def _field_types(model: type[BaseModel], prefix: str = "config.") -> dict[str, str]:
    """Column types of ExperimentConfig's own fields, dotted as ``flatten`` names them (engine sections left out:
    their parameters are typed by their values)."""
    types: dict[str, str] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, EngineSection):
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            types.update(_field_types(annotation, f"{prefix}{name}."))
            continue
        args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
        plain = [a for a in args if a is not type(None)]
        types[prefix + name] = {bool: BOOL, int: INT, float: FLOAT}.get(plain[0], TEXT) if len(plain) == 1 else TEXT
    return types


CONFIG_TYPES = _field_types(ExperimentConfig)


def _value_type(values: list[Any]) -> str:
    """The type of a column outside the table (an engine parameter, an imported key): its values' one type
    (int and float: float), text when they differ or there are none."""
    kinds = {type(v) for v in values if v is not None}
    if kinds == {int, float}:
        return FLOAT
    if len(kinds) == 1:
        return {bool: BOOL, int: INT, float: FLOAT}.get(kinds.pop(), TEXT)
    return TEXT


def columns_of(rows: list[dict[str, Any]], documented: list[Column]) -> list[Column]:
    """The file's columns: the documented ones with their types, then the rows' ``config.*`` keys (ExperimentConfig
    fields typed as declared, others by their values)."""
    known = {c.name for c in documented}
    extra = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in known]
    return [*documented, *(Column(name, "", CONFIG_TYPES.get(name) or _value_type([r.get(name) for r in rows]),
                                  "configuration") for name in extra)]


def _typed(value: Any, column: Column) -> Any:
    """``value`` as ``column``'s type: ints as int, numbers as float, lists and mappings (and whatever a text
    column holds) as text, JSON for the structured ones; timestamps stay ISO 8601 text (Parquet converts)."""
    if value is None:
        return None
    if column.type == FLOAT and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if column.type == INT and isinstance(value, int | float) and not isinstance(value, bool) and value == int(value):
        return int(value)
    if column.type == BOOL and isinstance(value, bool):
        return value
    if column.type in (TEXT, TIMESTAMP) and isinstance(value, str):
        return value
    if column.type == TEXT:
        return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else str(value)
    raise TypeError(f"column {column.name} ({column.type}) cannot hold {value!r}")


def write(rows: list[dict[str, Any]], path: Path, fmt: str, documented: list[Column]) -> int:
    """Write ``rows`` to ``path`` as csv, parquet or json (a list of records), typed by ``documented`` and
    ``config.*`` as ``columns_of`` says; returns the row count. The file appears whole or not at all
    (``safe_write``): a failed write leaves what was at ``path``; a target that is not a regular file or whose
    folder does not exist is refused (``BadTarget``), nothing is created."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    columns = columns_of(rows, documented)
    table = [{c.name: _typed(row.get(c.name), c) for c in columns} for row in rows]

    def write_to(f: BinaryIO) -> None:
        if fmt == "csv":
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            writer = csv.DictWriter(text, fieldnames=[c.name for c in columns])
            writer.writeheader()
            writer.writerows(table)
            text.flush()
            text.detach()
        elif fmt == "json":
            f.write((json.dumps(table, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
        else:
            import pyarrow.parquet as pq

            pq.write_table(arrow_table(table, columns), f)

    write_atomically(path, write_to)
    return len(table)


def arrow_schema(columns: list[Column]) -> Any:
    """Parquet's schema: each column's type from the table, its unit and meaning in the field's metadata."""
    import pyarrow as pa

    types = {INT: pa.int64(), FLOAT: pa.float64(), BOOL: pa.bool_(), TEXT: pa.string(),
             TIMESTAMP: pa.timestamp("us", tz="UTC")}
    return pa.schema([pa.field(c.name, types[c.type], metadata={"unit": c.unit, "meaning": c.meaning})
                      for c in columns])


def arrow_table(table: list[dict[str, Any]], columns: list[Column]) -> Any:
    import pyarrow as pa

    stamps = [c.name for c in columns if c.type == TIMESTAMP]
    rows = [{**r, **{n: datetime.fromisoformat(r[n]) if r[n] else None for n in stamps}} for r in table]
    return pa.Table.from_pylist(rows, schema=arrow_schema(columns))


def export(campaign_id: int, path: Path, fmt: str, level: str = "run") -> int:
    check_target(path)  # refused before the database is read
    rows = run_rows(campaign_id) if level == "run" else experiment_rows(campaign_id)
    return write(rows, path, fmt, COLUMNS[level])


SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".json": "json"}


class FormatError(ValueError):
    """The format cannot be told from the file name, or contradicts it."""


def format_for(path: Path, fmt: str | None) -> str:
    """The format to write ``path`` in: ``fmt`` when given, else the one its suffix names; a given format that
    another known suffix contradicts (``--format csv -o runs.parquet``) is refused."""
    implied = SUFFIXES.get(path.suffix.lower())
    if fmt is None and implied is None:
        raise FormatError(f"{path}: cannot tell the format from the name; give --format csv|parquet|json or name "
                          "the file .csv, .parquet or .json")
    if fmt is not None and implied is not None and fmt != implied:
        raise FormatError(f"--format {fmt} contradicts the file name {path.name} ({implied}); drop --format or "
                          f"name the file .{fmt}")
    return fmt or implied  # type: ignore[return-value]
