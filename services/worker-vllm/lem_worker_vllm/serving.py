"""Serving mode on vLLM 0.26.0 (issue 18): each request handed to the loaded ``LLM``'s own engine
(``llm.llm_engine``, the V1 ``LLMEngine``) at its arrival time, ``step()`` called until every request finished, and
each step's and request's times kept as a ``ServingTrace``.

Every call was checked in vLLM 0.26.0's sources (``v1/engine/llm_engine.py``, ``v1/engine/output_processor.py``,
``v1/engine/input_processor.py``, ``v1/engine/core.py``, ``v1/engine/core_client.py``, ``v1/core/sched/scheduler.py``,
``v1/metrics/loggers.py``, ``sampling_params.py``, ``config/scheduler.py``); it has run only against the stand-in
engine (``tests/stand_in_engines/vllm``) so far.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lem_shared.config.schema import ExperimentConfig
from lem_shared.runtime.adapter import ArrivingRequest
from lem_shared.wire.messages import EngineStep, ServedRequest, ServingTrace
from lem_worker_vllm.adapter import sampling_kwargs

# A request handed over later than this after its scheduled arrival counts as late in the facts.
LATE_HANDOFF_S = 0.001

FACTS = {
    "api": "vllm.LLM.llm_engine (V1 LLMEngine): add_request(request_id, {'prompt_token_ids': ...}, SamplingParams, "
    "arrival_time) at each arrival, between step() calls; step() until every request finished",
    "output_kind": "DELTA: each step's RequestOutput carries only the token ids new in that step",
    "prefill_tokens": "a request's whole prompt is counted as prefill in the step that returned its first token; "
    "with chunked prefill the prompt can be spread over earlier steps, which then show no tokens for it",
    "decode_tokens": "the new token ids of a request's delta output in a step, less its first token (the "
    "prefill's output)",
    "step_span": "time.time() just before and after LLMEngine.step(); with the multiprocess engine client "
    "(SyncMPClient) step() waits for the next step the engine-core process finished, so the span is that wait",
    "token_time": "the end of the step that returned the token",
    "arrival": "time.time() when add_request was called (the scheduled arrival, or later when the driver was in "
    "a step or the concurrency cap held the request back)",
    "running_waiting": "from the engine's SchedulerStats (a stat logger on llm_engine.logger_manager): counted "
    "after the step, so the step's finished requests are added back to running; waiting includes skipped "
    "waiting requests. vLLM 0.26 records stats only for steps that returned outputs: other steps give the "
    "unfinished count (running and waiting together) as running and 0 as waiting",
}


@dataclass
class _Live:
    """A request handed to the engine: what the trace needs of it."""

    index: int
    prompt_tokens: int
    output_len: int
    arrival: float
    token_times: list[float] = field(default_factory=list)
    finish: float = 0.0  # set when the engine says it finished


class StepCounts:
    """A stat logger for ``StatLoggerManager`` (the interface of vLLM 0.26's ``v1/metrics/loggers.py``
    ``StatLoggerBase``): it keeps the last ``SchedulerStats`` it was handed, so the driver can read the running and
    waiting counts of the step it just called (``LLMEngine.step`` records synchronously)."""

    def __init__(self) -> None:
        self.last: Any = None

    def record(
        self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
    ) -> None:
        if scheduler_stats is not None:
            self.last = scheduler_stats

    def log(self) -> None:
        """Nothing to print: the driver reads the counts."""

    def log_engine_initialized(self) -> None:
        """Nothing to print."""

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        """Sleep mode is not used."""


def checked_requests(requests: list[ArrivingRequest], max_concurrency: int | None) -> list[ArrivingRequest]:
    """The requests in the order they arrive (by arrival, then index); ValueError naming what is wrong."""
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1
    ):
        raise ValueError(f"max_concurrency must be None (no cap) or an int >= 1, got {max_concurrency!r}")
    if not requests:
        raise ValueError("requests is empty: give at least one ArrivingRequest to serve")
    seen: set[int] = set()
    for position, request in enumerate(requests):
        where = f"requests[{position}]"
        if not isinstance(request, ArrivingRequest):
            raise ValueError(f"{where} must be an ArrivingRequest, got {type(request).__name__}")
        if isinstance(request.index, bool) or not isinstance(request.index, int) or request.index < 0:
            raise ValueError(f"{where}.index must be an int >= 0, got {request.index!r}")
        if request.index in seen:
            raise ValueError(f"{where}.index {request.index} is given twice: each request needs its own index")
        seen.add(request.index)
        ids = request.input_ids
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ValueError(f"{where}.input_ids must be a non-empty list of token ids (int)")
        if isinstance(request.output_len, bool) or not isinstance(request.output_len, int) or request.output_len < 1:
            raise ValueError(f"{where}.output_len must be an int >= 1, got {request.output_len!r}")
        arrival = request.arrival_s
        if isinstance(arrival, bool) or not isinstance(arrival, int | float) or not math.isfinite(arrival):
            raise ValueError(f"{where}.arrival_s must be a finite number of seconds, got {arrival!r}")
        if arrival < 0:
            raise ValueError(f"{where}.arrival_s must be >= 0 (seconds after the run starts), got {arrival}")
    return sorted(requests, key=lambda r: (r.arrival_s, r.index))


def request_sampling_kwargs(experiment: ExperimentConfig, output_len: int) -> dict[str, Any]:
    """``SamplingParams`` keyword arguments of one request: the experiment's (``adapter.sampling_kwargs``), forced to
    exactly ``output_len`` tokens, one completion; ``output_kind`` is set by the caller (it is an enum of vLLM)."""
    kwargs = sampling_kwargs(experiment)
    if kwargs.get("n", 1) != 1:
        raise ValueError(
            f"vllm.sampling.n must be 1 in workload.mode serving (got {kwargs['n']}): a served request is one "
            "completion; leave n out"
        )
    kwargs.update(max_tokens=output_len, min_tokens=output_len, ignore_eos=True)
    return kwargs


def _request_id(index: int) -> str:
    return f"lem-{index}"


def _engine_facts(engine: Any) -> dict[str, Any]:
    scheduler = getattr(getattr(engine, "vllm_config", None), "scheduler_config", None)
    core = getattr(engine, "engine_core", None)
    return {
        "engine_core_client": type(core).__name__ if core is not None else None,
        "async_scheduling": getattr(scheduler, "async_scheduling", None),
        "stream_interval": getattr(scheduler, "stream_interval", None),
    }


def _step_counts(stats: Any, finished_in_step: int, unfinished_before: int) -> tuple[int, int, bool]:
    """(running, waiting, from the engine's stats) of one step; see ``FACTS["running_waiting"]``."""
    if stats is None:
        return unfinished_before, 0, False
    # SchedulerStats is made after update_from_output dropped the finished requests from running
    # (v1/core/sched/scheduler.py:1861, :2431).
    running = int(stats.num_running_reqs) + finished_in_step
    waiting = int(stats.num_waiting_reqs) + int(getattr(stats, "num_skipped_waiting_reqs", 0) or 0)
    return running, waiting, True


def serve_requests(
    llm: Any, requests: list[ArrivingRequest], experiment: ExperimentConfig, max_concurrency: int | None
) -> ServingTrace:
    """Serve ``requests`` on ``llm.llm_engine``: each handed over at ``t0 + arrival_s`` (``t0``: ``time.time()`` at
    the call) while fewer than ``max_concurrency`` are unfinished (None: no cap), steps until all finished.
    Unfinished requests are aborted when anything raises. RuntimeError when a request did not get exactly its
    ``output_len`` tokens."""
    t0 = time.time()
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    ordered = checked_requests(requests, max_concurrency)
    params = {
        r.index: SamplingParams(
            **request_sampling_kwargs(experiment, r.output_len), output_kind=RequestOutputKind.DELTA
        )
        for r in ordered
    }
    engine = llm.llm_engine
    counts = StepCounts()
    loggers = getattr(getattr(engine, "logger_manager", None), "stat_loggers", None)
    if isinstance(loggers, list):
        loggers.append(counts)
    pending = deque(ordered)
    live: dict[str, _Live] = {}
    served: list[_Live] = []
    steps: list[EngineStep] = []
    engine_counted_steps = late = 0
    max_delay = 0.0
    held: set[int] = set()  # requests that were due while the cap was reached
    try:
        while pending or live:
            now = time.time()
            while pending and t0 + pending[0].arrival_s <= now:
                if max_concurrency is not None and engine.get_num_unfinished_requests() >= max_concurrency:
                    for due in pending:
                        if t0 + due.arrival_s > now:
                            break
                        held.add(due.index)
                    break
                request = pending.popleft()
                arrival = time.time()
                engine.add_request(
                    _request_id(request.index),
                    TokensPrompt(prompt_token_ids=list(request.input_ids)),
                    params[request.index],
                    arrival_time=arrival,
                )
                live[_request_id(request.index)] = _Live(
                    request.index, len(request.input_ids), request.output_len, arrival
                )
                delay = arrival - (t0 + request.arrival_s)
                max_delay = max(max_delay, delay)
                late += int(delay > LATE_HANDOFF_S)
            if not live:
                # Nothing in the engine: step() would return at once (in-process) or block for ever in
                # SyncMPClient.get_output (core_client.py:853), so wait for the next arrival instead.
                time.sleep(max(0.0, t0 + pending[0].arrival_s - time.time()))
                continue
            unfinished_before = engine.get_num_unfinished_requests()
            counts.last = None
            start = time.time()
            outputs = engine.step()
            end = time.time()
            tokens: dict[int, tuple[int, int]] = {}
            finished_in_step = 0
            for output in outputs:
                # Outputs carry the id given to add_request (output_processor.py:371), not the internal one it
                # returns with a random suffix (input_processor.py:240).
                state = live.get(output.request_id)
                if state is None:
                    raise RuntimeError(f"the engine returned an output for unknown request {output.request_id!r}")
                new = len(output.outputs[0].token_ids)
                if new:
                    prefill = state.prompt_tokens if not state.token_times else 0
                    decode = new - 1 if not state.token_times else new
                    tokens[state.index] = (prefill, decode)
                    state.token_times.extend([end] * new)
                    if len(state.token_times) > state.output_len:
                        raise RuntimeError(
                            f"request {state.index} got {len(state.token_times)} tokens, more than its output_len "
                            f"{state.output_len}: the engine did not send deltas (output_kind DELTA)"
                        )
                if output.finished:
                    state.finish = end
                    finished_in_step += 1
                    served.append(live.pop(output.request_id))
            running, waiting, from_engine = _step_counts(counts.last, finished_in_step, unfinished_before)
            engine_counted_steps += int(from_engine)
            steps.append(EngineStep(start=start, end=end, tokens=tokens, running=running, waiting=waiting))
    except BaseException as error:
        if live:
            try:
                # Given ids are accepted: internal=False maps them to the engine's own (output_processor.py:487).
                engine.abort_request(list(live))
            except Exception as abort_error:  # keep the first failure; say the abort failed too
                error.add_note(f"aborting the unfinished requests {sorted(live)} failed too: {abort_error!r}")
        raise
    finally:
        if isinstance(loggers, list) and counts in loggers:
            loggers.remove(counts)

    short = [s.index for s in served if len(s.token_times) != s.output_len]
    if short:
        raise RuntimeError(
            f"requests {short} finished without exactly their output_len tokens (max_model_len reached, or EOS "
            "not ignored?)"
        )
    facts: dict[str, Any] = dict(FACTS)
    facts.update(_engine_facts(engine))
    facts.update(
        t0=t0,
        max_concurrency=max_concurrency,
        steps_with_engine_counts=engine_counted_steps,
        steps_with_unfinished_count=len(steps) - engine_counted_steps,
        late_handoffs=late,
        max_handoff_delay_s=max_delay,
        held_by_concurrency_cap=len(held),
    )
    return ServingTrace(
        requests=[
            ServedRequest(
                index=s.index,
                arrival=s.arrival,
                first_token=s.token_times[0] if s.token_times else None,
                finish=s.finish,
                prompt_tokens=s.prompt_tokens,
                output_tokens=len(s.token_times),
                token_times=s.token_times,
            )
            for s in sorted(served, key=lambda s: s.index)
        ],
        steps=steps,
        facts=facts,
    )
