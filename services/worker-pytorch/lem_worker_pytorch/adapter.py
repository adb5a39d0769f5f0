"""HF transformers engine adapter: ``generate`` with a forced output length, on CUDA where present, else CPU.

``random:NAME`` builds a Llama of a preset shape with random weights (no download) through ``from_config``; any
other model name is a hub id or a local folder, loaded with ``from_pretrained`` exactly as users with the network
expect. Every parameter of the experiment's ``pytorch`` section reaches its call: ``loading`` the load, ``compile``
a ``torch.compile`` of the forward, ``generation`` each ``generate`` (the pure functions below build the keyword
arguments, so the mapping is tested).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.generation.streamers import BaseStreamer

from lem_shared.config.presets import random_preset
from lem_shared.config.schema import ExperimentConfig
from lem_shared.device.environment import package_versions
from lem_shared.runtime.adapter import ArrivingRequest, DeviceInfo, Generation
from lem_shared.runtime.engine_support import cuda_devices_info, pin_cuda_device
from lem_shared.settings import get_settings
from lem_shared.wire.messages import ServingTrace

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _FirstTokenClock(BaseStreamer):
    """Notes when generate hands over the first new token (its first ``put`` is the prompt)."""

    def __init__(self, device: torch.device):
        self.device, self.puts = device, 0
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def _resolve_device(device: str) -> torch.device:
    """The device inputs go to. A GPU set (``cuda:0,1``) is pinned as CUDA_VISIBLE_DEVICES first (the engine host
    is a fresh process, CUDA not yet started), so the model sees the set as cuda:0..n-1 and a device_map such as
    auto spreads over those GPUs only; its first GPU takes the inputs."""
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if "," in device:
        problem = pin_cuda_device(device)
        if problem is not None:
            raise ValueError(problem)
        return torch.device("cuda:0")
    return torch.device(device)


def gpus_of_device_map(device_map: dict[str, Any] | None, default: int) -> list[int]:
    """The CUDA indices a loaded model's ``hf_device_map`` places modules on, in order; ``[default]`` without one
    (or when it places nothing on a GPU: cpu or disk offload only)."""
    indices: set[int] = set()
    for place in (device_map or {}).values():
        if isinstance(place, int) and not isinstance(place, bool):
            indices.add(place)
        elif isinstance(place, str) and place.startswith("cuda"):
            index = place.partition(":")[2]
            indices.add(int(index) if index.isdigit() else 0)
        elif isinstance(place, torch.device) and place.type == "cuda":
            indices.add(place.index or 0)
    return sorted(indices) or [default]


def load_kwargs(experiment: ExperimentConfig, dtype: torch.dtype) -> dict[str, Any]:
    """Keywords of ``from_pretrained`` (or ``from_config`` for random:* models): dtype and the loading group."""
    return {"dtype": dtype, **experiment.pytorch.arguments("loading")}


def generate_kwargs(experiment: ExperimentConfig) -> dict[str, Any]:
    """Keywords of ``generate``: the generation group, then the forced output length (greedy unless set)."""
    new_tokens = experiment.workload.output_len
    kwargs = {"do_sample": False, **experiment.pytorch.arguments("generation")}
    kwargs.update(max_new_tokens=new_tokens, min_new_tokens=new_tokens)  # an early EOS cannot change the work
    compile_config = kwargs.get("compile_config")
    if isinstance(compile_config, dict):
        from transformers import CompileConfig

        kwargs["compile_config"] = CompileConfig(**compile_config)
    return kwargs


def _llama_config(preset: dict[str, Any]) -> LlamaConfig:
    fields: dict[str, Any] = {k: bool(v) if k == "tie_word_embeddings" else v for k, v in preset.items()}
    return LlamaConfig(**fields)


class TransformersAdapter:
    def __init__(self, device: str):
        self.device = _resolve_device(device)
        self.model: Any = None
        self._assistant_model: tuple[str, Any] | None = None
        self._threads_set = get_settings().torch_threads
        if self._threads_set is not None:  # before any model is built, so every op runs on this pool
            torch.set_num_threads(self._threads_set)

    def _dtype(self, experiment: ExperimentConfig) -> torch.dtype:
        if experiment.dtype == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else torch.float32
        return DTYPES[experiment.dtype]

    def _build(self, name: str, kwargs: dict[str, Any]) -> Any:
        preset = random_preset(name)
        model: Any  # transformers types PreTrainedModel.to as a wrapped function mypy cannot call with a device
        if preset is not None:
            torch.manual_seed(0)
            with torch.device(self.device):
                model = AutoModelForCausalLM.from_config(_llama_config(preset), **kwargs)
        else:
            try:
                model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
            except OSError as exc:
                reason = str(exc).split(". ")[0]
                raise RuntimeError(f"cannot load model {name!r} (hub id or local folder): {reason}") from exc
            if "device_map" not in kwargs:
                model = model.to(self.device)
        model.eval()
        model.generation_config.pad_token_id = model.generation_config.pad_token_id or 0
        return model

    def load(self, experiment: ExperimentConfig) -> None:
        self.model = self._build(experiment.model, load_kwargs(experiment, self._dtype(experiment)))
        if experiment.pytorch.compile is not None:
            self.model.forward = torch.compile(self.model.forward, **experiment.pytorch.arguments("compile"))

    def _assistant(self, name: str, experiment: ExperimentConfig) -> Any:
        """The draft model of assisted decoding, loaded once per name (same dtype as the main model)."""
        if self._assistant_model is None or self._assistant_model[0] != name:
            self._assistant_model = None
            self._assistant_model = (name, self._build(name, {"dtype": self._dtype(experiment)}))
        return self._assistant_model[1]

    def unload(self) -> None:
        self.model = None
        self._assistant_model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], experiment: ExperimentConfig) -> Generation:
        input_ids = torch.tensor(prompts, dtype=torch.long, device=self.device)
        kwargs = generate_kwargs(experiment)
        if "assistant_model" in kwargs:
            kwargs["assistant_model"] = self._assistant(kwargs["assistant_model"], experiment)
        # transformers refuses a streamer with beam search: no first-token time there
        clock = _FirstTokenClock(self.device) if kwargs.get("num_beams", 1) == 1 else None
        started = time.perf_counter()
        output = self.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=clock, **kwargs
        )
        self.synchronize()
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        generated = int(sequences.shape[0] * (sequences.shape[1] - input_ids.shape[1]))
        ttft = clock.first_token_at - started if clock and clock.first_token_at is not None else None
        return Generation(output_tokens=generated, ttft_s=ttft)

    def serve(
        self, requests: list[ArrivingRequest], experiment: ExperimentConfig, max_concurrency: int | None
    ) -> ServingTrace:
        """Serve requests as they arrive through transformers' continuous batching (workload.mode serving)."""
        from lem_worker_pytorch.serving import serve_requests

        if experiment.pytorch.compile is not None:
            raise ValueError(
                "pytorch.compile: not used in workload.mode serving (continuous batching changes the batch shape "
                "every step, so a compiled forward would recompile inside the window); remove it"
            )
        with torch.inference_mode():
            return serve_requests(self.model, requests, max_concurrency, experiment.pytorch.arguments("generation"))

    def model_shape(self) -> dict[str, Any]:
        """The loaded model's config (layers, heads, sizes, vocabulary) for the analytic FLOPs."""
        return {k: v for k, v in self.model.config.to_dict().items() if isinstance(v, int | float | bool | str)}

    def count_flops(self, prompts: list[list[int]], experiment: ExperimentConfig) -> dict[str, Any]:
        """One unmeasured greedy generate of ``prompts`` under torch's FLOP counter (prefill and decode apart)."""
        from lem_worker_pytorch.profiler_flops import count_flops

        input_ids = torch.tensor(prompts, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            counted = count_flops(self.model, input_ids, experiment.workload.output_len)
        self.synchronize()
        return counted

    def _gpus(self) -> list[int]:
        """The GPUs the loaded model is on: every one its device_map names (a model spread over a GPU set)."""
        return gpus_of_device_map(getattr(self.model, "hf_device_map", None), self.device.index or 0)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            for index in self._gpus():
                torch.cuda.synchronize(index)

    def device_info(self) -> DeviceInfo:
        if self.device.type == "cuda":
            return cuda_devices_info(self._gpus())
        return DeviceInfo("cpu", "cpu", None)

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> tuple[int | None, str]:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)), "cuda_max_allocated"
        # Linux reports ru_maxrss in KiB; it is the process's peak since start, not since the reset.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_peak_rss"

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "cuda_runtime": str(torch.version.cuda), **package_versions("transformers")}

    def engine_facts(self) -> dict[str, Any]:
        """How many CPU threads torch ran with, and who chose it."""
        return {
            "torch_threads": torch.get_num_threads(),
            "torch_threads_from": "LEM_TORCH_THREADS" if self._threads_set is not None else "torch's default",
        }
