"""Run metrics from a measurement: throughput and latency statistics. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from lem_shared.measure.stats import percentile
from lem_shared.wire.messages import Measurement


class TimedBatch(Protocol):
    """A batch's timings: the ``BatchTiming`` message or its ``batch_timings`` row."""

    @property
    def ttft_s(self) -> float | None: ...
    @property
    def request_ttfts_s(self) -> list[float] | None: ...
    @property
    def kv_cache_usage_peak(self) -> float | None: ...
    @property
    def kv_cache_usage_mean(self) -> float | None: ...
    @property
    def preemptions(self) -> int | None: ...


def ttft_values(batches: Iterable[TimedBatch]) -> list[float]:
    """Times to first token: each request's where the engine reported them (vLLM), else the batch's one."""
    values: list[float] = []
    for b in batches:
        if b.request_ttfts_s:
            values.extend(b.request_ttfts_s)
        elif b.ttft_s is not None:
            values.append(b.ttft_s)
    return values


def kv_cache_figures(batches: Iterable[TimedBatch]) -> dict[str, Any]:
    """KV-cache usage over a window: the highest of the batches' peaks, the mean of their means, and the
    preemptions summed; each None when no batch reports it."""
    batches = list(batches)
    peaks = [b.kv_cache_usage_peak for b in batches if b.kv_cache_usage_peak is not None]
    means = [b.kv_cache_usage_mean for b in batches if b.kv_cache_usage_mean is not None]
    preemptions = [b.preemptions for b in batches if b.preemptions is not None]
    return {
        "kv_cache_usage_peak": max(peaks) if peaks else None,
        "kv_cache_usage_mean": sum(means) / len(means) if means else None,
        "preemptions": sum(preemptions) if preemptions else None,
    }


def run_metrics(m: Measurement) -> dict[str, Any]:
    duration = m.window_end - m.window_start
    latencies = [b.latency_s for b in m.batches]
    ttfts = ttft_values(m.batches)
    output_tokens = sum(b.output_tokens for b in m.batches)
    requests = sum(b.batch_size for b in m.batches)
    return {
        "requests": requests,
        "input_tokens": sum(b.input_tokens for b in m.batches),
        "output_tokens": output_tokens,
        "duration_s": duration,
        "tokens_per_s": output_tokens / duration,
        "requests_per_s": requests / duration,
        "latency_mean_s": sum(latencies) / len(latencies),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "ttft_mean_s": sum(ttfts) / len(ttfts) if ttfts else None,
        **kv_cache_figures(m.batches),
        "peak_memory_bytes": m.peak_memory_bytes,
        "peak_memory_kind": m.peak_memory_kind,
        "model_load_s": m.model_load_s,
        "model_reused": m.model_reused,
        "warmup_iterations": m.warmup.iterations,
        "warmup_converged": m.warmup.converged,
        "warmup_final_cv": m.warmup.final_cv,
        "passes": m.passes,
    }
