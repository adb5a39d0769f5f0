"""STAND-IN, not vLLM: imitates the part of vLLM's offline Python API that ``lem_worker_vllm.adapter`` calls
(``vllm.LLM(**engine_args)``, ``LLM.generate(prompts, sampling_params, use_tqdm=...)``,
``LLM.llm_engine.model_config.get_vocab_size()``, ``LLM.llm_engine.vllm_config`` (its model, cache, compilation,
attention and scheduler configs), ``LLM.llm_engine.logger_manager.stat_loggers`` (fed every step's
``SchedulerStats`` and ``IterationStats``), ``vllm.SamplingParams(**kw)``, ``RequestOutput`` with
``outputs[i].token_ids`` and ``metrics`` (``RequestStateStats``), ``vllm.inputs.TokensPrompt``,
``vllm.distributed.parallel_state.cleanup_dist_env_and_memory``), and the request-level API of ``LLM.llm_engine``
that a serving driver calls (``add_request``, ``step``, ``abort_request``, ``get_num_unfinished_requests``,
``has_unfinished_requests``; ``vllm.sampling_params.RequestOutputKind``), so the adapter's control flow runs where
vLLM cannot be installed. Names, fields and call shapes are vLLM 0.26.0's (``v1/engine/llm_engine.py``,
``v1/metrics/{stats,loggers}.py``, ``config/*.py``). Written for this project's tests; no vLLM code is in it, and it
computes nothing on a device.

Strict where the adapter could be wrong:
- every keyword of ``LLM`` must be in the ``engine`` group of the committed vLLM snapshot, every keyword of
  ``SamplingParams`` in its ``sampling`` group (TypeError otherwise), with simple types checked;
- the model is a local folder with a ``config.json``; without ``load_format="dummy"`` it must hold weights, without
  ``skip_tokenizer_init=True`` a tokenizer; with no tokenizer, prompts must be token ids and ``detokenize`` off;
- prompt token ids must be inside the vocabulary, and prompt + ``max_tokens`` within the context length;
- each prompt gets ``n`` completions of exactly ``max_tokens`` tokens (16 when not given, the snapshot's default),
  unless EOS is allowed (``ignore_eos`` off): then this "model" emits EOS right after ``min_tokens`` tokens;
- ``RequestOutput.metrics`` is filled only when the ``LLM`` was built with ``disable_log_stats=False`` (the
  ``LLM`` entry point turns stats off by default); request i's first token comes ``(i + 1) x
  FIRST_TOKEN_LATENCY_S`` after the batch's arrival;
- after load ``vllm_config.cache_config`` holds ``NUM_GPU_BLOCKS`` blocks of ``BLOCK_SIZE`` tokens (as 0.26's
  frontend does once the engine core answered); with log stats on, ``generate`` runs one engine step per new token
  and hands each stat logger that step's ``SchedulerStats.kv_cache_usage`` (the blocks every sequence holds, one
  block table per completion, over ``NUM_GPU_BLOCKS``) and an ``IterationStats`` with no preemption;
- ``llm_engine.add_request`` queues a request (``n`` must be 1 here) and returns 0.26's internal id (the given id
  plus a suffix); ``step`` schedules FIFO, at most ``max_num_seqs`` running, and gives every running request one
  token (a request's first step is its prefill), sleeping ``STEP_S`` for the device's work. Outputs follow the
  request's ``output_kind`` (DELTA: the step's new ids; CUMULATIVE: all so far; FINAL_ONLY: at the finish) and
  carry the id given to ``add_request``. With log stats on, a step that returned outputs hands the stat loggers a
  ``SchedulerStats`` counted after the step (finished requests no longer running), as 0.26 does. ``step`` with no
  unfinished request raises (vLLM's multiprocess client would wait forever), and so does the step numbered
  ``llm_engine.fail_at_step`` (a test's knob).

Everything it receives is appended to ``CALLS`` (``_stand_in.Call`` records, in order), including
``add_request`` and ``abort_request`` (not every ``step``), and ``Call("LLM deleted", {})`` when an ``LLM`` is
garbage collected.
"""

from __future__ import annotations

import enum
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import _stand_in
from _stand_in import Call

from vllm.sampling_params import RequestOutputKind

SNAPSHOT = _stand_in.load_snapshot("vllm")
__version__ = SNAPSHOT.version
STAND_IN = True
CALLS: list[Call] = []
FIRST_TOKEN_LATENCY_S = 0.004
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
NUM_GPU_BLOCKS = 512
BLOCK_SIZE = 16
CUDAGRAPH_CAPTURE_SIZES = [1, 2, 4, 8]
STEP_S = 0.001  # one engine step of the serving API
# Snapshot defaults that are expressions, not literals.
EXPRESSION_DEFAULTS: dict[str, Any] = {"output_kind": RequestOutputKind.CUMULATIVE}


class SamplingParams:
    """Keyword arguments checked against the snapshot's ``sampling`` group; attributes read them, or the snapshot's
    default for what was not given."""

    def __init__(self, **kwargs: Any) -> None:
        _stand_in.check_kwargs("SamplingParams", kwargs, SNAPSHOT, ("sampling",))
        self._given = dict(kwargs)
        CALLS.append(Call("SamplingParams", dict(kwargs)))
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise ValueError(f"min_tokens must be in 0..max_tokens, got {self.min_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._given:
            return self._given[name]
        if name in EXPRESSION_DEFAULTS:
            return EXPRESSION_DEFAULTS[name]
        if name in SNAPSHOT.groups["sampling"]:
            return SNAPSHOT.default("sampling", name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"SamplingParams(stand-in, {self._given})"


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    finish_reason: str | None  # None while the request runs


@dataclass
class RequestStateStats:
    """vLLM 0.26's per-request stats (``v1/metrics/stats.py``): frontend wall-clock arrival, engine-core
    monotonic timestamps, seconds from arrival to first token."""

    num_generation_tokens: int = 0
    arrival_time: float = 0.0
    queued_ts: float = 0.0
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    first_token_latency: float = 0.0
    is_corrupted: bool = False


@dataclass
class SchedulerStats:
    """The part of 0.26's ``SchedulerStats`` this stand-in fills."""

    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0


class IterationStats:
    """The part of 0.26's ``IterationStats`` this stand-in fills (no request is ever preempted here)."""

    def __init__(self) -> None:
        self.iteration_timestamp = time.time()
        self.num_generation_tokens = 0
        self.num_preempted_reqs = 0


class CompilationMode(enum.IntEnum):  # vllm/config/compilation.py
    NONE = 0
    STOCK_TORCH_COMPILE = 1
    DYNAMO_TRACE_ONCE = 2
    VLLM_COMPILE = 3


class CUDAGraphMode(enum.Enum):  # vllm/config/compilation.py
    NONE = 0
    PIECEWISE = 1
    FULL = 2
    FULL_DECODE_ONLY = (FULL, NONE)
    FULL_AND_PIECEWISE = (FULL, PIECEWISE)


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestStateStats | None = None


@dataclass
class ModelConfig:
    vocab_size: int
    max_model_len: int
    dtype: str
    enforce_eager: bool

    def get_vocab_size(self) -> int:
        return self.vocab_size


@dataclass
class CacheConfig:
    block_size: int
    gpu_memory_utilization: float
    cache_dtype: str
    enable_prefix_caching: bool
    kv_cache_memory_bytes: int | None
    num_gpu_blocks: int | None = None  # init=False in 0.26: synced from the engine core's ready answer
    kv_cache_size_tokens: int | None = None
    kv_cache_max_concurrency: float | None = None


@dataclass
class CompilationConfig:
    mode: CompilationMode
    backend: str
    cudagraph_mode: CUDAGraphMode
    cudagraph_capture_sizes: list[int]
    max_cudagraph_capture_size: int


@dataclass
class AttentionConfig:
    backend: str | None = None  # an AttentionBackendEnum in 0.26; None: the engine core chooses


@dataclass
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int


@dataclass
class VllmConfig:
    model_config: ModelConfig
    cache_config: CacheConfig
    compilation_config: CompilationConfig
    attention_config: AttentionConfig
    scheduler_config: SchedulerConfig


class StatLoggerManager:
    """0.26's ``StatLoggerManager``: ``record`` hands every stat logger the step's stats."""

    def __init__(self) -> None:
        self.stat_loggers: list[Any] = []

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: Any = None,
        engine_idx: int | None = None,
    ) -> None:
        for stat_logger in self.stat_loggers:
            stat_logger.record(
                scheduler_stats, iteration_stats, mm_cache_stats=mm_cache_stats, engine_idx=engine_idx or 0
            )


def _vllm_config(kwargs: dict[str, Any], vocab_size: int, max_len: int) -> VllmConfig:
    eager = bool(kwargs.get("enforce_eager", False))
    tokens = NUM_GPU_BLOCKS * BLOCK_SIZE
    return VllmConfig(
        model_config=ModelConfig(vocab_size, max_len, kwargs.get("dtype", "auto"), eager),
        cache_config=CacheConfig(
            BLOCK_SIZE,
            float(kwargs.get("gpu_memory_utilization", 0.92)),
            kwargs.get("kv_cache_dtype", "auto"),
            bool(kwargs.get("enable_prefix_caching", True)),
            kwargs.get("kv_cache_memory_bytes"),
            NUM_GPU_BLOCKS,
            tokens,
            tokens / max_len,
        ),
        compilation_config=CompilationConfig(
            CompilationMode.NONE if eager else CompilationMode.VLLM_COMPILE,
            "inductor",
            CUDAGraphMode.NONE if eager else CUDAGraphMode.FULL_AND_PIECEWISE,
            [] if eager else list(CUDAGRAPH_CAPTURE_SIZES),
            0 if eager else max(CUDAGRAPH_CAPTURE_SIZES),
        ),
        attention_config=AttentionConfig(),
        scheduler_config=SchedulerConfig(
            int(kwargs.get("max_num_seqs") or 256), int(kwargs.get("max_num_batched_tokens") or 8192)
        ),
    )


@dataclass
class _Loaded:
    model: _stand_in.StandInModel
    max_model_len: int
    skip_tokenizer: bool
    log_stats: bool
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Served:
    """A request inside the stand-in engine: its ids, the tokens it will emit, and how many it has emitted."""

    request_id: str  # the internal id add_request returned
    external_id: str  # the id it was given, which its outputs carry
    prompt: list[int]
    tokens: list[int]
    eos: int | None
    output_kind: RequestOutputKind
    arrival: float
    emitted: int = 0
    first_token: float = 0.0


class LLMEngine:
    """0.26's V1 ``LLMEngine`` as ``LLM.llm_engine``: its configs, its stat loggers (log stats on) and the
    request-level serving API (module docstring)."""

    def __init__(self, vllm_config: VllmConfig, state: _Loaded) -> None:
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.logger_manager = StatLoggerManager() if state.log_stats else None
        self.fail_at_step: int | None = None  # stand-in knob: the step with this number (1 = first) raises
        self.steps = 0
        self._state = state
        self._waiting: list[_Served] = []
        self._running: list[_Served] = []
        self._added = 0

    def add_request(
        self,
        request_id: str,
        prompt: Any,
        params: Any,
        arrival_time: float | None = None,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        trace_headers: Any = None,
        priority: int = 0,
        prompt_text: str | None = None,
    ) -> str:
        CALLS.append(
            Call(
                "add_request",
                {"request_id": request_id, "prompt": prompt, "params": params, "arrival_time": arrival_time},
            )
        )
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a string, got {type(request_id)}")
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        if params.n != 1:
            raise NotImplementedError("stand-in: requests with n > 1 (parent and child requests) are not imitated")
        state = self._state
        ids = _stand_in.prompt_token_ids(prompt, "vLLM", not state.skip_tokenizer)
        if state.skip_tokenizer and params.detokenize:
            raise ValueError("detokenize=True needs a tokenizer, and skip_tokenizer_init is on")
        max_tokens = params.max_tokens if params.max_tokens is not None else state.max_model_len - len(ids)
        _stand_in.check_prompt(ids, max_tokens, state.model, state.max_model_len, "vLLM")
        eos = None if params.ignore_eos else state.model.eos_token_id
        tokens = _stand_in.completion(ids, 0, max_tokens, params.min_tokens, eos, state.model.vocab_size)
        self._added += 1
        internal = f"{request_id}-{self._added:08x}"  # 0.26 appends 8 random characters
        arrival = time.time() if arrival_time is None else arrival_time
        self._waiting.append(_Served(internal, request_id, ids, tokens, eos, params.output_kind, arrival))
        return internal

    def get_num_unfinished_requests(self) -> int:
        return len(self._waiting) + len(self._running)

    def has_unfinished_requests(self) -> bool:
        return self.get_num_unfinished_requests() > 0

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        """Drop the requests with these ids (the given ids, or the internal ones when ``internal``)."""
        CALLS.append(Call("abort_request", {"request_ids": list(request_ids), "internal": internal}))
        drop = set(request_ids)

        def kept(request: _Served) -> bool:
            return (request.request_id if internal else request.external_id) not in drop

        self._waiting = [r for r in self._waiting if kept(r)]
        self._running = [r for r in self._running if kept(r)]

    def step(self) -> list[RequestOutput]:
        self.steps += 1
        _stand_in.fault("step")
        if self.steps == self.fail_at_step:
            raise RuntimeError(f"stand-in engine failure in step {self.steps} (asked for by the test)")
        if not self.has_unfinished_requests():
            raise RuntimeError(
                "stand-in: step() with no unfinished request (vLLM's multiprocess client would wait forever)"
            )
        while self._waiting and len(self._running) < self.vllm_config.scheduler_config.max_num_seqs:
            self._running.append(self._waiting.pop(0))
        time.sleep(STEP_S)
        now = time.time()
        outputs = []
        for request in self._running:
            request.emitted += 1
            if request.emitted == 1:
                request.first_token = now
            output = self._output(request, finished=request.emitted == len(request.tokens))
            if output is not None:
                outputs.append(output)
        self._running = [r for r in self._running if r.emitted < len(r.tokens)]
        if self.logger_manager is not None and outputs:
            blocks = sum(math.ceil((len(r.prompt) + r.emitted) / BLOCK_SIZE) for r in self._running)
            stats = SchedulerStats(len(self._running), len(self._waiting), blocks / NUM_GPU_BLOCKS)
            self.logger_manager.record(stats, IterationStats(), mm_cache_stats=None)
        return outputs

    def _output(self, request: _Served, finished: bool) -> RequestOutput | None:
        kind = request.output_kind
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        if kind == RequestOutputKind.DELTA:
            ids = request.tokens[request.emitted - 1 : request.emitted]
        else:
            ids = request.tokens[: request.emitted]
        reason = None
        if finished:
            reason = "stop" if request.eos is not None and request.tokens[-1] == request.eos else "length"
        metrics = (
            RequestStateStats(
                num_generation_tokens=request.emitted,
                arrival_time=request.arrival,
                first_token_latency=request.first_token - request.arrival,
            )
            if self._state.log_stats
            else None
        )
        return RequestOutput(request.external_id, request.prompt, [CompletionOutput(0, ids, reason)], finished, metrics)


class LLM:
    def __init__(self, **kwargs: Any) -> None:
        _stand_in.check_kwargs("LLM", kwargs, SNAPSHOT, ("engine",))
        CALLS.append(Call("LLM", dict(kwargs)))
        _stand_in.fault("load")
        dtype = kwargs.get("dtype", "auto")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}")
        skip = bool(kwargs.get("skip_tokenizer_init", False))
        model = _stand_in.read_model(
            kwargs.get("model", SNAPSHOT.default("engine", "model")),
            "vLLM",
            str(kwargs.get("load_format", "auto")),
            skip,
        )
        max_len = int(kwargs.get("max_model_len") or model.max_position_embeddings)
        # The LLM entry point turns log stats off unless disable_log_stats=False is given.
        self._state = _Loaded(model, max_len, skip, log_stats=kwargs.get("disable_log_stats", True) is False)
        self.llm_engine = LLMEngine(_vllm_config(kwargs, model.vocab_size, max_len), self._state)
        weakref.finalize(self, CALLS.append, Call("LLM deleted", {}))

    def generate(self, prompts: Any, sampling_params: Any = None, *, use_tqdm: bool = True) -> list[RequestOutput]:
        CALLS.append(Call("generate", {"prompts": prompts, "sampling_params": sampling_params, "use_tqdm": use_tqdm}))
        _stand_in.fault("generate")
        state = self._state
        if isinstance(prompts, str | dict):
            prompts = [prompts]
        if isinstance(sampling_params, list):
            if len(sampling_params) != len(prompts):
                raise ValueError("the lengths of prompts and sampling_params must be the same")
            params_list = sampling_params
        else:
            params_list = [sampling_params if sampling_params is not None else _default_params()] * len(prompts)
        arrival = time.time()
        outputs = []
        sequences: list[tuple[int, int]] = []  # (prompt length, max tokens) of every completion, for KV usage
        for i, (prompt, params) in enumerate(zip(prompts, params_list, strict=True)):
            if not isinstance(params, SamplingParams):
                raise TypeError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
            ids = _stand_in.prompt_token_ids(prompt, "vLLM", not state.skip_tokenizer)
            if state.skip_tokenizer and params.detokenize:
                raise ValueError("detokenize=True needs a tokenizer, and skip_tokenizer_init is on")
            max_tokens = params.max_tokens if params.max_tokens is not None else state.max_model_len - len(ids)
            _stand_in.check_prompt(ids, max_tokens, state.model, state.max_model_len, "vLLM")
            eos = None if params.ignore_eos else state.model.eos_token_id
            completions = []
            for j in range(params.n):
                tokens = _stand_in.completion(ids, j, max_tokens, params.min_tokens, eos, state.model.vocab_size)
                reason = "stop" if eos is not None and tokens[-1] == eos else "length"
                completions.append(CompletionOutput(j, tokens, reason))
            sequences.extend([(len(ids), max_tokens)] * params.n)
            metrics = (
                RequestStateStats(
                    num_generation_tokens=max_tokens,
                    arrival_time=arrival,
                    first_token_latency=(i + 1) * FIRST_TOKEN_LATENCY_S,
                )
                if state.log_stats
                else None
            )
            outputs.append(RequestOutput(str(i), ids, completions, True, metrics))
        manager = self.llm_engine.logger_manager
        if manager is not None:
            for step in range(max(length for _, length in sequences) if sequences else 0):
                blocks = sum(
                    math.ceil((prompt + min(step + 1, length)) / BLOCK_SIZE)
                    for prompt, length in sequences
                    if step < length
                )
                running = sum(1 for _, length in sequences if step < length)
                manager.record(
                    SchedulerStats(num_running_reqs=running, kv_cache_usage=blocks / NUM_GPU_BLOCKS),
                    IterationStats(),
                    mm_cache_stats=None,
                )
        return outputs


def _default_params() -> SamplingParams:
    """``generate`` without sampling params: the defaults, not recorded as a SamplingParams call."""
    params = SamplingParams.__new__(SamplingParams)
    params._given = {}
    return params
