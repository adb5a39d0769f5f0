"""vLLM engine adapter: offline ``vllm.LLM.generate`` on token-id prompts with a forced output length.

Written against vLLM 0.26.0 (the V1 engine; every attribute read was checked in its sources: ``entrypoints/llm.py``,
``outputs.py``, ``v1/engine/llm_engine.py``, ``v1/engine/core_client.py``, ``v1/metrics/stats.py``,
``v1/metrics/loggers.py``, ``config/{cache,compilation,attention,model,scheduler}.py``, ``envs.py``,
``v1/sample/ops/topk_topp_sampler.py``). An earlier form of it ran vLLM 0.26.0 on an NVIDIA H200 (torch
2.11.0+cu130, FlashAttention 3, no FlashInfer; 2026-11-30, issue 14); this form, with the sampler switch, the
engine facts and the KV-cache stat logger, has run only against the stand-in engine (``tests/stand_in_engines/vllm``,
0.26's names and shapes) so far: no GPU was lent when it was written.

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
- log stats are on (``disable_log_stats=False``): vLLM fills ``RequestOutput.metrics`` and records scheduler
  stats only then.
- without FlashInfer installed, ``VLLM_USE_FLASHINFER_SAMPLER=0`` is set before the engine starts (unless the
  operator set it): vLLM 0.26's sampler imports FlashInfer otherwise, and the engine-core process fails to start.
- the engine keyword arguments depend only on (model, dtype, the section's engine arguments), which is what
  ``ExperimentConfig.engine_key`` hashes: the runtime reuses a loaded engine for every experiment with the same
  key, so nothing workload-specific may go into the engine. Sampling arguments go with each ``generate`` call.

What it records:
- per batch: output tokens; the batch's TTFT (until every request had its first token, for ITL); each request's
  TTFT (vLLM's ``RequestStateStats.first_token_latency``: arrival to first token); the KV-cache usage peak and
  mean over the batch's engine steps and the requests preempted (``SchedulerStats.kv_cache_usage``,
  ``IterationStats.num_preempted_reqs``, seen by a stat logger added to the engine's ``StatLoggerManager``);
- ``engine_facts()``, into the run's environment: the vLLM version, the FlashInfer-sampler switch and why, and
  from the live ``llm_engine.vllm_config`` after load: compilation mode, backend, CUDA-graph mode and capture
  sizes, KV-cache blocks x block size = tokens (``cache_config.num_gpu_blocks``, synced from the engine core),
  cache dtype, gpu_memory_utilization, max_model_len, max_num_seqs. What 0.26 does not tell the frontend (the
  attention backend and the KV-cache bytes are chosen and logged inside the engine-core process) is None, with
  the reason under ``unavailable``.
"""

from __future__ import annotations

import enum
import gc
import importlib.util
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from lem_shared.config.presets import random_preset
from lem_shared.config.schema import ExperimentConfig
from lem_shared.device.environment import package_versions
from lem_shared.runtime.adapter import ArrivingRequest, Generation
from lem_shared.runtime.engine_support import (
    SpawnedEngineAdapter,
    engine_dtype,
    model_folder,
)
from lem_shared.wire.messages import ServingTrace

NOT_INSTALLED = "vLLM is not installed on this worker host: pip install 'lem-worker-vllm[engine]' (needs a CUDA GPU)"

# Seeds vLLM's random weights (load_format="dummy"); fixed, because the loaded engine outlives one experiment.
MODEL_SEED = 0

FLASHINFER_SAMPLER_ENV = "VLLM_USE_FLASHINFER_SAMPLER"
# What vLLM 0.26 keeps inside the engine-core process, out of the frontend's reach.
NOT_IN_FRONTEND = {
    "attention_backend": "chosen in the engine-core process (it logs 'Using ... attention backend'); vLLM 0.26 "
    "exposes the choice to no frontend API (attention_config.backend is only what was asked)",
    "kv_cache_bytes": "sized in the engine-core process (it logs 'Available KV cache memory'); vLLM 0.26's "
    "frontend gets only blocks, block size and tokens",
}


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


def flashinfer_sampler_choice(environ: Mapping[str, str], flashinfer_installed: bool) -> dict[str, Any]:
    """``VLLM_USE_FLASHINFER_SAMPLER`` for the engine: the operator's value, vLLM's default where FlashInfer is
    installed, else "0" (set by this adapter). ``value`` None means unset."""
    if FLASHINFER_SAMPLER_ENV in environ:
        return {
            "value": environ[FLASHINFER_SAMPLER_ENV],
            "set_by": "operator",
            "reason": "set in the worker's environment",
        }
    if flashinfer_installed:
        return {
            "value": None,
            "set_by": "vllm default",
            "reason": "flashinfer is installed: vLLM uses its top-k/top-p sampler where the GPU supports it",
        }
    return {
        "value": "0",
        "set_by": "lem",
        "reason": "flashinfer is not installed: vLLM 0.26's sampler would import it and the engine core would "
        "fail to start (No module named 'flashinfer')",
    }


def _json_value(value: Any) -> Any:
    """Enums by name (``CompilationMode.VLLM_COMPILE``), torch dtypes and other objects as text."""
    if isinstance(value, enum.Enum):  # first: CompilationMode is an IntEnum
        return value.name
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    return str(value)


# engine_facts key -> (config object of VllmConfig, attribute), as vLLM 0.26 names them.
CONFIG_FACTS = {
    "compilation_mode": ("compilation_config", "mode"),
    "compilation_backend": ("compilation_config", "backend"),
    "cudagraph_mode": ("compilation_config", "cudagraph_mode"),
    "cudagraph_capture_sizes": ("compilation_config", "cudagraph_capture_sizes"),
    "max_cudagraph_capture_size": ("compilation_config", "max_cudagraph_capture_size"),
    "enforce_eager": ("model_config", "enforce_eager"),
    "dtype": ("model_config", "dtype"),
    "max_model_len": ("model_config", "max_model_len"),
    "attention_backend_requested": ("attention_config", "backend"),
    "num_gpu_blocks": ("cache_config", "num_gpu_blocks"),
    "block_size": ("cache_config", "block_size"),
    "kv_cache_size_tokens": ("cache_config", "kv_cache_size_tokens"),
    "kv_cache_max_concurrency": ("cache_config", "kv_cache_max_concurrency"),
    "cache_dtype": ("cache_config", "cache_dtype"),
    "gpu_memory_utilization": ("cache_config", "gpu_memory_utilization"),
    "kv_cache_memory_bytes_requested": ("cache_config", "kv_cache_memory_bytes"),
    "enable_prefix_caching": ("cache_config", "enable_prefix_caching"),
    "max_num_seqs": ("scheduler_config", "max_num_seqs"),
    "max_num_batched_tokens": ("scheduler_config", "max_num_batched_tokens"),
}


def engine_facts_of(vllm_config: Any, vllm_version: str, sampler: dict[str, Any]) -> dict[str, Any]:
    """What the loaded engine uses, as JSON, from its live ``VllmConfig`` (read after load: the engine core syncs
    ``num_gpu_blocks``, ``block_size`` and ``kv_cache_size_tokens`` back to it). A missing attribute is None, with
    the reason under ``unavailable``; so is what 0.26 keeps in the engine-core process."""
    facts: dict[str, Any] = {
        "engine": "vllm",
        "vllm_version": vllm_version,
        "flashinfer_sampler": sampler,
        "attention_backend": None,
        "kv_cache_bytes": None,
    }
    unavailable = dict(NOT_IN_FRONTEND)
    for key, (section, name) in CONFIG_FACTS.items():
        holder = getattr(vllm_config, section, None)
        if holder is None or not hasattr(holder, name):
            facts[key] = None
            unavailable[key] = f"vllm_config.{section}.{name} is missing in this vLLM"
        else:
            facts[key] = _json_value(getattr(holder, name))
    blocks, block_size = facts["num_gpu_blocks"], facts["block_size"]
    facts["kv_cache_tokens"] = blocks * block_size if isinstance(blocks, int) and isinstance(block_size, int) else None
    if facts["kv_cache_tokens"] is None:
        unavailable["kv_cache_tokens"] = "num_gpu_blocks or block_size unknown"
    facts["unavailable"] = unavailable
    return facts


class KvCacheWatch:
    """A stat logger for vLLM's ``StatLoggerManager`` (the interface of ``vllm.v1.metrics.loggers.StatLoggerBase``):
    it keeps the KV-cache usage of every engine step and the requests preempted, since the last ``reset``."""

    def __init__(self) -> None:
        self.usage: list[float] = []
        self.preemptions = 0

    def reset(self) -> None:
        self.usage, self.preemptions = [], 0

    def record(
        self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
    ) -> None:
        usage = getattr(scheduler_stats, "kv_cache_usage", None)
        if usage is not None:
            self.usage.append(float(usage))
        self.preemptions += int(getattr(iteration_stats, "num_preempted_reqs", 0) or 0)

    def figures(self) -> dict[str, Any]:
        """Peak and mean usage over the steps seen, and preemptions; all None when no step was seen."""
        if not self.usage:
            return {"kv_cache_usage_peak": None, "kv_cache_usage_mean": None, "preemptions": None}
        return {
            "kv_cache_usage_peak": max(self.usage),
            "kv_cache_usage_mean": sum(self.usage) / len(self.usage),
            "preemptions": self.preemptions,
        }

    def log(self) -> None:
        """Nothing to print: the adapter reads the figures."""

    def log_engine_initialized(self) -> None:
        """Nothing to print."""

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        """Sleep mode is not used."""


def watch_kv_cache(llm: Any) -> tuple[KvCacheWatch | None, str | None]:
    """Add a ``KvCacheWatch`` to the engine's stat loggers (``llm.llm_engine.logger_manager.stat_loggers``, which
    ``LLMEngine.step`` feeds every step's scheduler and iteration stats); (None, why) when the engine has none."""
    manager = getattr(getattr(llm, "llm_engine", None), "logger_manager", None)
    loggers = getattr(manager, "stat_loggers", None)
    if not isinstance(loggers, list):
        return None, "llm_engine.logger_manager.stat_loggers not found (log stats off, or another vLLM)"
    watch = KvCacheWatch()
    loggers.append(watch)
    return watch, None


def request_ttfts(outputs: Sequence[Any]) -> list[float] | None:
    """Each request's time to first token as vLLM measured it: ``RequestStateStats.first_token_latency`` (seconds
    from the request's arrival). None when any request lacks it, so percentiles never cover part of a batch."""
    latencies = []
    for out in outputs:
        latency = getattr(getattr(out, "metrics", None), "first_token_latency", None)
        if not latency:
            return None
        latencies.append(float(latency))
    return latencies or None


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

    def __init__(self, device: str):
        super().__init__(device)
        # Before anything starts the engine core (a process that inherits this environment).
        self._sampler = flashinfer_sampler_choice(os.environ, importlib.util.find_spec("flashinfer") is not None)
        if self._sampler["set_by"] == "lem":
            os.environ[FLASHINFER_SAMPLER_ENV] = self._sampler["value"]
        self._facts: dict[str, Any] | None = None
        self._kv_watch: KvCacheWatch | None = None

    def load(self, experiment: ExperimentConfig) -> None:
        self._check_ready(experiment)
        import vllm

        model_path, self._model_dir = model_folder(experiment, prefix="lem-vllm-model-")
        try:
            self._llm = vllm.LLM(**engine_kwargs(experiment, model_path))
        except BaseException:
            self.unload()
            raise
        self._kv_watch, kv_missing = watch_kv_cache(self._llm)
        self._facts = engine_facts_of(
            getattr(self._llm.llm_engine, "vllm_config", None), self.versions()["vllm"], self._sampler
        )
        if kv_missing is not None:
            self._facts["unavailable"]["kv_cache_usage"] = kv_missing
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
        self._llm, self._kv_watch, self._facts = None, None, None
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
        if self._kv_watch is not None:
            self._kv_watch.reset()
        started = time.time()
        outputs = self._llm.generate(requests, params, use_tqdm=False)
        kv = self._kv_watch.figures() if self._kv_watch is not None else {}
        return Generation(
            output_tokens=output_tokens(outputs),
            ttft_s=batch_ttft(outputs, started),
            request_ttfts_s=request_ttfts(outputs),
            **kv,
        )

    def serve(
        self, requests: list[ArrivingRequest], experiment: ExperimentConfig, max_concurrency: int | None
    ) -> ServingTrace:
        """``workload.mode: serving``: hand each request to the loaded engine at its arrival (see ``serving``)."""
        from lem_worker_vllm.serving import serve_requests

        if self._llm is None:
            raise RuntimeError("no model loaded: call load(experiment) before serve")
        return serve_requests(self._llm, requests, experiment, max_concurrency)

    def engine_facts(self) -> dict[str, Any] | None:
        """What the loaded engine uses (see ``engine_facts_of``); None before a load."""
        return self._facts

    def versions(self) -> dict[str, str]:
        return package_versions("vllm", "torch", "transformers")
