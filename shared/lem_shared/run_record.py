"""A run's result as one typed record: every field once, with its unit and meaning.

The export's run columns (names, units, Parquet types, meanings: ``lem results columns``) and the record
``lem results show --json`` prints are both read off ``RunRecord``'s fields; the planner's ``run_records`` fills it.
The two writers (the worker's figures, the finaliser's energy and checks) store through ``stored``, which refuses a
figure the record does not name, so a field is added here first and every reader and the export see it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from lem_shared.measure.analysis import CLOCK_EVENT_REASONS

# A column's type, the same in every file and every campaign (Parquet's schema is built from it).
INT, FLOAT, BOOL, TEXT, TIMESTAMP = "int", "float", "bool", "text", "timestamp"


@dataclass(frozen=True)
class Column:
    name: str
    unit: str
    type: str
    meaning: str


def _f(unit: str, meaning: str, *, shown: bool = False, type_: str | None = None) -> Any:
    """An exported column; ``shown``: also in ``lem results show --json``; ``type_`` where the annotation does not
    say it (timestamps held as ISO 8601 text)."""
    return field(
        default=None, metadata={"unit": unit, "meaning": meaning, "column": True, "shown": shown, "type": type_}
    )


def _shown(meaning: str, as_: str | None = None) -> Any:
    """Only in ``lem results show --json`` (structured, no column), under the name ``as_`` when given."""
    return field(default=None, metadata={"meaning": meaning, "column": False, "shown": True, "as": as_})


def _group(columns: list[Column]) -> Any:
    """Several columns held as one mapping of column name to value (per phase, per clock event reason)."""
    return field(default_factory=dict, metadata={"columns": columns, "column": False, "shown": False})


_THROTTLE = [
    Column(
        f"throttle_share_{label}",
        "fraction",
        FLOAT,
        f"share of the window's samples with NVML's {label} clock event reason set",
    )
    for label in [*CLOCK_EVENT_REASONS.values(), "none"]
]
PHASES = {"prefill": "prompt tokens, and the first new token", "decode": "the new tokens after the first"}
PHASE_COLUMNS = [
    column
    for phase, tokens in PHASES.items()
    for column in (
        Column(
            f"{phase}_time_s",
            "s",
            FLOAT,
            f"{phase} time per prompt (measurement.phase_split; by difference for decode)",
        ),
        Column(
            f"{phase}_energy_j", "J", FLOAT, f"{phase} energy per prompt (decode = full - prefill window, per prompt)"
        ),
        Column(
            f"{phase}_energy_uncertainty_j",
            "J",
            FLOAT,
            f"uncertainty of {phase}_energy_j (see lem_shared/measure/prefill_decode.py)",
        ),
        Column(f"{phase}_tokens_per_s", "token/s", FLOAT, f"{phase} throughput: {tokens} per second"),
        Column(f"{phase}_j_per_token", "J/token", FLOAT, f"{phase} energy per token ({tokens})"),
        Column(
            f"{phase}_tflops",
            "TFLOP",
            FLOAT,
            f"analytic {phase} FLOPs per prompt (lem_shared/measure/flops.py), in 1e12",
        ),
        Column(f"{phase}_achieved_tflops", "TFLOP/s", FLOAT, f"{phase} FLOPs over {phase} time"),
        Column(f"{phase}_mfu", "fraction", FLOAT, f"{phase} model FLOPs utilisation against the GPU's dense BF16 peak"),
        Column(f"{phase}_j_per_tflop", "J/TFLOP", FLOAT, f"{phase} energy per 1e12 analytic FLOPs"),
    )
]


@dataclass(frozen=True)
class RunRecord:
    """One run of a campaign: its identity, what it measured, the energy attached to it, its checks and the
    environment it ran in. None where the run has no figure (not measured, no NVML, an imported run)."""

    campaign_id: int = _f("", "campaign id in the database")
    campaign_name: str = _f("", "campaign name")
    campaign_source: str = _f("", "lem (measured by this tool) or imported (read from the earlier tool's files)")
    experiment_index: int = _f("", "the experiment's position in its campaign", shown=True)
    config_hash: str = _f("", "sha256 of the experiment's canonical config JSON")
    experiment: dict[str, Any] = _shown("the experiment's configuration")
    run_id: int = _f("", "run id in the database", shown=True)
    run_key: str = _f("", "the run's unique key (also its Celery task id)", shown=True)
    cycle: int = _f("", "repetition number, from 0", shown=True)
    status: str = _f("", "done, failed, cancelled, ...", shown=True)
    attempts: int = _shown("times the run was sent to a worker")
    backend: str = _f("", "pytorch, vllm or trtllm", shown=True)
    model: str | None = _f("", "model id (random:* presets are random-initialised)")
    dtype: str | None = _f("", "weights' precision as configured")
    batch_size: int | None = _f("prompts", "configured batch size")
    schema_version: str | None = _f("", "Alembic revision the run was recorded under")
    tool_version: str | None = _f("", "tool that recorded the run")
    error: str | None = _f("", "why the run failed, when it did", shown=True)
    energy_j: float | None = _f("J", "GPU energy in the measurement window (NVML's total-energy counter)", shown=True)
    energy_power_integral_j: float | None = _f(
        "J", "the same window's energy from integrating the power samples (a check)", shown=True
    )
    energy_adjusted_j: float | None = _f(
        "J", "energy_j minus baseline_power_w x window length: what the workload added", shown=True
    )
    energy_source: str | None = _f(
        "",
        "where energy_j came from (counter, power integral; imported:gpu for the earlier tool's GPU-only "
        "figures, imported:gpu+cpu+ram for CodeCarbon's total, imported:unnamed where its file does not say)",
        shown=True,
    )
    energy_note: str | None = _shown("why energy_j is missing, or the energy checks that failed")
    energy_gpu_j: float | None = _f("J", "GPU energy of the window summed over the run's GPUs (energy_j)", shown=True)
    energy_per_gpu: dict[str, Any] | None = _shown("each GPU's window energy, source and verdict, by UUID")
    energy_cpu_j: float | None = _f(
        "J", "CPU package energy of the run's host in the window (RAPL; empty where the host has none)", shown=True
    )
    energy_dram_j: float | None = _f("J", "DRAM energy of the run's host in the window (RAPL dram domains)", shown=True)
    energy_total_j: float | None = _f(
        "J",
        "energy_gpu_j + energy_cpu_j + energy_dram_j, the parts measured (energy_host_note names the rest)",
        shown=True,
    )
    energy_host_note: str | None = _f(
        "", "how the CPU and DRAM energy was measured, or why not (n/a (no RAPL))", shown=True
    )
    carbon_g: float | None = _f("g CO2e", "energy_total_j at the campaign's grid intensity (carbon_source)", shown=True)
    carbon_source: str | None = _f("", "the grid intensity carbon_g used: a constant or a CSV series", shown=True)
    baseline_power_w: float | None = _f("W", "the idle power subtracted for energy_adjusted_j", shown=True)
    baseline_method: str | None = _f(
        "", "which idle baseline: deep idle before the campaign, or the run's own idle gaps", shown=True
    )
    deep_idle_power_w: float | None = _f(
        "W", "the GPU's idle power measured before the campaign's first run on it", shown=True
    )
    idle_before_w: float | None = _f("W", "mean power in the idle gap just before the window", shown=True)
    idle_after_w: float | None = _f("W", "mean power in the idle gap just after the window", shown=True)
    j_per_token: float | None = _f("J/token", "energy_j over output tokens", shown=True)
    j_per_token_adjusted: float | None = _f("J/token", "energy_adjusted_j over output tokens")
    tokens_per_j: float | None = _f("token/J", "output tokens over energy_j", shown=True)
    j_per_request: float | None = _f("J/request", "energy_j over requests (prompts)", shown=True)
    mean_power_w: float | None = _f("W", "mean power in the window", shown=True)
    peak_power_w: float | None = _f("W", "highest power sample in the window", shown=True)
    max_temperature_c: float | None = _f("degC", "highest GPU temperature in the window", shown=True)
    duration_s: float | None = _f("s", "length of the measurement window", shown=True)
    requests: int | None = _f("prompts", "prompts completed in the window", shown=True)
    input_tokens: int | None = _f("tokens", "prompt tokens processed in the window")
    output_tokens: int | None = _f("tokens", "tokens generated in the window", shown=True)
    tokens_per_s: float | None = _f("token/s", "output tokens over the window's length", shown=True)
    imported_throughput: dict[str, Any] | None = _shown(
        "imported runs: the earlier tool's own tokens/s, {field, value, counts}", as_="imported_tokens_per_s"
    )
    imported_tokens_per_s: float | None = _f(
        "token/s",
        "imported runs: the earlier tool's own headline throughput (its avg_tokens_per_second), which "
        "counts the tokens imported_tokens_per_s_counts names; tokens_per_s is ours",
    )
    imported_tokens_per_s_counts: str | None = _f(
        "",
        "the tokens imported_tokens_per_s counts: input + output tokens (the rewrite's result.json) or output "
        "tokens (v2/v3), per second of the earlier tool's inference time",
    )
    requests_per_s: float | None = _f("prompt/s", "prompts over the window's length")
    effective_batch_size: float | None = _f("prompts", "mean prompts per generate call in the window")
    ttft_mean_s: float | None = _f(
        "s",
        "time to first token: mean over the window's requests where the engine reports each request's (vLLM), "
        "else over its batches (a batch's first token)",
        shown=True,
    )
    ttft_p50_s: float | None = _f("s", "time to first token: median over requests (vLLM) or batches", shown=True)
    ttft_p90_s: float | None = _f(
        "s", "time to first token: 90th percentile over requests (vLLM) or batches", shown=True
    )
    ttft_p99_s: float | None = _f(
        "s", "time to first token: 99th percentile over requests (vLLM) or batches", shown=True
    )
    itl_mean_s: float | None = _f(
        "s",
        "inter-token latency, mean: offline, per batch (batch latency - TTFT) / (tokens per sequence - 1), the "
        "batch's time per output token; serving, every gap between consecutive tokens of a request, pooled",
        shown=True,
    )
    itl_p50_s: float | None = _f("s", "inter-token latency: median over batches (serving: over all gaps)")
    itl_p90_s: float | None = _f("s", "inter-token latency: 90th percentile over batches")
    itl_p99_s: float | None = _f("s", "inter-token latency: 99th percentile over batches")
    latency_mean_s: float | None = _f(
        "s",
        "end-to-end latency, mean: offline, of a generate call (every prompt of a batch finishes with it) over "
        "batches; serving, of a request from its arrival to its last token",
        shown=True,
    )
    latency_p50_s: float | None = _f("s", "end-to-end latency: median over batches", shown=True)
    latency_p90_s: float | None = _f(
        "s", "end-to-end latency: 90th percentile over batches (empty for imported runs)", shown=True
    )
    latency_p99_s: float | None = _f(
        "s", "end-to-end latency: 99th percentile over batches (empty for imported runs)", shown=True
    )
    tpot_mean_s: float | None = _f(
        "s",
        "serving: time per output token after the first, (finish - first token) / (tokens - 1), mean over requests",
        shown=True,
    )
    tpot_p50_s: float | None = _f("s", "serving: time per output token, median over requests", shown=True)
    tpot_p90_s: float | None = _f("s", "serving: time per output token, 90th percentile over requests")
    tpot_p99_s: float | None = _f("s", "serving: time per output token, 99th percentile over requests", shown=True)
    goodput_rps: float | None = _f(
        "request/s", "serving: requests meeting every workload.slo objective, per second of the window", shown=True
    )
    slo_attainment: float | None = _f("fraction", "serving: share of requests meeting every workload.slo objective")
    steady_start_s: float | None = _f(
        "s",
        "serving: start of the steady state (running requests at the level the run reaches), after the window's start",
        shown=True,
    )
    steady_end_s: float | None = _f(
        "s", "serving: end of the steady state (the backlog drains), after the window's start", shown=True
    )
    steady_level: int | None = _f("requests", "serving: requests running in the engine during the steady state")
    steady_method: str | None = _f("", "serving: how the steady state was found, and its warnings", shown=True)
    steady_energy_j: float | None = _f(
        "J", "serving: GPU energy in the steady state (counter, interpolated)", shown=True
    )
    steady_j_per_token: float | None = _f(
        "J/token", "serving: steady-state energy over the output tokens emitted in it", shown=True
    )
    steady_tokens_per_j: float | None = _f("token/J", "serving: output tokens emitted in the steady state per joule")
    steady_j_per_request: float | None = _f(
        "J/request", "serving: steady-state energy over the requests finished in it", shown=True
    )
    request_energy_mean_j: float | None = _f(
        "J", "serving: energy per request (its token share of each engine step's energy), mean", shown=True
    )
    request_energy_p50_j: float | None = _f("J", "serving: energy per request, median", shown=True)
    request_energy_p90_j: float | None = _f("J", "serving: energy per request, 90th percentile")
    request_energy_p99_j: float | None = _f("J", "serving: energy per request, 99th percentile", shown=True)
    kv_cache_usage_peak: float | None = _f(
        "fraction",
        "highest share of the engine's KV-cache blocks in use at an engine step of the window (vLLM's "
        "scheduler stats; empty for engines that do not report it)",
        shown=True,
    )
    kv_cache_usage_mean: float | None = _f(
        "fraction",
        "KV-cache share in use, mean over the window's engine steps (the mean of each batch's mean)",
        shown=True,
    )
    preemptions: int | None = _f(
        "requests", "requests the engine preempted in the window (KV cache full; vLLM)", shown=True
    )
    peak_memory_bytes: int | None = _f(
        "B", "peak device memory (CUDA: torch's max allocated; CPU: process peak RSS)", shown=True
    )
    peak_memory_kind: str | None = _f("", "what peak_memory_bytes measures", shown=True)
    gpu_utilisation_mean_pct: float | None = _f("%", "NVML GPU utilisation averaged over the window")
    sm_clock_ratio: float | None = _f("", "mean SM clock in the window over the clock just before it")
    throttle_shares: dict[str, float | None] = _group(_THROTTLE)
    thermal_throttling: bool | None = _f("", "true when any window sample had a thermal clock event")
    power_brake: bool | None = _f("", "true when any window sample had the HW power brake")
    verdict: str | None = _f("", "valid, warning or invalid: the window checks' outcome", shown=True)
    checks: list[dict[str, Any]] | None = _shown("every window and run check: name, status, message")
    failed_checks: str | None = _f("", "checks that failed or warned, name: status, separated by ;")
    phase_split: dict[str, Any] | None = _shown("the prefill/decode split (measurement.phase_split)")
    flops: dict[str, Any] | None = _shown("counted against analytic FLOPs (profiler: flops)")
    phase_figures: dict[str, float | None] = _group(PHASE_COLUMNS)
    decode_bandwidth_tb_s: float | None = _f(
        "TB/s", "decode's achieved memory bandwidth (weights + KV cache read per step)"
    )
    decode_bandwidth_utilisation: float | None = _f("fraction", "decode_bandwidth_tb_s over the GPU's peak")
    flops_counted_ratio_prefill: float | None = _f("", "profiler: flops: counted / analytic prefill FLOPs (one batch)")
    flops_counted_ratio_decode: float | None = _f("", "profiler: flops: counted / analytic decode FLOPs (one batch)")
    model_load_s: float | None = _f("s", "time to load the model (0 when the engine was reused)", shown=True)
    model_reused: bool | None = _f("", "true when the loaded engine of an earlier run was reused", shown=True)
    model_load_energy_j: float | None = _f("J", "GPU energy of the model load (cold starts)")
    warmup_iterations: int | None = _f("batches", "warm-up batches before the window", shown=True)
    warmup_converged: bool | None = _f("", "true when warm-up latencies settled before the cap", shown=True)
    warmup_final_cv: float | None = _shown("coefficient of variation of the last warm-up latencies")
    passes: int | None = _f("", "passes over the workload in the window", shown=True)
    window_start: str | None = _f(
        "UTC", "measurement window start (CSV and JSON: ISO 8601 text)", shown=True, type_=TIMESTAMP
    )
    window_end: str | None = _f(
        "UTC", "measurement window end (CSV and JSON: ISO 8601 text)", shown=True, type_=TIMESTAMP
    )
    worker: str | None = _f("", "the Celery worker that measured the run", shown=True)
    host: str | None = _f("", "host name of the worker", shown=True)
    device: str | None = _f("", "cuda:N or cpu", shown=True)
    gpu_uuid: str | None = _f("", "NVML UUID of the GPU (the first, for a run on several)", shown=True)
    gpu_uuids: str | None = _f("", "every GPU the run used, NVML UUIDs separated by ;", shown=True)
    env_gpu_name: str | None = _f("", "GPU model")
    env_driver_version: str | None = _f("", "NVIDIA driver version")
    env_cuda_version: str | None = _f("", "CUDA version (driver)")
    env_power_limit_w: float | None = _f("W", "GPU power limit when the run was recorded")
    env_torch_version: str | None = _f("", "torch version of the worker")
    env_engine_versions: str | None = _f("", "engine package versions of the worker (JSON)")
    env_engine_facts: str | None = _f(
        "",
        "what the loaded engine used (JSON; vLLM: version, compilation and CUDA-graph mode, KV-cache blocks and "
        "tokens, gpu_memory_utilization, the FlashInfer-sampler switch)",
    )
    env_hostname: str | None = _f("", "host the environment was read on")
    env_cpu: str | None = _f("", "host CPU model")

    def row(self) -> dict[str, Any]:
        """The export's run row: ``RUN_COLUMNS`` in order."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if "columns" in f.metadata:
                group = getattr(self, f.name)
                out.update({c.name: group.get(c.name) for c in f.metadata["columns"]})
            elif f.metadata["column"]:
                out[f.name] = getattr(self, f.name)
        return out

    def shown(self) -> dict[str, Any]:
        """What ``lem results show --json`` prints for the run."""
        return {f.metadata.get("as") or f.name: getattr(self, f.name) for f in fields(self) if f.metadata["shown"]}


_TYPES = {int: INT, float: FLOAT, bool: BOOL, str: TEXT}


def _column_type(annotation: Any) -> str:
    plain = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)]
    return _TYPES[plain[0]]


def _run_columns() -> list[Column]:
    """Every column of the run export, in order, from ``RunRecord``'s fields."""
    hints = get_type_hints(RunRecord)
    columns: list[Column] = []
    for f in fields(RunRecord):
        if "columns" in f.metadata:
            columns.extend(f.metadata["columns"])
        elif f.metadata["column"]:
            columns.append(
                Column(
                    f.name, f.metadata["unit"], f.metadata["type"] or _column_type(hints[f.name]), f.metadata["meaning"]
                )
            )
    return columns


RUN_COLUMNS = _run_columns()


# Stored beside the fields: the finaliser's analysis (read back into checks, phase_split, flops and the window
# columns) and latency_p95_s, which predates the p90/p99 read from the batches.
STORED_ONLY = frozenset({"analysis", "latency_p95_s"})
_FIELD_NAMES = frozenset(f.name for f in fields(RunRecord)) | STORED_ONLY


def stored(figures: dict[str, Any]) -> dict[str, Any]:
    """``figures`` unchanged when every name is a field of the record, else ValueError naming the strangers."""
    unknown = sorted(set(figures) - _FIELD_NAMES)
    if unknown:
        raise ValueError(f"not fields of RunRecord: {', '.join(unknown)} (declare them in lem_shared/run_record.py)")
    return figures
