"""What an engine adapter provides. One small adapter per backend; everything else is common runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from lem_shared.config.schema import ExperimentConfig
from lem_shared.wire.messages import ServingTrace


@dataclass(frozen=True)
class Generation:
    """One batch generated: the output tokens produced and, where the engine tells them, time to first token (the
    batch's, and each request's), and the engine's KV-cache usage over the batch's steps (fraction of its blocks)
    with the requests it preempted."""

    output_tokens: int
    ttft_s: float | None
    request_ttfts_s: list[float] | None = None
    kv_cache_usage_peak: float | None = None
    kv_cache_usage_mean: float | None = None
    preemptions: int | None = None


@dataclass(frozen=True)
class DeviceInfo:
    """The device a run uses: for a run on several GPUs, every one of them (``gpu_uuids``; ``gpu_uuid`` is the
    first, the one a single-GPU reader keys on). Left empty, ``gpu_uuids`` is ``[gpu_uuid]`` (none on the CPU)."""

    device: str  # "cpu", "cuda:0", "cuda:0,1", ...
    name: str
    gpu_uuid: str | None  # NVML-style "GPU-…", the key telemetry samples are stored under
    gpu_uuids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.gpu_uuids:
            object.__setattr__(self, "gpu_uuids", [self.gpu_uuid] if self.gpu_uuid else [])
        elif self.gpu_uuid != self.gpu_uuids[0]:
            raise ValueError(f"DeviceInfo.gpu_uuid ({self.gpu_uuid}) must be the first of gpu_uuids {self.gpu_uuids}")
        if len(set(self.gpu_uuids)) != len(self.gpu_uuids):
            raise ValueError(f"DeviceInfo.gpu_uuids names a GPU twice: {self.gpu_uuids}")


class EngineAdapter(Protocol):
    def __init__(self, device: str) -> None: ...

    def load(self, experiment: ExperimentConfig) -> None:
        """Load the experiment's model (the runtime calls it only when the model changes)."""

    def unload(self) -> None: ...

    def vocab_size(self) -> int: ...

    def generate(self, prompts: list[list[int]], experiment: ExperimentConfig) -> Generation:
        """Generate exactly ``experiment.workload.output_len`` tokens per prompt; return when the device is done."""

    def synchronize(self) -> None: ...

    def device_info(self) -> DeviceInfo: ...

    def reset_peak_memory(self) -> None: ...

    def peak_memory(self) -> tuple[int | None, str]:
        """Peak memory since the last reset and what it measures (e.g. "cuda_allocated", "process_rss")."""

    def versions(self) -> dict[str, str]:
        """Engine package versions for the environment snapshot."""

    # Optional hooks, read with getattr by the runtime: ``model_shape()`` (the loaded model's config) and
    # ``engine_facts()`` (JSON: what the loaded engine really uses, e.g. attention backend, KV-cache size).
    # ``count_flops`` is a capability of its own (FlopCounter below), checked with isinstance.


@runtime_checkable
class FlopCounter(Protocol):
    """An adapter that can count its FLOPs (``measurement.profiler: flops``; the pytorch adapter only)."""

    def count_flops(self, prompts: list[list[int]], experiment: ExperimentConfig) -> dict[str, Any]:
        """One unmeasured generate of ``prompts`` under a FLOP counter (prefill and decode apart)."""


@dataclass(frozen=True)
class ArrivingRequest:
    """A request of a serving workload: its prompt, its forced output length, and when it arrives (seconds after
    the serving run starts)."""

    index: int
    input_ids: list[int]
    output_len: int
    arrival_s: float


@runtime_checkable
class ServingEngine(Protocol):
    """An adapter that can serve requests as they arrive into its engine's continuous batching."""

    def serve(
        self, requests: list[ArrivingRequest], experiment: ExperimentConfig, max_concurrency: int | None
    ) -> ServingTrace:
        """Hand each request to the engine at its arrival time (``time.time()`` at the call is time 0), at most
        ``max_concurrency`` in the engine at once (None: no cap), generate exactly ``output_len`` tokens for each,
        and return when every request has finished, with each request's and each engine step's times."""
