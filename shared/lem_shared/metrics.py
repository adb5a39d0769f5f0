"""Run metrics from a measurement: throughput and latency statistics. Pure functions."""

from __future__ import annotations

from typing import Any

from lem_shared.contracts import Measurement


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run_metrics(m: Measurement) -> dict[str, Any]:
    duration = m.window_end - m.window_start
    latencies = [b.latency_s for b in m.batches]
    ttfts = [b.ttft_s for b in m.batches if b.ttft_s is not None]
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
        "peak_memory_bytes": m.peak_memory_bytes,
        "peak_memory_kind": m.peak_memory_kind,
        "model_load_s": m.model_load_s,
        "model_reused": m.model_reused,
        "warmup_iterations": m.warmup.iterations,
        "warmup_converged": m.warmup.converged,
        "warmup_final_cv": m.warmup.final_cv,
        "passes": m.passes,
    }
