"""TensorRT-LLM engine adapter: the LLM API (``tensorrt_llm.LLM``, PyTorch backend) on token-id prompts.

NOT RUN HERE. This adapter is written against TensorRT-LLM's public LLM API and has never been executed:
TensorRT-LLM cannot be installed on the machines this project has (no GPU on the developers' machines; the lent
H200 has no room or network for its wheels). The API was checked against the NVIDIA/TensorRT-LLM sources as
stored in 2026 (``tensorrt_llm/llmapi/llm.py``, ``tensorrt_llm/llmapi/llm_args.py``,
``tensorrt_llm/sampling_params.py``, ``tensorrt_llm/executor/base_worker.py``; version.py there read 1.2.0rc2,
llm.py was newer) and the 1.3/1.4 API reference (TorchLlmArgs). Run ``tests/gpu`` in the worker image before
trusting its figures.

How an experiment maps onto TensorRT-LLM (the pure functions below hold the mapping, so it is unit tested):
- ``tensorrt_llm.LLM`` is the PyTorch-backend LLM (``_TorchLLM``); it rejects keyword arguments that are not
  TorchLlmArgs fields, so only documented ones are passed: the experiment's ``trtllm.engine`` arguments (checked at
  plan time against the committed parameter snapshot) and the tool's own (model, dtype, load format, perf metrics).
- ``kv_cache_config`` is the experiment's ``trtllm.kv_cache`` fields over the tool's default of block reuse off: the
  warm-up replays the measured prompts, and reused blocks would skip the prefill the measurement window is meant
  to contain. ``load`` builds the ``KvCacheConfig``; the other nested configs (``cuda_graph_config``,
  ``scheduler_config``, ``moe_config``, ``torch_compile_config``, ``attention_dp_config``,
  ``sparse_attention_config``, ``speculative_config``) are built from their dicts the same way, from the classes
  of ``tensorrt_llm.llmapi.llm_args``; ``cuda_graph_config: false`` is passed as None (CUDA graphs off).
- ``random:NAME`` writes the preset's Llama ``config.json`` into a temporary folder and loads it with
  ``load_format="dummy"`` (TorchLlmArgs: "Initialize all weights randomly") and ``skip_tokenizer_init=True``.
  Without a tokenizer the LLM API needs ``SamplingParams.end_id`` given explicitly, so it is set to the config's
  EOS id; ``ignore_eos=True`` then makes the executor use ``end_id=-1`` (no token ends a sequence).
- every prompt generates exactly ``output_len`` tokens: ``min_tokens = max_tokens``, ``ignore_eos``; decoding is
  greedy (``temperature=0``) unless ``trtllm.sampling`` says otherwise.
- ``return_perf_metrics=True`` makes each ``RequestOutput.metrics_dict`` carry ``MetricNames.TTFT``.
- the engine keyword arguments depend only on (model, dtype, ``trtllm.engine``, ``trtllm.kv_cache``): the runtime
  reuses a loaded engine for every experiment with the same ``experiment.engine_key()``.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

from lem_shared.config.presets import random_preset
from lem_shared.config.schema import ExperimentConfig
from lem_shared.device.environment import package_versions
from lem_shared.params.trtllm import KV_CACHE_DEFAULTS
from lem_shared.runtime.adapter import Generation
from lem_shared.runtime.engine_support import (
    RANDOM_MODEL_EOS_ID,
    SpawnedEngineAdapter,
    engine_dtype,
    model_folder,
)

NOT_INSTALLED = (
    "TensorRT-LLM is not installed on this worker host: pip install 'lem-worker-trt[engine]' (needs a CUDA GPU)"
)


# Nested engine configs given as dicts: LLM keyword -> class name in tensorrt_llm.llmapi.llm_args.
NESTED_CONFIGS = {
    "kv_cache_config": "KvCacheConfig",
    "cuda_graph_config": "CudaGraphConfig",
    "scheduler_config": "SchedulerConfig",
    "moe_config": "MoeConfig",
    "torch_compile_config": "TorchCompileConfig",
    "attention_dp_config": "AttentionDpConfig",
    "sparse_attention_config": "RocketSparseAttentionConfig",
}


def engine_kwargs(experiment: ExperimentConfig, model_path: str) -> dict[str, Any]:
    """Keyword arguments of ``tensorrt_llm.LLM`` for this experiment's model; ``model_path`` holds its config.

    Nested configs (``kv_cache_config``, ``cuda_graph_config``, ...) are dicts of their fields; ``load`` turns them
    into the engine's pydantic objects (``build_nested``).
    """
    section = experiment.trtllm
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": engine_dtype(experiment),
        "return_perf_metrics": True,
    }
    engine = section.arguments("engine")
    if engine.get("cuda_graph_config") is False:
        engine["cuda_graph_config"] = None  # CUDA graphs off
    kwargs.update(engine)
    kwargs["kv_cache_config"] = {**KV_CACHE_DEFAULTS, **section.arguments("kv_cache")}
    if random_preset(experiment.model) is not None:
        kwargs.update(load_format="dummy", skip_tokenizer_init=True)
    return kwargs


def build_nested(kwargs: dict[str, Any], llm_args: Any) -> dict[str, Any]:
    """``kwargs`` with each nested-config dict replaced by its class from ``llm_args``
    (``tensorrt_llm.llmapi.llm_args``); ``speculative_config`` goes through ``DecodingBaseConfig.from_dict``, which
    picks the class from ``decoding_type``."""
    out = dict(kwargs)
    for key, class_name in NESTED_CONFIGS.items():
        if isinstance(out.get(key), dict):
            out[key] = getattr(llm_args, class_name)(**out[key])
    if isinstance(out.get("speculative_config"), dict):
        out["speculative_config"] = llm_args.DecodingBaseConfig.from_dict(dict(out["speculative_config"]))
    return out


def sampling_kwargs(experiment: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments of ``tensorrt_llm.SamplingParams``: exactly ``output_len`` new tokens, no text; greedy
    unless the experiment's ``trtllm.sampling`` sets sampling parameters."""
    n = experiment.workload.output_len
    kwargs: dict[str, Any] = {"temperature": 0.0}
    kwargs.update(experiment.trtllm.arguments("sampling"))
    kwargs.update(max_tokens=n, min_tokens=n, ignore_eos=True, detokenize=False, return_perf_metrics=True)
    if random_preset(experiment.model) is not None:
        kwargs["end_id"] = RANDOM_MODEL_EOS_ID  # no tokenizer to take it from (skip_tokenizer_init)
    return kwargs


def output_tokens(outputs: Sequence[Any]) -> int:
    """New tokens in a list of ``RequestOutput``, over every completion of each (``trtllm.sampling.n`` of them;
    the prompt is excluded by default)."""
    return sum(len(completion.token_ids) for out in outputs for completion in out.outputs)


def batch_ttft(outputs: Sequence[Any]) -> float | None:
    """The largest per-request time to first token, in seconds, from ``RequestOutput.metrics_dict``.

    TensorRT-LLM measures TTFT from each request's arrival in the executor; a batch's requests are submitted
    together, so the largest is the time until the whole batch had its first token. None when any request lacks it.
    Keys are ``MetricNames`` members; they are matched by name so this module never imports the engine.
    """
    values = []
    for out in outputs:
        metrics = getattr(out, "metrics_dict", None) or {}
        ttft = next((value for key, value in metrics.items() if getattr(key, "name", key) == "TTFT"), None)
        if ttft is None or ttft <= 0:
            return None
        values.append(float(ttft))
    return max(values) if values else None


class TrtLlmAdapter(SpawnedEngineAdapter):
    package = "tensorrt_llm"
    not_installed = NOT_INSTALLED

    def load(self, experiment: ExperimentConfig) -> None:
        self._check_ready(experiment)
        from tensorrt_llm import LLM
        from tensorrt_llm.llmapi import llm_args

        model_path, self._model_dir = model_folder(experiment, prefix="lem-trt-model-")
        kwargs = build_nested(engine_kwargs(experiment, model_path), llm_args)
        try:
            self._llm = LLM(**kwargs)
        except BaseException:
            self.unload()
            raise
        preset = random_preset(experiment.model)
        if preset is not None:
            self._vocab_size = int(preset["vocab_size"])
        else:
            from transformers import AutoConfig

            self._vocab_size = int(AutoConfig.from_pretrained(experiment.model).vocab_size)

    def unload(self) -> None:
        """``LLM.shutdown()`` stops the executor and its worker processes, which frees the GPU."""
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()
        del llm
        gc.collect()
        if self._model_dir is not None:
            self._model_dir.cleanup()
            self._model_dir = None
        self._vocab_size = None

    def vocab_size(self) -> int:
        if self._vocab_size is None:
            raise RuntimeError("no model loaded")
        return self._vocab_size

    def generate(self, prompts: list[list[int]], experiment: ExperimentConfig) -> Generation:
        from tensorrt_llm import SamplingParams
        from tensorrt_llm.inputs import TokensPrompt

        params = SamplingParams(**sampling_kwargs(experiment))
        requests = [TokensPrompt(prompt_token_ids=prompt) for prompt in prompts]
        outputs = self._llm.generate(requests, sampling_params=params, use_tqdm=False)
        return Generation(output_tokens=output_tokens(outputs), ttft_s=batch_ttft(outputs))

    def versions(self) -> dict[str, str]:
        return package_versions("tensorrt_llm", "torch", "transformers")
