"""STAND-IN, not vLLM: imitates the part of vLLM's offline Python API that ``lem_worker_vllm.adapter`` calls
(``vllm.LLM(**engine_args)``, ``LLM.generate(prompts, sampling_params, use_tqdm=...)``,
``LLM.llm_engine.model_config.get_vocab_size()``, ``vllm.SamplingParams(**kw)``, ``RequestOutput`` with
``outputs[i].token_ids`` and ``metrics`` (``arrival_time``, ``first_token_latency``), ``vllm.inputs.TokensPrompt``,
``vllm.distributed.parallel_state.cleanup_dist_env_and_memory``), so the adapter's control flow runs where vLLM
cannot be installed. Written for this project's tests; no vLLM code is in it, and it computes nothing on a device.

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
  FIRST_TOKEN_LATENCY_S`` after the batch's arrival.

Everything it receives is appended to ``CALLS`` (``_stand_in.Call`` records, in order), including
``Call("LLM deleted", {})`` when an ``LLM`` is garbage collected.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import _stand_in
from _stand_in import Call

SNAPSHOT = _stand_in.load_snapshot("vllm")
__version__ = SNAPSHOT.version
STAND_IN = True
CALLS: list[Call] = []
FIRST_TOKEN_LATENCY_S = 0.004
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")


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
        if name in SNAPSHOT.groups["sampling"]:
            return SNAPSHOT.default("sampling", name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"SamplingParams(stand-in, {self._given})"


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    finish_reason: str


@dataclass
class RequestStateStats:
    """The two fields of vLLM's per-request stats the adapter reads: wall-clock arrival, seconds to first token."""

    arrival_time: float
    first_token_latency: float


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

    def get_vocab_size(self) -> int:
        return self.vocab_size


@dataclass
class LLMEngine:
    model_config: ModelConfig


@dataclass
class _Loaded:
    model: _stand_in.StandInModel
    max_model_len: int
    skip_tokenizer: bool
    log_stats: bool
    extras: dict[str, Any] = field(default_factory=dict)


class LLM:
    def __init__(self, **kwargs: Any) -> None:
        _stand_in.check_kwargs("LLM", kwargs, SNAPSHOT, ("engine",))
        CALLS.append(Call("LLM", dict(kwargs)))
        _stand_in.fault("load")
        dtype = kwargs.get("dtype", "auto")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}")
        skip = bool(kwargs.get("skip_tokenizer_init", False))
        model = _stand_in.read_model(kwargs.get("model", SNAPSHOT.default("engine", "model")), "vLLM",
                                     str(kwargs.get("load_format", "auto")), skip)
        max_len = int(kwargs.get("max_model_len") or model.max_position_embeddings)
        # The LLM entry point turns log stats off unless disable_log_stats=False is given.
        self._state = _Loaded(model, max_len, skip, log_stats=kwargs.get("disable_log_stats", True) is False)
        self.llm_engine = LLMEngine(ModelConfig(model.vocab_size, max_len))
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
            metrics = (RequestStateStats(arrival, (i + 1) * FIRST_TOKEN_LATENCY_S) if state.log_stats else None)
            outputs.append(RequestOutput(str(i), ids, completions, True, metrics))
        return outputs


def _default_params() -> SamplingParams:
    """``generate`` without sampling params: the defaults, not recorded as a SamplingParams call."""
    params = SamplingParams.__new__(SamplingParams)
    params._given = {}
    return params
