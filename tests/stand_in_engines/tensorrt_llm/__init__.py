"""STAND-IN, not TensorRT-LLM: imitates the part of TensorRT-LLM's LLM API (PyTorch backend) that
``lem_worker_trt.adapter`` calls (``tensorrt_llm.LLM(**llm_args)``, ``LLM.generate(inputs, sampling_params=...,
use_tqdm=...)``, ``LLM.shutdown()``, ``tensorrt_llm.SamplingParams(**kw)``, ``tensorrt_llm.inputs.TokensPrompt``,
the nested config classes of ``tensorrt_llm.llmapi.llm_args``, ``RequestOutput.outputs[i].token_ids`` and
``RequestOutput.metrics_dict`` keyed by ``tensorrt_llm.metrics.MetricNames``), so the adapter's control flow runs
where TensorRT-LLM cannot be installed. Written for this project's tests; no TensorRT-LLM code is in it, and it
computes nothing on a device.

Strict where the adapter could be wrong:
- every keyword of ``LLM`` must be in the ``llm`` or ``llm.pytorch`` group of the committed TensorRT-LLM snapshot
  (TorchLlmArgs and the BaseLlmArgs it inherits), every keyword of ``SamplingParams`` in its ``sampling`` group and
  every field of ``KvCacheConfig`` in its ``kv_cache_config`` group (TypeError otherwise), with simple types and
  literals checked. The snapshot lists no fields for the other nested configs (``CudaGraphConfig``,
  ``SchedulerConfig``, ...): those take any keywords and only record them;
- a nested-config argument of ``LLM`` is an instance of its class, None where the snapshot's type allows it, or a
  dict that is built into the class (as pydantic would);
- the model is a local folder with a ``config.json``; without ``load_format="dummy"`` it must hold weights, without
  ``skip_tokenizer_init=True`` a tokenizer; with no tokenizer, prompts must be token ids and ``SamplingParams`` must
  name ``end_id``;
- prompt token ids must be inside the vocabulary, and prompt + ``max_tokens`` within the context length;
- each prompt gets ``n`` completions (``best_of >= n`` generated) of exactly ``max_tokens`` tokens (32 when not
  given, the snapshot's default), unless EOS is allowed (``ignore_eos`` off): then this "model" emits ``end_id``
  right after ``min_tokens`` tokens;
- ``metrics_dict`` holds ``MetricNames.TTFT`` (and ``E2E``) only when both the ``LLM`` and the request's
  ``SamplingParams`` have ``return_perf_metrics=True``; request i's TTFT is ``(i + 1) x FIRST_TOKEN_LATENCY_S``;
- ``generate`` after ``shutdown`` raises.

Everything it receives is appended to ``CALLS`` (``_stand_in.Call`` records, in order), including
``Call("LLM deleted", {})`` when an ``LLM`` is garbage collected.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import _stand_in
from _stand_in import Call

from tensorrt_llm._state import CALLS, SNAPSHOT
from tensorrt_llm.llmapi import llm_args
from tensorrt_llm.metrics import MetricNames

__version__ = SNAPSHOT.version
STAND_IN = True
FIRST_TOKEN_LATENCY_S = 0.004
DTYPES = ("auto", "float16", "bfloat16", "float32")
LOAD_FORMATS = ("auto", "dummy")

__all__ = ["CALLS", "LLM", "SNAPSHOT", "SamplingParams", "__version__"]


class SamplingParams:
    """Keyword arguments checked against the snapshot's ``sampling`` group; attributes read them, or the snapshot's
    default for what was not given."""

    def __init__(self, **kwargs: Any) -> None:
        _stand_in.check_kwargs("SamplingParams", kwargs, SNAPSHOT, ("sampling",))
        self._given = dict(kwargs)
        CALLS.append(Call("SamplingParams", dict(kwargs)))
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) must be >= n ({self.n})")
        if self.min_tokens is not None and not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be in 0..max_tokens, got {self.min_tokens}")

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
class RequestOutput:
    request_id: int
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics_dict: dict[MetricNames, float]


class LLM:
    """The PyTorch-backend LLM: checks and builds its arguments, "loads" the folder, generates token ids."""

    def __init__(self, **kwargs: Any) -> None:
        groups = ("llm", "llm.pytorch")
        _stand_in.check_kwargs("LLM", kwargs, SNAPSHOT, groups)
        CALLS.append(Call("LLM", dict(kwargs)))
        _stand_in.fault("load")
        known = SNAPSHOT.parameters(groups)
        self.args = {name: llm_args.as_config(name, known[name], value) for name, value in kwargs.items()}
        if self.args.get("dtype", "auto") not in DTYPES:
            raise ValueError(f"unknown dtype {self.args['dtype']!r}; one of {', '.join(DTYPES)}")
        load_format = str(self.args.get("load_format", "auto")).lower()
        if load_format not in LOAD_FORMATS:
            raise ValueError(f"unknown load_format {load_format!r}; one of {', '.join(LOAD_FORMATS)}")
        self._skip_tokenizer = bool(self.args.get("skip_tokenizer_init", False))
        self._model = _stand_in.read_model(self.args["model"], "TensorRT-LLM", load_format, self._skip_tokenizer)
        self._max_seq_len = int(self.args.get("max_seq_len") or self._model.max_position_embeddings)
        self._perf_metrics = bool(self.args.get("return_perf_metrics", False))
        self._shut_down = False
        weakref.finalize(self, CALLS.append, Call("LLM deleted", {}))

    def generate(self, inputs: Any, sampling_params: Any = None, use_tqdm: bool = True) -> Any:
        CALLS.append(Call("generate", {"inputs": inputs, "sampling_params": sampling_params, "use_tqdm": use_tqdm}))
        if self._shut_down:
            raise RuntimeError("the LLM has been shut down")
        _stand_in.fault("generate")
        single = isinstance(inputs, str | dict) or (
            isinstance(inputs, list) and bool(inputs) and all(isinstance(t, int) for t in inputs)
        )
        prompts = [inputs] if single else list(inputs)
        if isinstance(sampling_params, list):
            if len(sampling_params) != len(prompts):
                raise ValueError("one SamplingParams per prompt, or one for all")
            params_list = sampling_params
        else:
            params_list = [sampling_params if sampling_params is not None else _default_params()] * len(prompts)
        outputs = []
        for i, (prompt, params) in enumerate(zip(prompts, params_list, strict=True)):
            if not isinstance(params, SamplingParams):
                raise TypeError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
            ids = (
                prompt
                if isinstance(prompt, list)
                else _stand_in.prompt_token_ids(prompt, "TensorRT-LLM", not self._skip_tokenizer)
            )
            if self._skip_tokenizer and params.end_id is None:
                raise ValueError("end_id must be given in SamplingParams when the tokenizer is skipped")
            _stand_in.check_prompt(ids, params.max_tokens, self._model, self._max_seq_len, "TensorRT-LLM")
            end_id = params.end_id if params.end_id is not None else self._model.eos_token_id
            eos = None if params.ignore_eos else end_id
            completions = []
            for j in range(params.n):
                tokens = _stand_in.completion(
                    ids, j, params.max_tokens, params.min_tokens or 0, eos, self._model.vocab_size
                )
                reason = "stop" if eos is not None and tokens[-1] == eos else "length"
                completions.append(CompletionOutput(j, tokens, reason))
            ttft = (i + 1) * FIRST_TOKEN_LATENCY_S
            perf = {MetricNames.TTFT: ttft, MetricNames.E2E: 2 * ttft}
            metrics_dict = perf if self._perf_metrics and params.return_perf_metrics else {}
            outputs.append(RequestOutput(i, ids, completions, True, metrics_dict))
        return outputs[0] if single else outputs

    def shutdown(self) -> None:
        CALLS.append(Call("shutdown", {}))
        self._shut_down = True


def _default_params() -> SamplingParams:
    """``generate`` without sampling params: the defaults, not recorded as a SamplingParams call."""
    params = SamplingParams.__new__(SamplingParams)
    params._given = {}
    return params
