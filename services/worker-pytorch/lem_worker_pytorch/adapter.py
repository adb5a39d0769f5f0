"""HF transformers engine adapter: ``generate`` with a forced output length, on CUDA where present, else CPU.

``random:NAME`` builds a Llama of a preset shape with random weights (no download); any other model name is
a hub id or a local folder, loaded with ``from_pretrained`` exactly as users with the network expect.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

from lem_shared.config import ExperimentConfig
from lem_shared.environment import package_versions
from lem_shared.model_presets import random_preset
from lem_shared.runtime.adapter import DeviceInfo, Generation
from lem_shared.runtime.engine_support import cuda_device_info

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _FirstTokenClock(BaseStreamer):
    """Notes when generate hands over the first new token (its first ``put`` is the prompt)."""

    def __init__(self, device: torch.device):
        self.device, self.puts, self.first_token_at = device, 0, None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TransformersAdapter:
    def __init__(self, device: str):
        self.device = _resolve_device(device)
        self.model: Any = None

    def _dtype(self, experiment: ExperimentConfig) -> torch.dtype:
        if experiment.dtype == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else torch.float32
        return DTYPES[experiment.dtype]

    def load(self, experiment: ExperimentConfig) -> None:
        dtype = self._dtype(experiment)
        preset = random_preset(experiment.model)
        if preset is not None:
            config = LlamaConfig(**{k: bool(v) if k == "tie_word_embeddings" else v for k, v in preset.items()})
            torch.manual_seed(0)
            with torch.device(self.device):
                model = LlamaForCausalLM(config).to(dtype)
        else:
            try:
                model = AutoModelForCausalLM.from_pretrained(experiment.model, dtype=dtype).to(self.device)
            except OSError as exc:
                reason = str(exc).split(". ")[0]
                message = f"cannot load model {experiment.model!r} (hub id or local folder): {reason}"
                raise RuntimeError(message) from exc
        model.eval()
        model.generation_config.pad_token_id = model.generation_config.pad_token_id or 0
        self.model = model

    def unload(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], experiment: ExperimentConfig) -> Generation:
        input_ids = torch.tensor(prompts, dtype=torch.long, device=self.device)
        new_tokens = experiment.workload.output_len
        clock = _FirstTokenClock(self.device)
        started = time.perf_counter()
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # forced output length: an early EOS cannot change the work
            do_sample=False,
            cache_implementation=experiment.pytorch.cache_implementation,
            streamer=clock,
        )
        self.synchronize()
        generated = int(output.shape[0] * (output.shape[1] - input_ids.shape[1]))
        ttft = clock.first_token_at - started if clock.first_token_at is not None else None
        return Generation(output_tokens=generated, ttft_s=ttft)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def device_info(self) -> DeviceInfo:
        if self.device.type == "cuda":
            return cuda_device_info(self.device.index or 0)
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
