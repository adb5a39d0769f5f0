"""Run metrics from a measurement: throughput and latency statistics. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from lem_shared.measure.serving import RequestTrace, goodput, latency_summary, request_latencies
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


class ServedRequestLike(Protocol):
    """A served request: the ``ServedRequest`` message or its ``request_timings`` row."""

    @property
    def arrival(self) -> float: ...
    @property
    def first_token(self) -> float | None: ...
    @property
    def finish(self) -> float: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def token_times(self) -> list[float]: ...


def request_traces(requests: Iterable[ServedRequestLike]) -> list[RequestTrace]:
    """The requests that produced a token, as the serving maths reads them."""
    return [
        RequestTrace(
            arrival=r.arrival,
            first_token=r.first_token,
            token_times=r.token_times,
            finish=r.finish,
            prompt_tokens=r.prompt_tokens,
            output_tokens=r.output_tokens,
        )
        for r in requests
        if r.first_token is not None
    ]


def serving_metrics(m: Measurement, slo: dict[str, float] | None) -> dict[str, Any]:
    """A serving run's figures: per-request latencies (E2E in the latency columns), TPOT and goodput under the
    SLOs (the steady state and its energy are the finaliser's)."""
    assert m.serving is not None
    duration = m.window_end - m.window_start
    traces = request_traces(m.serving.requests)
    summary = latency_summary(request_latencies(traces))
    e2e, ttft, tpot = summary["e2e_s"], summary["ttft_s"], summary["tpot_s"]
    output_tokens = sum(r.output_tokens for r in m.serving.requests)
    requests = len(m.serving.requests)
    good = goodput(traces, duration_s=duration, **slo) if slo and traces else None
    return {
        "requests": requests,
        "input_tokens": sum(r.prompt_tokens for r in m.serving.requests),
        "output_tokens": output_tokens,
        "duration_s": duration,
        "tokens_per_s": output_tokens / duration,
        "requests_per_s": requests / duration,
        "latency_mean_s": e2e.mean if e2e else None,
        "latency_p50_s": e2e.p50 if e2e else None,
        "latency_p95_s": percentile([t.finish - t.arrival for t in traces], 95) if traces else None,
        "ttft_mean_s": ttft.mean if ttft else None,
        "tpot_mean_s": tpot.mean if tpot else None,
        "tpot_p50_s": tpot.p50 if tpot else None,
        "tpot_p90_s": tpot.p90 if tpot else None,
        "tpot_p99_s": tpot.p99 if tpot else None,
        "goodput_rps": good.requests_per_s if good else None,
        "slo_attainment": good.good_requests / good.requests if good and good.requests else None,
    }


def run_metrics(m: Measurement, slo: dict[str, float] | None = None) -> dict[str, Any]:
    common = {
        "peak_memory_bytes": m.peak_memory_bytes,
        "peak_memory_kind": m.peak_memory_kind,
        "model_load_s": m.model_load_s,
        "model_reused": m.model_reused,
        "warmup_iterations": m.warmup.iterations,
        "warmup_converged": m.warmup.converged,
        "warmup_final_cv": m.warmup.final_cv,
        "passes": m.passes,
    }
    if m.serving is not None:
        return {**serving_metrics(m, slo), **common}
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
        **common,
    }
