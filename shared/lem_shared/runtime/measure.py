"""The measurement protocol, run inside the engine host: load or reuse, warm up, then a timed window."""

from __future__ import annotations

import random
import time

from lem_shared.config import ExperimentConfig, SyntheticWorkload
from lem_shared.contracts import BatchTiming, Measurement
from lem_shared.runtime.adapter import EngineAdapter
from lem_shared.runtime.environment import environment_snapshot

# Token ids below this are left out of synthetic prompts: tokenizers keep their special tokens there.
FIRST_ORDINARY_TOKEN = 10


def synthetic_prompts(workload: SyntheticWorkload, vocab_size: int) -> list[list[int]]:
    """Seeded random token ids, exactly ``input_len`` long, so every engine sees the same work."""
    rng = random.Random(workload.seed)
    high = max(vocab_size - 1, FIRST_ORDINARY_TOKEN)
    return [
        [rng.randint(FIRST_ORDINARY_TOKEN, high) for _ in range(workload.input_len)]
        for _ in range(workload.num_prompts)
    ]


class EngineError(RuntimeError):
    """The engine did not do the work asked of it."""


class MeasurementRuntime:
    def __init__(self, adapter: EngineAdapter):
        self.adapter = adapter
        self._loaded: tuple[str, str, str] | None = None

    def measure(self, experiment: ExperimentConfig) -> Measurement:
        key = (experiment.backend.value, experiment.model, experiment.dtype)
        reused = key == self._loaded
        load_started = time.perf_counter()
        if not reused:
            if self._loaded is not None:
                self.adapter.unload()
                self._loaded = None
            self.adapter.load(experiment)
            self._loaded = key
        model_load_s = time.perf_counter() - load_started

        workload = experiment.workload
        prompts = synthetic_prompts(workload, self.adapter.vocab_size())
        batches = [prompts[i : i + experiment.batch_size] for i in range(0, len(prompts), experiment.batch_size)]
        for i in range(experiment.warmup_batches):
            self.adapter.generate(batches[i % len(batches)], experiment)

        self.adapter.synchronize()
        self.adapter.reset_peak_memory()
        timings: list[BatchTiming] = []
        window_start = time.time()
        for index, batch in enumerate(batches):
            began = time.perf_counter()
            generation = self.adapter.generate(batch, experiment)
            latency = time.perf_counter() - began
            expected = len(batch) * workload.output_len
            if generation.output_tokens != expected:
                raise EngineError(f"batch {index} produced {generation.output_tokens} tokens, expected {expected}")
            timings.append(
                BatchTiming(
                    batch_index=index,
                    batch_size=len(batch),
                    input_tokens=len(batch) * workload.input_len,
                    output_tokens=generation.output_tokens,
                    latency_s=latency,
                    ttft_s=generation.ttft_s,
                )
            )
        self.adapter.synchronize()
        window_end = time.time()

        info = self.adapter.device_info()
        peak, peak_kind = self.adapter.peak_memory()
        return Measurement(
            device=info.device,
            device_name=info.name,
            gpu_uuid=info.gpu_uuid,
            model_load_s=model_load_s,
            model_reused=reused,
            warmup_batches=experiment.warmup_batches,
            window_start=window_start,
            window_end=window_end,
            batches=timings,
            peak_memory_bytes=peak,
            peak_memory_kind=peak_kind,
            environment=environment_snapshot(info, self.adapter.versions()),
        )
