"""Serving mode of the pytorch adapter: real continuous batching on CPU with the tiny random Llama (issue 18)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from lem_shared.config.schema import ExperimentConfig  # noqa: E402
from lem_shared.runtime.adapter import ArrivingRequest, ServingEngine  # noqa: E402
from lem_shared.wire.messages import ServingTrace  # noqa: E402
from lem_worker_pytorch.adapter import TransformersAdapter  # noqa: E402
from lem_worker_pytorch.serving import (  # noqa: E402
    check_requests,
    generation_config_for,
    kv_bytes_per_block,
    plan_kv_cache,
)

EXPERIMENT = ExperimentConfig(backend="pytorch", model="random:llama-tiny", dtype="float32")  # type: ignore[arg-type]


def _requests() -> list[ArrivingRequest]:
    rng = np.random.default_rng(0)
    return [
        ArrivingRequest(
            index=i,
            input_ids=rng.integers(1, 32000, int(rng.integers(4, 25))).tolist(),
            output_len=int(rng.integers(3, 7)),
            arrival_s=0.02 * i,
        )
        for i in range(8)
    ]


@pytest.fixture(scope="module")
def adapter() -> TransformersAdapter:
    engine = TransformersAdapter("cpu")
    engine.load(EXPERIMENT)
    return engine


@pytest.fixture(scope="module")
def traces(adapter) -> dict[int | None, ServingTrace]:
    return {cap: adapter.serve(_requests(), EXPERIMENT, cap) for cap in (None, 2)}


def test_the_adapter_is_a_serving_engine(adapter):
    assert isinstance(adapter, ServingEngine)


@pytest.mark.parametrize("cap", [None, 2])
def test_every_request_gets_its_tokens_after_it_arrives(traces, cap):
    trace = ServingTrace.model_validate(traces[cap].model_dump(mode="json"))  # survives the wire
    requests = {r.index: r for r in _requests()}
    assert sorted(r.index for r in trace.requests) == list(range(8))
    arrivals = [served.arrival for served in sorted(trace.requests, key=lambda r: r.index)]
    for served in trace.requests:
        asked = requests[served.index]
        assert served.output_tokens == asked.output_len == len(served.token_times)
        assert served.prompt_tokens == len(asked.input_ids)
        assert all(a <= b for a, b in itertools.pairwise(served.token_times))
        assert served.first_token == served.token_times[0] >= served.arrival
        assert served.finish == served.token_times[-1]
        assert served.arrival >= trace.facts["time_zero"] + asked.arrival_s  # handed over at its time, not before
    assert all(a <= b for a, b in itertools.pairwise(arrivals))  # arrivals are staggered 20 ms apart, in order


@pytest.mark.parametrize("cap", [None, 2])
def test_the_steps_account_for_every_token(traces, cap):
    trace = traces[cap]
    requests = {r.index: r for r in _requests()}
    arrival = {served.index: served.arrival for served in trace.requests}
    prefill = dict.fromkeys(requests, 0)
    decode = dict.fromkeys(requests, 0)
    for step in trace.steps:
        assert step.start <= step.end
        for index, (pre, dec) in step.tokens.items():
            assert step.start >= arrival[index]  # no request starts before it arrived
            prefill[index] += pre
            decode[index] += dec
        if cap is not None:
            assert step.running <= cap and len(step.tokens) <= cap
    for index, request in requests.items():
        assert prefill[index] == len(request.input_ids)
        assert decode[index] == request.output_len - 1
    assert all(a.end <= b.start for a, b in itertools.pairwise(trace.steps))  # one step at a time
    # the steps' emitted tokens are the requests' token times
    step_ends = {step.end for step in trace.steps}
    assert all(t in step_ends for served in trace.requests for t in served.token_times)


def test_the_cap_holds_back_requests(traces):
    assert max(step.running for step in traces[None].steps) > 2
    assert max(step.running for step in traces[2].steps) == 2
    assert any(step.waiting == 0 for step in traces[2].steps)


def test_the_facts_say_how_the_engine_ran(traces):
    facts = traces[2].facts
    assert facts["transformers"] == __import__("transformers").__version__
    assert facts["attention"] in ("sdpa", "paged|sdpa") and facts["async_batching"] is False  # 5.24, 5.17
    # 4 layers x (K, V) x 4 heads x 64 dims x 64 tokens x 4 bytes
    assert facts["kv_cache"]["bytes"] == facts["kv_cache"]["num_blocks"] * 524_288
    assert facts["kv_cache"]["num_blocks"] >= 2  # two requests of at most 24 + 6 tokens: one 64-token block each
    assert 0 <= facts["engine_ready_s"] < 30


def test_kv_block_bytes_of_the_tiny_llama(adapter):
    assert kv_bytes_per_block(adapter.model.config, torch.float32) == 4 * 2 * 4 * 64 * 64 * 4
    assert kv_bytes_per_block(adapter.model.config, torch.bfloat16, page_size=16) == 4 * 2 * 4 * 64 * 16 * 2


def test_the_kv_plan_by_hand():
    requests = [
        ArrivingRequest(0, [1] * 10, 4, 0.0),  # 14 tokens: 1 block of 64
        ArrivingRequest(1, [1] * 100, 30, 0.1),  # 130 tokens: 3 blocks
        ArrivingRequest(2, [1] * 64, 1, 0.2),  # 65 tokens: 2 blocks
    ]
    everyone = plan_kv_cache(requests, None, bytes_per_block=1000, memory_limit_bytes=10**9)
    assert (everyone.num_blocks, everyone.max_batch_tokens, everyone.max_requests_per_batch) == (8, 174, 3)  # 6/0.8
    assert everyone.tokens == 512 and everyone.bytes == 8000 and not everyone.clamped
    one = plan_kv_cache(requests, 1, bytes_per_block=1000, memory_limit_bytes=10**9)
    assert (one.num_blocks, one.max_batch_tokens, one.max_requests_per_batch) == (4, 100, 1)  # ceil(3/0.8)
    tight = plan_kv_cache(requests, None, bytes_per_block=1000, memory_limit_bytes=5500)
    assert tight.num_blocks == 5 and tight.clamped
    with pytest.raises(ValueError, match="longest one needs 192 tokens"):
        plan_kv_cache(requests, None, bytes_per_block=1000, memory_limit_bytes=2999)


@pytest.mark.parametrize(
    ("requests", "cap", "message"),
    [
        ([], None, "at least one request"),
        ([ArrivingRequest(0, [1], 1, 0.0)], 0, "max_concurrency"),
        ([ArrivingRequest(0, [1], 1, 0.0), ArrivingRequest(0, [2], 1, 0.0)], None, "request 0: index must be unique"),
        ([ArrivingRequest(3, [], 1, 0.0)], None, "request 3: input_ids is empty"),
        ([ArrivingRequest(1, [5, 32000], 1, 0.0)], None, r"request 1: input_ids must lie in \[0, 32000\)"),
        ([ArrivingRequest(2, [5], 0, 0.0)], None, "request 2: output_len 0"),
        ([ArrivingRequest(4, [5], 1, float("nan"))], None, "request 4: arrival_s nan"),
        ([ArrivingRequest(5, [5], 1, -1.0)], None, "request 5: arrival_s -1.0"),
    ],
)
def test_bad_requests_are_refused_by_name(requests, cap, message):
    with pytest.raises(ValueError, match=message):
        check_requests(requests, cap, vocab_size=32000)


def test_generation_is_greedy_with_no_eos_and_refuses_what_batching_cannot_do():
    config = generation_config_for({})
    assert config.do_sample is False and config.eos_token_id == -1
    assert generation_config_for({"do_sample": True, "temperature": 0.7}).temperature == 0.7
    with pytest.raises(ValueError, match="pytorch.generation: num_beams not applied by continuous batching"):
        generation_config_for({"num_beams": 4})
