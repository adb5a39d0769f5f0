"""The vLLM adapter's serving driver (``lem_worker_vllm.serving``) run against the STAND-IN vLLM engine
(``tests/stand_in_engines/vllm``: one token per running request per step, a request's first step its prefill), so
the times, token counts and running/waiting counts it records are checked against a schedule worked by hand."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lem_shared.config.schema import ExperimentConfig
from lem_shared.runtime.adapter import ArrivingRequest, ServingEngine
from lem_shared.wire.messages import ServingTrace

STAND_INS = Path(__file__).resolve().parents[2] / "stand_in_engines"
STAND_IN_MODULES = ("vllm", "tensorrt_llm", "_stand_in", "stand_in_adapters")
REAL_VLLM = importlib.util.find_spec("vllm") is not None

pytestmark = pytest.mark.skipif(REAL_VLLM, reason="vLLM is installed here; the stand-in would shadow it")

# Prompt lengths 3, 8, 5, 6, 4; request 0 (ten steps, one step takes over 1 ms) still runs when 1 and 2 arrive; the
# last arrives long after the others have finished (the engine is empty meanwhile).
STAGGERED = [
    ArrivingRequest(index=0, input_ids=[11, 12, 13], output_len=10, arrival_s=0.0),
    ArrivingRequest(index=1, input_ids=list(range(100, 108)), output_len=2, arrival_s=0.005),
    ArrivingRequest(index=2, input_ids=[7, 8, 9, 10, 11], output_len=5, arrival_s=0.006),
    ArrivingRequest(index=3, input_ids=[1, 2, 3, 4, 5, 6], output_len=1, arrival_s=0.02),
    ArrivingRequest(index=4, input_ids=[40, 41, 42, 43], output_len=3, arrival_s=0.15),
]
# Four requests due at once, three tokens each, prompts of 2, 3, 4 and 5 tokens.
BURST = [ArrivingRequest(index=i, input_ids=list(range(1, i + 3)), output_len=3, arrival_s=0.0) for i in range(4)]


def _forget_stand_ins() -> None:
    for name in list(sys.modules):
        if name.partition(".")[0] in STAND_IN_MODULES:
            del sys.modules[name]


@pytest.fixture
def vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The stand-in ``vllm`` package, importable only inside the test."""
    monkeypatch.delenv("STAND_IN_ENGINE_FAULTS", raising=False)
    sys.path.insert(0, str(STAND_INS))
    importlib.invalidate_caches()
    try:
        module = importlib.import_module("vllm")
        assert module.STAND_IN
        yield module
    finally:
        sys.path.remove(str(STAND_INS))
        _forget_stand_ins()
        importlib.invalidate_caches()
    assert importlib.util.find_spec("vllm") is None


def experiment(max_num_seqs: int | None = None, **sampling: Any) -> ExperimentConfig:
    section: dict[str, Any] = {}
    if max_num_seqs is not None:
        section["engine"] = {"max_num_seqs": max_num_seqs}
    if sampling:
        section["sampling"] = sampling
    return ExperimentConfig.model_validate(
        {
            "backend": "vllm",
            "model": "random:llama-tiny",
            "batch_size": 1,
            "workload": {"mode": "serving", "num_prompts": 5, "input_len": 8, "output_len": 5, "request_rate": 50},
            "vllm": section,
        }
    )


def loaded_adapter(config: ExperimentConfig) -> Any:
    from stand_in_adapters import CpuVllmAdapter

    adapter = CpuVllmAdapter("auto")
    adapter.load(config)
    return adapter


def calls(vllm: ModuleType, name: str) -> list[dict[str, Any]]:
    return [call.kwargs for call in vllm.CALLS if call.name == name]


def check_request_times(trace: ServingTrace, requests: list[ArrivingRequest]) -> None:
    """Each request: its prompt and exactly output_len tokens, handed over at or after its scheduled arrival, first
    token after that, times in order, and every token time the end of a step that holds a token of it."""
    t0 = trace.facts["t0"]
    by_index = {r.index: r for r in requests}
    assert sorted(r.index for r in trace.requests) == sorted(by_index)
    for served in trace.requests:
        asked = by_index[served.index]
        assert served.prompt_tokens == len(asked.input_ids)
        assert served.output_tokens == len(served.token_times) == asked.output_len
        assert served.arrival >= t0 + asked.arrival_s
        assert served.first_token is not None and served.first_token > served.arrival
        assert served.first_token == served.token_times[0]
        assert served.token_times == sorted(served.token_times)
        assert served.finish == served.token_times[-1]
        # The stand-in gives one token per step: the token times are the ends of the steps that name the request.
        assert served.token_times == [step.end for step in trace.steps if served.index in step.tokens]


def check_steps(trace: ServingTrace, requests: list[ArrivingRequest]) -> None:
    """Steps in order without overlap; per request, prefill = its prompt in its first step, then one decode token a
    step, output_len - 1 in all."""
    for step in trace.steps:
        assert step.start < step.end
    for earlier, later in zip(trace.steps, trace.steps[1:], strict=False):
        assert earlier.end <= later.start
    for request in requests:
        own = [step.tokens[request.index] for step in trace.steps if request.index in step.tokens]
        assert own == [(len(request.input_ids), 0)] + [(0, 1)] * (request.output_len - 1)
    assert sum(p for step in trace.steps for p, _ in step.tokens.values()) == sum(len(r.input_ids) for r in requests)
    assert sum(d for step in trace.steps for _, d in step.tokens.values()) == sum(r.output_len - 1 for r in requests)


@pytest.mark.parametrize("max_concurrency", [None, 2])
def test_staggered_arrivals_each_get_exactly_their_tokens_at_ordered_times(
    vllm: ModuleType, max_concurrency: int | None
) -> None:
    config = experiment()
    adapter = loaded_adapter(config)
    serving_api: object = adapter
    assert isinstance(serving_api, ServingEngine)
    trace = adapter.serve(STAGGERED, config, max_concurrency)

    assert ServingTrace.model_validate_json(trace.model_dump_json()) == trace
    check_request_times(trace, STAGGERED)
    check_steps(trace, STAGGERED)
    if max_concurrency is not None:
        assert max(step.running for step in trace.steps) == max_concurrency
        # at no arrival were more than the cap in the engine (the one arriving included)
        for served in trace.requests:
            inside = [r for r in trace.requests if r.arrival <= served.arrival < r.finish]
            assert len(inside) <= max_concurrency
        assert trace.facts["held_by_concurrency_cap"] >= 1  # request 2 was due while 0 and 1 ran
    else:
        assert max(step.running for step in trace.steps) >= 3  # 0, 1 and 2 overlap
    assert all(step.waiting == 0 for step in trace.steps)
    # The driver stepped only while a request was in the engine (the stand-in raises otherwise), so each step
    # gave tokens; before request 4 it waited instead.
    assert all(step.tokens for step in trace.steps)
    assert trace.facts["steps_with_engine_counts"] == len(trace.steps)
    assert trace.facts["output_kind"].startswith("DELTA")

    added = calls(vllm, "add_request")
    assert [a["request_id"] for a in added] == [f"lem-{r.index}" for r in STAGGERED]
    for asked, call in zip(STAGGERED, added, strict=True):
        params = call["params"]
        assert call["prompt"] == {"prompt_token_ids": asked.input_ids}
        assert params.output_kind is vllm.sampling_params.RequestOutputKind.DELTA
        assert params.max_tokens == params.min_tokens == asked.output_len and params.ignore_eos is True
        assert call["arrival_time"] == next(r.arrival for r in trace.requests if r.index == asked.index)
    assert calls(vllm, "abort_request") == []
    assert len(adapter._llm.llm_engine.logger_manager.stat_loggers) == 1  # the driver's stat logger is gone again


def test_a_burst_under_a_cap_of_two_runs_in_two_waves_as_worked_by_hand(vllm: ModuleType) -> None:
    config = experiment()
    trace = loaded_adapter(config).serve(BURST, config, 2)

    check_request_times(trace, BURST)
    check_steps(trace, BURST)
    # Wave 1: requests 0 and 1 (prompts 2 and 3) take three steps; then 2 and 3 (prompts 4 and 5) are handed over.
    assert [step.tokens for step in trace.steps] == [
        {0: (2, 0), 1: (3, 0)},
        {0: (0, 1), 1: (0, 1)},
        {0: (0, 1), 1: (0, 1)},
        {2: (4, 0), 3: (5, 0)},
        {2: (0, 1), 3: (0, 1)},
        {2: (0, 1), 3: (0, 1)},
    ]
    # running is counted when scheduled: the step in which two finish still ran two
    assert [(step.running, step.waiting) for step in trace.steps] == [(2, 0)] * 6
    served = {r.index: r for r in trace.requests}
    assert served[2].arrival >= served[0].finish and served[3].arrival >= served[1].finish
    assert trace.facts["held_by_concurrency_cap"] == 2


def test_without_a_cap_the_engine_queues_what_max_num_seqs_does_not_admit(vllm: ModuleType) -> None:
    config = experiment(max_num_seqs=2)
    trace = loaded_adapter(config).serve(BURST, config, None)

    check_request_times(trace, BURST)
    check_steps(trace, BURST)
    # All four are handed over at once; the engine runs two and keeps two waiting until the first two finish.
    assert [(step.running, step.waiting) for step in trace.steps] == [(2, 2)] * 3 + [(2, 0)] * 3
    served = {r.index: r for r in trace.requests}
    assert max(r.arrival for r in trace.requests) < served[0].first_token
    assert served[2].first_token > served[0].finish
    assert trace.facts["held_by_concurrency_cap"] == 0


def test_without_the_engines_stats_the_unfinished_count_stands_in_and_the_facts_say_so(vllm: ModuleType) -> None:
    from lem_worker_vllm.serving import serve_requests

    config = experiment(max_num_seqs=2)
    adapter = loaded_adapter(config)  # writes the model folder (kept while the adapter lives)
    folder = calls(vllm, "LLM")[0]["model"]
    llm = vllm.LLM(model=folder, load_format="dummy", skip_tokenizer_init=True, max_num_seqs=2)  # stats off
    assert llm.llm_engine.logger_manager is None
    trace = serve_requests(llm, BURST, config, None)

    assert adapter._llm is not llm
    check_request_times(trace, BURST)
    # unfinished before each step: 4, 4, 4 (two finish in step 3), then 2, 2, 2
    assert [(step.running, step.waiting) for step in trace.steps] == [(4, 0)] * 3 + [(2, 0)] * 3
    assert trace.facts["steps_with_engine_counts"] == 0
    assert trace.facts["steps_with_unfinished_count"] == 6


def test_an_engine_error_mid_run_aborts_the_unfinished_requests_and_raises(vllm: ModuleType) -> None:
    config = experiment()
    adapter = loaded_adapter(config)
    engine = adapter._llm.llm_engine
    engine.fail_at_step = 3
    requests = [
        ArrivingRequest(index=0, input_ids=[5, 6], output_len=2, arrival_s=0.0),  # finishes in step 2
        ArrivingRequest(index=1, input_ids=[5, 6, 7], output_len=8, arrival_s=0.0),
        ArrivingRequest(index=2, input_ids=[9], output_len=8, arrival_s=0.0),
        ArrivingRequest(index=3, input_ids=[9, 9], output_len=8, arrival_s=30.0),  # never handed over
    ]
    with pytest.raises(RuntimeError, match="failure in step 3"):
        adapter.serve(requests, config, None)

    (abort,) = calls(vllm, "abort_request")
    assert sorted(abort["request_ids"]) == ["lem-1", "lem-2"]
    assert engine.get_num_unfinished_requests() == 0 and not engine.has_unfinished_requests()
    assert [a["request_id"] for a in calls(vllm, "add_request")] == ["lem-0", "lem-1", "lem-2"]
    assert len(engine.logger_manager.stat_loggers) == 1
    # the engine serves again afterwards
    engine.fail_at_step = None
    trace = adapter.serve(BURST[:1], config, None)
    assert trace.requests[0].output_tokens == 3


@pytest.mark.parametrize(
    ("requests", "max_concurrency", "message"),
    [
        ([], None, "requests is empty"),
        (BURST[:1], 0, "max_concurrency must be None"),
        (BURST[:1], True, "max_concurrency must be None"),
        ([BURST[0], BURST[0]], None, r"requests\[1\].index 0 is given twice"),
        ([ArrivingRequest(0, [], 3, 0.0)], None, r"requests\[0\].input_ids must be a non-empty list"),
        ([ArrivingRequest(0, [1], 0, 0.0)], None, r"requests\[0\].output_len must be an int >= 1"),
        ([ArrivingRequest(0, [1], 2, -0.5)], None, r"requests\[0\].arrival_s must be >= 0"),
        ([ArrivingRequest(0, [1], 2, float("nan"))], None, r"requests\[0\].arrival_s must be a finite"),
        ([ArrivingRequest(-1, [1], 2, 0.0)], None, r"requests\[0\].index must be an int >= 0"),
    ],
)
def test_bad_requests_are_refused_before_anything_reaches_the_engine(
    vllm: ModuleType, requests: list[ArrivingRequest], max_concurrency: Any, message: str
) -> None:
    config = experiment()
    adapter = loaded_adapter(config)
    with pytest.raises(ValueError, match=message):
        adapter.serve(requests, config, max_concurrency)
    assert calls(vllm, "add_request") == []


def test_more_than_one_completion_per_request_is_refused_naming_the_setting(vllm: ModuleType) -> None:
    config = experiment(n=2, temperature=0.7)
    with pytest.raises(ValueError, match="vllm.sampling.n must be 1"):
        loaded_adapter(config).serve(BURST, config, None)
    assert calls(vllm, "add_request") == []


def test_serve_before_load_says_what_to_do(vllm: ModuleType) -> None:
    from stand_in_adapters import CpuVllmAdapter

    with pytest.raises(RuntimeError, match="call load"):
        CpuVllmAdapter("auto").serve(BURST, experiment(), None)
