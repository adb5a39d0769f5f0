"""The measurement protocol on real CPU inference: warm-up to convergence (or its cap), minimum window."""

from __future__ import annotations

import pytest

from lem_shared.config.schema import ExperimentConfig, MeasurementProtocol, Workload
from lem_shared.runtime.measure import MeasurementRuntime, coefficient_of_variation

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def runtime() -> MeasurementRuntime:
    from lem_worker_pytorch.adapter import TransformersAdapter

    return MeasurementRuntime(TransformersAdapter(device="cpu"))


def experiment(**protocol: float) -> ExperimentConfig:
    return ExperimentConfig(
        model="random:llama-tiny",
        batch_size=2,
        workload=Workload(num_prompts=4, input_len=8, output_len=4),
        measurement=MeasurementProtocol(**protocol),
    )  # type: ignore[arg-type]


def test_coefficient_of_variation() -> None:
    assert coefficient_of_variation([1.0, 1.0, 1.0]) == 0.0
    assert coefficient_of_variation([1.0, 3.0]) == pytest.approx(2**0.5 / 2)
    assert coefficient_of_variation([1.0]) == float("inf")


def test_warmup_stops_once_latencies_settle(runtime: MeasurementRuntime) -> None:
    # The sample CV of 3 positive latencies is below sqrt(3) whatever the machine's load, so a threshold of 2
    # settles at the first check (after warmup_min): the rule is tested, not this machine's timing.
    m = runtime.measure(experiment(warmup_window=3, warmup_cv=2.0, warmup_min=4, warmup_max=50, min_window_s=0))
    assert m.warmup.converged and m.warmup.iterations == 4
    assert m.warmup.final_cv is not None and m.warmup.final_cv < 3**0.5
    assert len(m.warmup.latencies_s) == 4


def test_warmup_that_never_settles_stops_at_its_cap_and_says_so(runtime: MeasurementRuntime) -> None:
    m = runtime.measure(experiment(warmup_window=2, warmup_cv=1e-12, warmup_min=0, warmup_max=3, min_window_s=0))
    assert not m.warmup.converged and m.warmup.iterations == 3


def test_window_repeats_the_workload_until_the_minimum_duration(runtime: MeasurementRuntime) -> None:
    one_pass = runtime.measure(experiment(warmup_window=2, warmup_min=0, warmup_max=2, min_window_s=0))
    pass_s = one_pass.window_end - one_pass.window_start
    minimum = 2.5 * pass_s
    m = runtime.measure(experiment(warmup_window=2, warmup_min=0, warmup_max=2, min_window_s=minimum))
    per_pass = len(one_pass.batches)
    # how many passes that takes depends on the machine's load; the stop rule below does not
    assert m.passes >= 1 and len(m.batches) == per_pass * m.passes
    assert [b.batch_index for b in m.batches] == list(range(len(m.batches)))
    # It stopped at the first pass boundary at or past the minimum.
    assert m.window_end - m.window_start >= minimum
    assert sum(b.latency_s for b in m.batches[:-per_pass]) < minimum
    assert m.model_reused  # the engine host keeps the model between runs


def test_idle_spans_are_only_taken_where_a_gpu_can_measure_them(runtime: MeasurementRuntime) -> None:
    m = runtime.measure(
        experiment(warmup_min=0, warmup_max=2, min_window_s=0, idle_gap_s=5, baseline_idle_s=30), deep_idle_s=30
    )
    assert m.gpu_uuid is None and m.deep_idle is None and m.idle_before is None and m.idle_after is None


def test_static_cache_generates_the_forced_length_like_the_dynamic_one(runtime: MeasurementRuntime) -> None:
    base = experiment(warmup_min=0, warmup_max=2, min_window_s=0)
    static = ExperimentConfig.model_validate(
        {**base.model_dump(mode="json"), "pytorch": {"generation": {"cache_implementation": "static"}}}
    )
    dynamic_m, static_m = runtime.measure(base), runtime.measure(static)
    assert [b.output_tokens for b in static_m.batches] == [b.output_tokens for b in dynamic_m.batches] == [8, 8]


def test_only_an_adapter_that_counts_flops_is_given_profiler_flops(runtime: MeasurementRuntime) -> None:
    from lem_shared.runtime.adapter import FlopCounter
    from lem_shared.runtime.measure import EngineError
    from lem_worker_vllm.adapter import VllmAdapter

    assert isinstance(runtime.adapter, FlopCounter)
    flops = experiment(profiler="flops", warmup_min=0, warmup_max=1, min_window_s=0)
    # refused before anything loads, naming the field and the fix
    with pytest.raises(EngineError, match="measurement.profiler: flops, but the VllmAdapter .*set profiler: off"):
        MeasurementRuntime(VllmAdapter("cpu")).measure(flops)
