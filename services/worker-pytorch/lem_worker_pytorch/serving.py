"""Serving mode on transformers' continuous batching: requests handed to the engine at their arrival times.

The driver starts a ``ContinuousBatchingManager`` on the loaded model with a KV cache sized from the requests,
adds each request at ``t0 + arrival_s`` (never more than ``max_concurrency`` in the engine), forces every output
length (no EOS), and records each engine step through a FIFO scheduler subclass registered in transformers'
``SCHEDULER_MAPPING``. Token times are the engine's own ``record_timestamps`` stamps, taken after the step's
blocking device-to-host copy (sync batching), so nothing runs in Python per token on the driver's side.
Works with transformers 5.17 and 5.24 (the two versions read); the internals it touches are checked at start.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from typing import Any

import torch

from lem_shared.runtime.adapter import ArrivingRequest
from lem_shared.wire.messages import EngineStep, ServedRequest, ServingTrace

TESTED_TRANSFORMERS = ("5.17.0", "5.24.0")
PAGE_SIZE = 64  # tokens per KV-cache block
MAX_BATCH_TOKENS = 8192  # the largest step the engine may take (vLLM's usual budget)
# FIFO stops admitting new prefills when less than 15 % of the cache is free: size it so that never happens
KV_FILL_LIMIT = 0.8
# The KV cache may take at most this share of the free device memory (CUDA) or of the host's RAM (CPU)
CUDA_MEMORY_SHARE = 0.5
CPU_MEMORY_SHARE = 0.1
SAMPLING_ARGUMENTS = frozenset({"do_sample", "temperature", "top_k", "top_p"})
STALL_TIMEOUT_S = 600.0
POLL_S = 0.5


def _cb_api() -> tuple[Any, Any, Any]:
    """ContinuousBatchingConfig, FIFOScheduler and SCHEDULER_MAPPING, or a RuntimeError naming the version."""
    found = package_version("transformers")
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        from transformers.generation.continuous_batching.requests import FutureRequestState
        from transformers.generation.continuous_batching.scheduler import SCHEDULER_MAPPING, FIFOScheduler
    except ImportError as exc:
        raise RuntimeError(
            f"workload.mode serving needs transformers' continuous batching as in {' or '.join(TESTED_TRANSFORMERS)}; "
            f"transformers {found} lacks it ({exc})"
        ) from exc
    if not {"state", "has_new_token", "query_length"} <= set(getattr(FutureRequestState, "__slots__", ())):
        raise RuntimeError(
            f"transformers {found}: FutureRequestState has no state/has_new_token/query_length, which the serving "
            f"driver reads to record steps; use transformers {' or '.join(TESTED_TRANSFORMERS)}"
        )
    return ContinuousBatchingConfig, FIFOScheduler, SCHEDULER_MAPPING


@dataclass(frozen=True)
class KvCachePlan:
    """The continuous-batching sizes chosen for a serving run."""

    page_size: int
    num_blocks: int
    max_batch_tokens: int
    max_requests_per_batch: int
    bytes_per_block: int
    clamped: bool  # the memory limit gave fewer blocks than every admissible request at full length needs

    @property
    def tokens(self) -> int:
        return self.page_size * self.num_blocks

    @property
    def bytes(self) -> int:
        return self.bytes_per_block * self.num_blocks


def kv_bytes_per_block(model_config: Any, dtype: torch.dtype, page_size: int = PAGE_SIZE) -> int:
    """Bytes of one block: keys and values of ``page_size`` tokens in every layer."""
    heads = int(model_config.num_attention_heads)
    kv_heads = int(getattr(model_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(model_config, "head_dim", None) or model_config.hidden_size // heads)
    element = torch.empty((), dtype=dtype).element_size()
    return int(model_config.num_hidden_layers) * 2 * kv_heads * head_dim * page_size * element


def kv_memory_limit_bytes(device: torch.device) -> int:
    """The most the KV cache may take: half the free memory of a CUDA device, a tenth of the host's RAM on CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * CUDA_MEMORY_SHARE)
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * CPU_MEMORY_SHARE)


def plan_kv_cache(
    requests: Sequence[ArrivingRequest],
    max_concurrency: int | None,
    bytes_per_block: int,
    memory_limit_bytes: int,
    page_size: int = PAGE_SIZE,
) -> KvCachePlan:
    """Blocks for the ``max_concurrency`` longest requests (all of them when None) at full length (prompt plus
    output), at most ``KV_FILL_LIMIT`` full; a step budget that takes all their prompts at once (at most
    ``MAX_BATCH_TOKENS``); the memory limit caps the blocks (``clamped``)."""
    if not requests:
        raise ValueError("requests: a serving run needs at least one request")
    if bytes_per_block <= 0 or memory_limit_bytes <= 0 or page_size <= 0:
        raise ValueError("bytes_per_block, memory_limit_bytes and page_size: must be positive")
    admitted = len(requests) if max_concurrency is None else min(max_concurrency, len(requests))
    blocks = sorted((math.ceil((len(r.input_ids) + r.output_len) / page_size) for r in requests), reverse=True)
    wanted = math.ceil(sum(blocks[:admitted]) / KV_FILL_LIMIT)
    affordable = memory_limit_bytes // bytes_per_block
    if affordable < blocks[0]:
        raise ValueError(
            f"requests: the longest one needs {blocks[0] * page_size} tokens of KV cache "
            f"({blocks[0] * bytes_per_block:,} bytes), over the {memory_limit_bytes:,} bytes allowed; give shorter "
            "prompts or output lengths"
        )
    prompts = sorted((len(r.input_ids) for r in requests), reverse=True)
    return KvCachePlan(
        page_size=page_size,
        num_blocks=min(wanted, affordable),
        max_batch_tokens=min(MAX_BATCH_TOKENS, sum(prompts[:admitted])),
        max_requests_per_batch=min(admitted, 1024),
        bytes_per_block=bytes_per_block,
        clamped=affordable < wanted,
    )


def check_requests(requests: Sequence[ArrivingRequest], max_concurrency: int | None, vocab_size: int) -> None:
    """Refuse a workload the engine cannot serve as asked, naming the field."""
    if not requests:
        raise ValueError("requests: a serving run needs at least one request")
    if max_concurrency is not None and (isinstance(max_concurrency, bool) or max_concurrency < 1):
        raise ValueError(f"max_concurrency: {max_concurrency!r}; give an int of at least 1, or None for no cap")
    seen: set[int] = set()
    for request in requests:
        where = f"request {request.index}"
        if request.index < 0 or request.index in seen:
            raise ValueError(f"{where}: index must be unique and >= 0")
        seen.add(request.index)
        if not request.input_ids:
            raise ValueError(f"{where}: input_ids is empty; every prompt needs at least one token")
        if min(request.input_ids) < 0 or max(request.input_ids) >= vocab_size:
            raise ValueError(f"{where}: input_ids must lie in [0, {vocab_size}) (the model's vocabulary)")
        if request.output_len < 1:
            raise ValueError(f"{where}: output_len {request.output_len}; give at least 1")
        if not math.isfinite(request.arrival_s) or request.arrival_s < 0:
            raise ValueError(f"{where}: arrival_s {request.arrival_s!r}; give a finite time >= 0 (seconds after start)")


def generation_config_for(generation_arguments: dict[str, Any]) -> Any:
    """Greedy unless the experiment sets sampling; EOS off (negative ids are dropped), so lengths are forced."""
    from transformers import GenerationConfig

    unsupported = sorted(set(generation_arguments) - SAMPLING_ARGUMENTS)
    if unsupported:
        raise ValueError(
            f"pytorch.generation: {', '.join(unsupported)} not applied by continuous batching (workload.mode "
            f"serving takes only {', '.join(sorted(SAMPLING_ARGUMENTS))}); remove them or use mode: offline"
        )
    return GenerationConfig(**{"do_sample": False, **generation_arguments}, eos_token_id=-1)


@dataclass
class _RawStep:
    start: float  # perf_counter when the scheduler was called
    entries: list[tuple[str, int, bool]]  # (request id, tokens this step, emits a token)
    running: int
    waiting: int


def _recording_scheduler(fifo: Any, steps: list[_RawStep]) -> type:
    """A FIFO scheduler that appends every non-empty batch it schedules to ``steps`` (one list per run)."""

    def schedule_batch(self: Any, token_budget: int, cache_budget: int) -> Any:
        start = time.perf_counter()
        result = fifo.schedule_batch(self, token_budget, cache_budget)
        if result[0]:
            entries = [(fs.state.request_id, fs.query_length, fs.has_new_token) for fs in result[0]]
            steps.append(_RawStep(start, entries, len(self.active_requests), len(self.waiting_requests)))
        return result

    return type("LemRecordingFIFOScheduler", (fifo,), {"schedule_batch": schedule_batch})


def _request_id(index: int) -> str:
    return f"lem-{index}"


def _drive(
    manager: Any, ordered: list[ArrivingRequest], t0: float, cap: int, steps: list[_RawStep], stall_timeout_s: float
) -> dict[str, Any]:
    """Add each request at its time while fewer than ``cap`` are in the engine; return the finished outputs."""
    finished: dict[str, Any] = {}
    next_up, in_engine = 0, 0
    steps_seen, last_progress = 0, time.perf_counter()
    while len(finished) < len(ordered):
        now = time.perf_counter()
        while next_up < len(ordered) and in_engine < cap and t0 + ordered[next_up].arrival_s <= now:
            request = ordered[next_up]
            added = manager.add_request(
                input_ids=request.input_ids,
                request_id=_request_id(request.index),
                max_new_tokens=request.output_len,
                record_timestamps=True,
                eos_token_id=-1,
            )
            if added is None:
                raise RuntimeError(f"request {request.index}: the continuous batching manager refused it")
            next_up, in_engine = next_up + 1, in_engine + 1
        wait = POLL_S
        if next_up < len(ordered) and in_engine < cap:
            wait = min(POLL_S, max(0.0, t0 + ordered[next_up].arrival_s - time.perf_counter()))
        output = manager.get_result(timeout=wait)
        if output is None:
            if not manager.is_running():
                status = getattr(manager, "background_thread_status", None)
                error = getattr(status, "fatal_error", None)
                raise RuntimeError(f"the continuous batching loop stopped before every request finished: {error}")
            if len(steps) != steps_seen:
                steps_seen, last_progress = len(steps), time.perf_counter()
            elif in_engine and time.perf_counter() - last_progress > stall_timeout_s:
                raise RuntimeError(f"the continuous batching engine took no step for {stall_timeout_s:.0f} s")
            continue
        if output.error is not None:
            raise RuntimeError(f"{output.request_id}: the engine failed it: {output.error}")
        if output.is_finished():
            finished[output.request_id] = output
            in_engine -= 1
    return finished


def build_trace(
    requests: Sequence[ArrivingRequest],
    outputs: dict[str, Any],
    steps: Sequence[_RawStep],
    unix_offset: float,
    facts: dict[str, Any],
) -> ServingTrace:
    """Requests and steps in Unix seconds. A step's tokens split into prefill (up to the prompt's length, counted
    across chunks) and decode; a step ends at its last token stamp, a step that emits none where the next begins;
    every token of a step gets the step's end (tokens emitted together share a time)."""
    by_id = {_request_id(r.index): r for r in requests}
    processed = dict.fromkeys(by_id, 0)
    emitted = dict.fromkeys(by_id, 0)
    emitting_steps: dict[str, list[int]] = {rid: [] for rid in by_id}
    ends: list[float] = []
    tokens: list[dict[int, tuple[int, int]]] = []
    for k, step in enumerate(steps):
        split: dict[int, tuple[int, int]] = {}
        end = -math.inf
        for rid, count, emits in step.entries:
            request = by_id[rid]
            prefill = max(0, min(count, len(request.input_ids) - processed[rid]))
            processed[rid] += count
            split[request.index] = (prefill, count - prefill)
            if emits:
                stamps = outputs[rid].timestamps or []
                if emitted[rid] >= len(stamps):
                    raise RuntimeError(f"{rid}: more token-emitting steps than token stamps (was it preempted?)")
                end = max(end, stamps[emitted[rid]])
                emitted[rid] += 1
                emitting_steps[rid].append(k)
        if end == -math.inf:
            end = steps[k + 1].start if k + 1 < len(steps) else step.start
        ends.append(max(end, step.start))
        tokens.append(split)

    served = []
    for request in requests:
        rid = _request_id(request.index)
        output = outputs[rid]
        produced = len(output.generated_tokens)
        if produced != request.output_len or len(emitting_steps[rid]) != produced:
            raise RuntimeError(
                f"{rid}: {produced} tokens generated and {len(emitting_steps[rid])} steps emitted one, for an "
                f"output_len of {request.output_len}"
            )
        token_times = [ends[k] + unix_offset for k in emitting_steps[rid]]
        served.append(
            ServedRequest(
                index=request.index,
                arrival=output.created_time + unix_offset,
                first_token=token_times[0],
                finish=token_times[-1],
                prompt_tokens=len(request.input_ids),
                output_tokens=produced,
                token_times=token_times,
            )
        )
    engine_steps = [
        EngineStep(
            start=step.start + unix_offset,
            end=end + unix_offset,
            tokens=split,
            running=step.running,
            waiting=step.waiting,
        )
        for step, end, split in zip(steps, ends, tokens, strict=True)
    ]
    return ServingTrace(requests=served, steps=engine_steps, facts=facts)


def _wait_until_ready(manager: Any, timeout_s: float = 120.0) -> None:
    """Return once the generation thread has built its batch processor (the KV cache is allocated)."""
    deadline = time.perf_counter() + timeout_s
    while getattr(manager, "batch_processor", None) is None:
        if not manager.is_running():
            status = getattr(manager, "background_thread_status", None)
            raise RuntimeError(f"the continuous batching loop failed to start: {getattr(status, 'fatal_error', None)}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the continuous batching engine was not ready within {timeout_s:.0f} s")
        time.sleep(0.001)


_registry_lock = threading.Lock()


def serve_requests(
    model: Any,
    requests: Sequence[ArrivingRequest],
    max_concurrency: int | None,
    generation_arguments: dict[str, Any] | None = None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
) -> ServingTrace:
    """Serve ``requests`` on ``model`` through continuous batching. Time 0 (of ``arrival_s``) is when the engine is
    ready: started, its KV cache allocated (``facts["engine_ready_s"]``: how long after the call that was)."""
    called = time.perf_counter()
    check_requests(requests, max_concurrency, int(model.config.get_text_config().vocab_size))
    cb_config_cls, fifo, mapping = _cb_api()
    generation_config = generation_config_for(dict(generation_arguments or {}))
    text_config = model.config.get_text_config()
    plan = plan_kv_cache(
        requests,
        max_concurrency,
        kv_bytes_per_block(text_config, model.dtype),
        kv_memory_limit_bytes(model.device),
    )
    fields = {f.name for f in dataclasses.fields(cb_config_cls)}
    options: dict[str, Any] = {
        "page_size" if "page_size" in fields else "block_size": plan.page_size,
        "num_blocks": plan.num_blocks,
        "max_batch_tokens": plan.max_batch_tokens,
        "max_requests_per_batch": plan.max_requests_per_batch,
        "allow_block_sharing": False,  # no prefix caching: every prompt token is prefilled
        "use_async_batching": False,  # steps one at a time: token stamps follow their step's device-to-host copy
        "use_cuda_graph": False,  # no graph capture inside the measured window
        "seed": 0,
    }
    if "auto_switch_to_flash" in fields:
        options["auto_switch_to_flash"] = False  # keep the attention the model was loaded with
    steps: list[_RawStep] = []
    scheduler_name = f"lem_recording_fifo_{id(steps)}"
    with _registry_lock:
        mapping[scheduler_name] = _recording_scheduler(fifo, steps)
    options["scheduler_type"] = scheduler_name

    manager = None
    failed = True
    try:
        manager = model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=cb_config_cls(**options)
        )
        attention = str(model.config._attn_implementation)
        manager.start()
        _wait_until_ready(manager)
        t0_unix, t0 = time.time(), time.perf_counter()
        unix_offset = t0_unix - t0
        cap = len(requests) if max_concurrency is None else max_concurrency
        ordered = sorted(requests, key=lambda r: (r.arrival_s, r.index))
        outputs = _drive(manager, ordered, t0, cap, steps, stall_timeout_s)
        resolved = manager.continuous_batching_config
        failed = False
    finally:
        if manager is not None:
            manager.stop(block=True, timeout=60, hard_stop=failed)
        with _registry_lock:
            mapping.pop(scheduler_name, None)
    if manager.is_running():
        raise RuntimeError("the continuous batching loop did not stop within 60 s")

    num_blocks = int(resolved.num_blocks)
    facts = {
        "api": "transformers continuous batching (init_continuous_batching, add_request, get_result)",
        "transformers": package_version("transformers"),
        "tested_transformers": list(TESTED_TRANSFORMERS),
        "scheduler": "fifo (a recording subclass in SCHEDULER_MAPPING)",
        "attention": attention,
        "engine_ready_s": t0 - called,
        "time_zero": t0_unix,  # Unix time of arrival_s 0
        "kv_cache": {
            "page_size": plan.page_size,
            "num_blocks_planned": plan.num_blocks,
            "num_blocks": num_blocks,
            "tokens": num_blocks * plan.page_size,
            "bytes": num_blocks * plan.bytes_per_block,
            "sized_for": "the max_concurrency longest requests at full length, at most 80 % full",
            "clamped_by_memory": plan.clamped,
        },
        "max_batch_tokens": int(resolved.max_batch_tokens),
        "max_requests_per_batch": int(resolved.max_requests_per_batch),
        "max_concurrency": max_concurrency,
        "async_batching": False,
        "cuda_graphs": False,
        "prefix_caching": False,
        "output_length": "forced: no EOS (eos_token_id -1), max_new_tokens = output_len",
        "sampling": {key: getattr(generation_config, key) for key in sorted(SAMPLING_ARGUMENTS)},
        "token_times": "a step's end: its last record_timestamps stamp (after the blocking copy of the sampled ids)",
    }
    return build_trace(requests, outputs, steps, unix_offset, facts)
