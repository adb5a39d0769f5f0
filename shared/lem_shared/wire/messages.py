"""Message contracts between services: frozen pydantic models sent as JSON, and the run key."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_of(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def run_key(campaign_id: int, experiment_config: dict[str, Any], cycle: int) -> str:
    """The identity of one run: the Celery task id and a UNIQUE column, so a redelivery is recognised."""
    return sha256_of({"campaign": campaign_id, "experiment": experiment_config, "cycle": cycle})


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunRequest(_Message):
    """planner → worker: measure one experiment once (one cycle)."""

    run_key: str = Field(min_length=64, max_length=64)
    run_id: int
    campaign_id: int
    cycle: int = Field(ge=0)
    experiment: dict[str, Any]
    position: int = 0
    # How the worker paces its GPU before this run (the campaign's settings; see CampaignConfig).
    config_gap_s: float = 0.0
    cycle_gap_s: float = 0.0
    thermal_gap: dict[str, float] | None = None
    cold_start: bool = False


class FinaliseRequest(_Message):
    """worker → control: the run's measurement window is closed; attach energy and advance the campaign."""

    run_id: int


class BatchTiming(_Message):
    batch_index: int
    batch_size: int
    input_tokens: int
    output_tokens: int
    latency_s: float
    ttft_s: float | None
    request_ttfts_s: list[float] | None = None  # each request's own TTFT, where the engine reports it
    kv_cache_usage_peak: float | None = None  # fraction of the engine's KV-cache blocks in use, over its steps
    kv_cache_usage_mean: float | None = None
    preemptions: int | None = None  # requests the engine preempted (KV cache full) during the batch


class Warmup(_Message):
    iterations: int
    converged: bool
    final_cv: float | None
    latencies_s: list[float]


Span = tuple[float, float]


class GpuEdge(_Message):
    """One GPU read at a window edge: its energy counter (mJ) and instantaneous power, None where it has none."""

    energy_mj: int | None
    power_instant_w: float | None = None


class EdgeRead(_Message):
    """Every GPU of the run read at one window edge, right after the device synchronise, by the engine host.

    The window starts when the start read returns and ends before the end read begins, so the reads' own cost
    (about 4 ms a counter on an H200) stays outside it; ``read_s`` is that cost."""

    t: float  # Unix seconds: the window's edge
    read_s: float
    gpus: dict[str, GpuEdge]  # by GPU UUID


class WindowEdges(_Message):
    start: EdgeRead
    end: EdgeRead


class PrefillWindow(_Message):
    """The prefill-only window of a phase-split run: the same prompts and batches, one new token each."""

    warmup_iterations: int
    idle_before: Span | None
    window_start: float
    window_end: float
    passes: int
    batches: list[BatchTiming]
    idle_after: Span | None
    edges: WindowEdges | None = None


class ServedRequest(_Message):
    """One request of a serving run, as the engine saw it. Times are Unix seconds; ``token_times`` holds one time
    per output token (tokens the engine emitted together share a time), the first at ``first_token``."""

    index: int = Field(ge=0)  # the request's position in the workload
    arrival: float  # when it was handed to the engine (its scheduled arrival, or later if the driver was late)
    first_token: float | None  # None only for a request that produced no token
    finish: float
    prompt_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    token_times: list[float]


class EngineStep(_Message):
    """One engine step of a serving run: its span (Unix seconds), the tokens each request got in it as
    ``{request index: [prefill tokens, decode tokens]}`` (keys are strings in JSON), and the requests running and
    waiting when it was scheduled."""

    start: float
    end: float
    tokens: dict[int, tuple[int, int]]
    running: int = Field(ge=0)
    waiting: int = Field(ge=0)


class ServingTrace(_Message):
    """What an engine reports for a serving run: every request and every step (``workload.mode: serving``)."""

    requests: list[ServedRequest]
    steps: list[EngineStep]
    facts: dict[str, Any] = {}  # how the adapter drove the engine (API, scheduler, what it could not record)


class Measurement(_Message):
    """engine host → worker: what one run measured. Times are Unix seconds (spans) or seconds (durations)."""

    device: str
    device_name: str
    gpu_uuid: str | None
    gpu_uuids: list[str] = []  # every GPU the run used, gpu_uuid first (empty on the CPU)
    model_load_s: float
    model_reused: bool
    model_load: Span | None = None  # wall-clock span of the load, when the model was loaded for this run
    warmup: Warmup
    passes: int  # times the workload ran in the window to reach the minimum duration
    deep_idle: Span | None  # idle before the campaign's first run on this GPU
    idle_before: Span | None  # idle just before the window
    idle_after: Span | None  # idle just after it
    window_start: float
    window_end: float
    batches: list[BatchTiming]
    peak_memory_bytes: int | None
    peak_memory_kind: str
    environment: dict[str, Any]
    prefill: PrefillWindow | None = None  # measurement.phase_split: the prefill-only window, after the full one
    flops_counted: dict[str, Any] | None = None  # measurement.profiler flops: an unmeasured pass's counted FLOPs
    model_shape: dict[str, Any] | None = None  # the model's config (layers, heads, sizes) for analytic FLOPs
    edges: WindowEdges | None = None  # every GPU's counter read at the window's edges (None without NVML)
    serving: ServingTrace | None = None  # workload.mode serving: the requests and engine steps of the window
