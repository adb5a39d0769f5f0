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
  TorchLlmArgs fields, so only documented ones are passed.
- ``random:NAME`` writes the preset's Llama ``config.json`` into a temporary folder and loads it with
  ``load_format="dummy"`` (TorchLlmArgs: "Initialize all weights randomly") and ``skip_tokenizer_init=True``.
  Without a tokenizer the LLM API needs ``SamplingParams.end_id`` given explicitly, so it is set to the config's
  EOS id; ``ignore_eos=True`` then makes the executor use ``end_id=-1`` (no token ends a sequence).
- every prompt generates exactly ``output_len`` tokens: ``min_tokens = max_tokens``, ``ignore_eos``, greedy.
- KV-cache block reuse is off: the warm-up replays the measured prompts, and reused blocks would skip the
  prefill the measurement window is meant to contain.
- ``return_perf_metrics=True`` makes each ``RequestOutput.metrics_dict`` carry ``MetricNames.TTFT``.
- the engine keyword arguments depend only on (model, dtype): the runtime reuses a loaded engine for every
  experiment with the same (backend, model, dtype).
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

from lem_shared.config import ExperimentConfig
from lem_shared.environment import package_versions
from lem_shared.model_presets import random_preset
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


def engine_kwargs(experiment: ExperimentConfig, model_path: str) -> dict[str, Any]:
    """Keyword arguments of ``tensorrt_llm.LLM`` for this experiment's model; ``model_path`` holds its config.

    ``kv_cache_config`` is given as a dict of KvCacheConfig fields; ``load`` turns it into the pydantic object.
    """
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": engine_dtype(experiment),
        "kv_cache_config": {"enable_block_reuse": False},
        "return_perf_metrics": True,
    }
    if random_preset(experiment.model) is not None:
        kwargs.update(load_format="dummy", skip_tokenizer_init=True)
    return kwargs


def sampling_kwargs(experiment: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments of ``tensorrt_llm.SamplingParams``: exactly ``output_len`` new tokens, greedy, no text."""
    n = experiment.workload.output_len
    kwargs: dict[str, Any] = {
        "max_tokens": n,
        "min_tokens": n,
        "ignore_eos": True,
        "temperature": 0.0,
        "detokenize": False,
        "return_perf_metrics": True,
    }
    if random_preset(experiment.model) is not None:
        kwargs["end_id"] = RANDOM_MODEL_EOS_ID  # no tokenizer to take it from (skip_tokenizer_init)
    return kwargs


def output_tokens(outputs: Sequence[Any]) -> int:
    """New tokens in a list of ``RequestOutput`` (one completion each; the prompt is excluded by default)."""
    return sum(len(out.outputs[0].token_ids) for out in outputs)


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
        self._check_ready()
        from tensorrt_llm import LLM
        from tensorrt_llm.llmapi import KvCacheConfig

        model_path, self._model_dir = model_folder(experiment, prefix="lem-trt-model-")
        kwargs = engine_kwargs(experiment, model_path)
        kwargs["kv_cache_config"] = KvCacheConfig(**kwargs["kv_cache_config"])
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
