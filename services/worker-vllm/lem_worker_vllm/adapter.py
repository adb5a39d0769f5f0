"""vLLM engine adapter: offline ``vllm.LLM.generate`` on token-id prompts with a forced output length.

NOT RUN HERE. This adapter is written against vLLM's public Python API and has never been executed: vLLM cannot be
installed on the machines this project has (no GPU on the developers' machines; the lent H200 has no room or
network for vLLM's wheels). The API was checked against the vllm-project/vllm sources as stored in 2026 (the
V1 engine; ``vllm/entrypoints/llm.py``, ``vllm/engine/arg_utils.py``, ``vllm/sampling_params.py``,
``vllm/outputs.py``, ``vllm/v1/engine/output_processor.py``, ``vllm/v1/metrics/stats.py``), which is the API of the
v0.2x releases the worker image pins. Run ``tests/gpu`` in the worker image before trusting its figures.

How an experiment maps onto vLLM (the pure functions below hold the mapping, so it is unit tested):
- ``random:NAME`` writes the preset's Llama ``config.json`` into a temporary folder and loads it with
  ``load_format="dummy"`` (random weights) and ``skip_tokenizer_init=True`` (prompts are token ids already).
- the experiment's ``vllm`` section (``lem_shared.params.vllm``) goes to vLLM by name: ``vllm.engine`` fields and
  ``engine.*`` extras are ``vllm.LLM`` keyword arguments, ``vllm.sampling`` fields and ``sampling.*`` extras are
  ``SamplingParams`` keyword arguments. What the user set wins over the adapter's defaults below; what the tool
  owns (model, dtype, load_format, skip_tokenizer_init, disable_log_stats, max/min_tokens, ignore_eos) the
  section cannot set (plan-time checks refuse it).
- every prompt generates exactly ``output_len`` tokens: ``min_tokens = max_tokens``, ``ignore_eos``; greedy and
  without text (``temperature=0``, ``detokenize=False``) unless the section says otherwise.
- prefix caching is off unless ``vllm.engine.enable_prefix_caching`` turns it on: the warm-up replays the measured
  prompts, and a cache hit would skip the prefill the measurement window is meant to contain.
- log stats are on (``disable_log_stats=False``): vLLM fills ``RequestOutput.metrics`` only then, and the batch's
  time to first token comes from it.
- the engine keyword arguments depend only on (model, dtype, the section's engine arguments), which is what
  ``ExperimentConfig.engine_key`` hashes: the runtime reuses a loaded engine for every experiment with the same
  key, so nothing workload-specific may go into the engine. Sampling arguments go with each ``generate`` call.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any

from lem_shared.config import ExperimentConfig
from lem_shared.environment import package_versions
from lem_shared.model_presets import random_preset
from lem_shared.runtime.adapter import Generation
from lem_shared.runtime.engine_support import (
    SpawnedEngineAdapter,
    engine_dtype,
    model_folder,
)

NOT_INSTALLED = "vLLM is not installed on this worker host: pip install 'lem-worker-vllm[engine]' (needs a CUDA GPU)"

# Seeds vLLM's random weights (load_format="dummy"); fixed, because the loaded engine outlives one experiment.
MODEL_SEED = 0


def engine_kwargs(experiment: ExperimentConfig, model_path: str) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for this experiment's model; ``model_path`` is where its config lives.

    The adapter's defaults (seed, prefix caching off), then the section's engine arguments over them, then what
    the tool owns (the section cannot set those)."""
    kwargs: dict[str, Any] = {"seed": MODEL_SEED, "enable_prefix_caching": False}
    kwargs.update(experiment.vllm.arguments("engine"))
    kwargs.update(model=model_path, dtype=engine_dtype(experiment), disable_log_stats=False)
    if random_preset(experiment.model) is not None:
        kwargs.update(load_format="dummy", skip_tokenizer_init=True)
    return kwargs


def sampling_kwargs(experiment: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams``: exactly ``output_len`` new tokens per completion; greedy and
    without text unless the section's sampling arguments say otherwise."""
    n = experiment.workload.output_len
    kwargs: dict[str, Any] = {"temperature": 0.0, "detokenize": False}
    kwargs.update(experiment.vllm.arguments("sampling"))
    kwargs.update(max_tokens=n, min_tokens=n, ignore_eos=True)
    return kwargs


def output_tokens(outputs: Sequence[Any]) -> int:
    """New tokens in a list of ``RequestOutput``, over every completion of each (``vllm.sampling.n`` of them)."""
    return sum(len(completion.token_ids) for out in outputs for completion in out.outputs)


def batch_ttft(outputs: Sequence[Any], started: float) -> float | None:
    """Seconds from ``started`` (wall clock, before ``generate``) until every request had its first token.

    vLLM's ``RequestStateStats`` carries ``arrival_time`` (wall clock) and ``first_token_latency`` (seconds after
    arrival). None when any request lacks them (log stats off, or a vLLM without these fields).
    """
    firsts = []
    for out in outputs:
        stats = getattr(out, "metrics", None)
        arrival = getattr(stats, "arrival_time", None)
        latency = getattr(stats, "first_token_latency", None)
        if not arrival or not latency:
            return None
        firsts.append(float(arrival) + float(latency))
    return max(firsts) - started if firsts else None


class VllmAdapter(SpawnedEngineAdapter):
    package = "vllm"
    not_installed = NOT_INSTALLED

    def load(self, experiment: ExperimentConfig) -> None:
        self._check_ready()
        import vllm

        model_path, self._model_dir = model_folder(experiment, prefix="lem-vllm-model-")
        try:
            self._llm = vllm.LLM(**engine_kwargs(experiment, model_path))
        except BaseException:
            self.unload()
            raise
        preset = random_preset(experiment.model)
        if preset is not None:
            self._vocab_size = int(preset["vocab_size"])
        else:
            self._vocab_size = int(self._llm.llm_engine.model_config.get_vocab_size())

    def unload(self) -> None:
        """Drop the engine and free the GPU the way vLLM's maintainers advise: delete, then clean up.

        Deleting ``LLM`` shuts its engine-core process down; ``cleanup_dist_env_and_memory`` tears down the
        distributed state vLLM set up in this process and empties the CUDA cache.
        """
        self._llm = None
        gc.collect()
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
        except ImportError:
            pass
        else:
            cleanup_dist_env_and_memory()
        if self._model_dir is not None:
            self._model_dir.cleanup()
            self._model_dir = None
        self._vocab_size = None

    def vocab_size(self) -> int:
        if self._vocab_size is None:
            raise RuntimeError("no model loaded")
        return self._vocab_size

    def generate(self, prompts: list[list[int]], experiment: ExperimentConfig) -> Generation:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(**sampling_kwargs(experiment))
        requests = [TokensPrompt(prompt_token_ids=prompt) for prompt in prompts]
        started = time.time()
        outputs = self._llm.generate(requests, params, use_tqdm=False)
        return Generation(output_tokens=output_tokens(outputs), ttft_s=batch_ttft(outputs, started))


    def versions(self) -> dict[str, str]:
        return package_versions("vllm", "torch", "transformers")
