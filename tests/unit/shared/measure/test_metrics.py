"""Run metrics from a measurement."""

from __future__ import annotations

import pytest

from lem_shared.measure.metrics import run_metrics
from lem_shared.measure.stats import percentile
from lem_shared.wire.messages import BatchTiming, Measurement, Warmup


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_run_metrics_counts_tokens_over_the_window() -> None:
    batches = [
        BatchTiming(batch_index=0, batch_size=4, input_tokens=64, output_tokens=32, latency_s=1.0, ttft_s=0.1),
        BatchTiming(batch_index=1, batch_size=2, input_tokens=32, output_tokens=16, latency_s=0.5, ttft_s=None),
    ]
    m = Measurement(
        device="cpu",
        device_name="cpu",
        gpu_uuid=None,
        model_load_s=0.2,
        model_reused=False,
        warmup=Warmup(iterations=5, converged=True, final_cv=0.01, latencies_s=[1.0] * 5),
        passes=1,
        deep_idle=None,
        idle_before=None,
        idle_after=None,
        window_start=100.0,
        window_end=102.0,
        batches=batches,
        peak_memory_bytes=None,
        peak_memory_kind="none",
        environment={},
    )
    metrics = run_metrics(m)
    assert metrics["output_tokens"] == 48 and metrics["requests"] == 6 and metrics["input_tokens"] == 96
    assert metrics["tokens_per_s"] == 24.0 and metrics["requests_per_s"] == 3.0
    assert metrics["latency_mean_s"] == 0.75 and metrics["ttft_mean_s"] == 0.1
    assert metrics["warmup_iterations"] == 5 and metrics["warmup_converged"] and metrics["passes"] == 1
