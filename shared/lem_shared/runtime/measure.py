"""The measurement protocol, run inside the engine host: load or reuse, warm up, then a timed window."""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from lem_shared.config.presets import random_preset
from lem_shared.config.schema import ExperimentConfig, Workload
from lem_shared.runtime.adapter import ArrivingRequest, EngineAdapter, FlopCounter, ServingEngine
from lem_shared.runtime.edges import EdgeMeter, nvml_edge_meter
from lem_shared.runtime.environment import environment_snapshot
from lem_shared.settings import get_settings
from lem_shared.wire.messages import BatchTiming, Measurement, PrefillWindow, ServingTrace, Warmup, WindowEdges
from lem_shared.workload.arrivals import arrival_times
from lem_shared.workload.prompts import load_prompts
from lem_shared.workload.tokenizer import tokenizer_for

# Token ids below this are left out of synthetic prompts: tokenizers keep their special tokens there.
FIRST_ORDINARY_TOKEN = 10


def synthetic_prompts(workload: Workload, vocab_size: int) -> list[list[int]]:
    """Seeded random token ids, exactly ``input_len`` long, so every engine sees the same work."""
    rng = random.Random(workload.seed)
    high = max(vocab_size - 1, FIRST_ORDINARY_TOKEN)
    return [
        [rng.randint(FIRST_ORDINARY_TOKEN, high) for _ in range(workload.input_len)]
        for _ in range(workload.num_prompts)
    ]


class EngineError(RuntimeError):
    """The engine did not do the work asked of it."""


def workload_prompts(experiment: ExperimentConfig, vocab_size: int) -> list[tuple[list[int], int]]:
    """Each prompt's token ids and forced output length: seeded random ids (synthetic), or real text sampled
    from the dataset and tokenised by the model's tokenizer (the offline BPE for ``random:*`` presets)."""
    workload = experiment.workload
    if workload.kind == "synthetic":
        return [(prompt, workload.output_len) for prompt in synthetic_prompts(workload, vocab_size)]
    assert workload.source is not None  # the schema requires it for a dataset
    try:
        prompts = load_prompts(
            workload.source,
            tokenizer=tokenizer_for(experiment.model, vocab_size),
            count=workload.num_prompts,
            seed=workload.seed,
            max_input_len=workload.input_len,
            max_output_len=workload.output_len,
            forced_output_len=workload.output_len if workload.output_lengths == "forced" else None,
        )
    except ValueError as exc:
        raise EngineError(f"workload: {exc}") from None
    return [(list(p.input_ids), p.output_len) for p in prompts]


def arriving_requests(experiment: ExperimentConfig, prompts: list[tuple[list[int], int]]) -> list[ArrivingRequest]:
    """The serving workload: each prompt with its arrival time (seeded Poisson/gamma, or all at once)."""
    workload = experiment.workload
    rate = workload.request_rate if workload.request_rate is not None else math.inf
    times = arrival_times(len(prompts), rate, workload.burstiness, seed=workload.seed % (1 << 63))
    return [
        ArrivingRequest(index=i, input_ids=ids, output_len=length, arrival_s=at)
        for i, ((ids, length), at) in enumerate(zip(prompts, times, strict=True))
    ]


def refuse_remote_code(experiment: ExperimentConfig) -> None:
    """A campaign never runs code on a worker: ``trust_remote_code`` only where this host's operator allows it."""
    fields = experiment.section().remote_code_fields()
    if fields and not get_settings().allow_remote_code:
        raise EngineError(
            f"{', '.join(fields)}: true would run the model repository's own code on this worker "
            "host, which does not allow it (its operator may set LEM_ALLOW_REMOTE_CODE=true)"
        )


def coefficient_of_variation(values: list[float]) -> float:
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if len(values) > 1 and mean > 0 else float("inf")


class MeasurementRuntime:
    def __init__(self, adapter: EngineAdapter, edge_meter: Callable[[list[str]], EdgeMeter | None] = nvml_edge_meter):
        self.adapter = adapter
        self._loaded: str | None = None
        self._make_edge_meter = edge_meter
        self._edge_meter: EdgeMeter | None = None
        self._edge_gpus: list[str] | None = None

    def _edges(self) -> EdgeMeter | None:
        """The meter that reads the run's GPUs at window edges, opened once for the GPUs this engine uses."""
        gpus = list(self.adapter.device_info().gpu_uuids)  # a run on several GPUs reads each of them
        if gpus != self._edge_gpus:
            if self._edge_meter is not None:
                self._edge_meter.close()
            self._edge_meter, self._edge_gpus = self._make_edge_meter(gpus), gpus
        return self._edge_meter

    def _idle(self, seconds: float) -> tuple[float, float] | None:
        """Leave the device idle for ``seconds`` and return the span, for telemetry to measure idle power."""
        if seconds <= 0:
            return None
        start = time.time()
        time.sleep(seconds)
        return start, time.time()

    def _warm_up(self, batches: list[list[list[int]]], experiment: ExperimentConfig) -> Warmup:
        """Repeat batches until the CV of the last k latencies is under the threshold (never counted)."""
        return self._until_steady(lambda i: self.adapter.generate(batches[i % len(batches)], experiment), experiment)

    def _until_steady(self, run_once: Callable[[int], object], experiment: ExperimentConfig) -> Warmup:
        """Call ``run_once(i)`` until the CV of the last k durations is under the threshold, or the cap."""
        protocol = experiment.measurement
        latencies: list[float] = []
        cv: float | None = None
        while len(latencies) < protocol.warmup_max:
            began = time.perf_counter()
            run_once(len(latencies))
            latencies.append(time.perf_counter() - began)
            if len(latencies) >= protocol.warmup_window:
                cv = coefficient_of_variation(latencies[-protocol.warmup_window :])
                if len(latencies) >= protocol.warmup_min and cv < protocol.warmup_cv:
                    return Warmup(iterations=len(latencies), converged=True, final_cv=cv, latencies_s=latencies)
        return Warmup(iterations=len(latencies), converged=False, final_cv=cv, latencies_s=latencies)

    def measure(self, experiment: ExperimentConfig, deep_idle_s: float = 0.0) -> Measurement:
        """Deep idle (first run of a campaign on a GPU), load or reuse, warm up, idle, window, idle."""
        refuse_remote_code(experiment)
        protocol = experiment.measurement
        if protocol.profiler == "flops" and not isinstance(self.adapter, FlopCounter):
            raise EngineError(
                f"measurement.profiler: flops, but the {type(self.adapter).__name__} engine adapter "
                "cannot count FLOPs; set profiler: off (or use the pytorch backend)"
            )
        on_gpu = self.adapter.device_info().gpu_uuid is not None
        # Idle spans exist to be measured by GPU telemetry; on a CPU there is nothing to measure them with.
        deep_idle = self._idle(deep_idle_s if on_gpu else 0.0)

        key = experiment.engine_key()
        reused = key == self._loaded
        load_started, load_wall = time.perf_counter(), time.time()
        if not reused:
            if self._loaded is not None:
                self.adapter.unload()
                self._loaded = None
            self.adapter.load(experiment)
            self._loaded = key
        model_load_s = time.perf_counter() - load_started

        workload = experiment.workload
        pairs = workload_prompts(experiment, self.adapter.vocab_size())
        serving: ServingTrace | None = None
        if workload.mode == "serving":
            requests = arriving_requests(experiment, pairs)
            warmup = self._warm_up_serving(requests, experiment)
            self.adapter.synchronize()
            idle_before = self._idle(protocol.idle_gap_s if on_gpu else 0.0)
            self.adapter.reset_peak_memory()
            window_start, window_end, serving, edges = self._serve_window(requests, experiment)
            passes = 1
            timings: list[BatchTiming] = []
            batches: list[list[list[int]]] = []
        else:
            prompts = [ids for ids, _ in pairs]
            size = experiment.batch_size
            batches = [prompts[i : i + size] for i in range(0, len(prompts), size)]
            warmup = self._warm_up(batches, experiment)
            self.adapter.synchronize()
            idle_before = self._idle(protocol.idle_gap_s if on_gpu else 0.0)
            self.adapter.reset_peak_memory()
            window_start, window_end, passes, timings, edges = self._window(batches, experiment)
        idle_after = self._idle(protocol.idle_gap_s if on_gpu else 0.0)
        peak, peak_kind = self.adapter.peak_memory()

        prefill = None
        if protocol.phase_split:  # the same batches with one new token each, warmed up and measured apart
            only_prefill = experiment.model_copy(update={"workload": workload.model_copy(update={"output_len": 1})})
            prefill_warmup = self._warm_up(batches, only_prefill)
            self.adapter.synchronize()
            prefill_idle_before = self._idle(protocol.idle_gap_s if on_gpu else 0.0)
            start, end, prefill_passes, prefill_timings, prefill_edges = self._window(batches, only_prefill)
            prefill = PrefillWindow(
                warmup_iterations=prefill_warmup.iterations,
                idle_before=prefill_idle_before,
                window_start=start,
                window_end=end,
                passes=prefill_passes,
                batches=prefill_timings,
                idle_after=self._idle(protocol.idle_gap_s if on_gpu else 0.0),
                edges=prefill_edges,
            )
        flops_counted = None  # counted after every window: its work is never inside one
        if protocol.profiler == "flops" and isinstance(self.adapter, FlopCounter):
            flops_counted = self.adapter.count_flops(batches[0], experiment)

        info = self.adapter.device_info()
        return Measurement(
            device=info.device,
            device_name=info.name,
            gpu_uuid=info.gpu_uuid,
            gpu_uuids=list(info.gpu_uuids),
            model_load_s=model_load_s,
            model_reused=reused,
            model_load=None if reused else (load_wall, load_wall + model_load_s),
            warmup=warmup,
            passes=passes,
            deep_idle=deep_idle,
            idle_before=idle_before,
            idle_after=idle_after,
            window_start=window_start,
            window_end=window_end,
            batches=timings,
            peak_memory_bytes=peak,
            peak_memory_kind=peak_kind,
            environment=environment_snapshot(info, self.adapter.versions(), self._engine_facts()),
            prefill=prefill,
            flops_counted=flops_counted,
            model_shape=self._model_shape(experiment),
            edges=edges,
            serving=serving,
        )

    def _server(self) -> ServingEngine:
        if not isinstance(self.adapter, ServingEngine):
            raise EngineError(
                f"workload.mode: serving, but the {type(self.adapter).__name__} engine adapter has no serving "
                "driver; use backend pytorch or vllm"
            )
        return self.adapter

    def _warm_up_serving(self, requests: list[ArrivingRequest], experiment: ExperimentConfig) -> Warmup:
        """Serve the first few requests at once, again and again, until their durations settle (never counted):
        the engine's kernels, graphs and KV cache are warm before the window."""
        server, cap = self._server(), experiment.workload.max_concurrency
        few = [
            ArrivingRequest(index=r.index, input_ids=r.input_ids, output_len=r.output_len, arrival_s=0.0)
            for r in requests[: min(len(requests), max(4, cap or 4))]
        ]
        return self._until_steady(lambda _: server.serve(few, experiment, cap), experiment)

    def _serve_window(
        self, requests: list[ArrivingRequest], experiment: ExperimentConfig
    ) -> tuple[float, float, ServingTrace, WindowEdges | None]:
        """One serving run as the window: every request arrives at its time and is served to its forced length.
        The window is the whole run (its steady state is found afterwards, from the engine's occupancy)."""
        server = self._server()
        meter = self._edges()
        self.adapter.synchronize()
        opened = meter.open_window() if meter else None
        window_start = opened.t if opened else time.time()
        trace = server.serve(requests, experiment, experiment.workload.max_concurrency)
        self.adapter.synchronize()
        closed = meter.close_window() if meter and opened else None
        window_end = closed.t if closed else time.time()
        served = {r.index: r for r in trace.requests}
        for request in requests:
            got = served.get(request.index)
            produced = got.output_tokens if got else 0
            if produced != request.output_len:
                raise EngineError(f"request {request.index} produced {produced} tokens, expected {request.output_len}")
        edges = WindowEdges(start=opened, end=closed) if opened and closed else None
        return window_start, window_end, trace, edges

    def _engine_facts(self) -> dict[str, Any] | None:
        """What the loaded engine really uses (JSON), from the adapter where it reads it."""
        facts = getattr(self.adapter, "engine_facts", None)
        return facts() if facts is not None else None

    def _model_shape(self, experiment: ExperimentConfig) -> dict | None:
        """The loaded model's config, from the adapter where it reads it, else a random preset's own."""
        shape = getattr(self.adapter, "model_shape", None)
        return shape() if shape is not None else random_preset(experiment.model)

    def _window(
        self, batches: list[list[list[int]]], experiment: ExperimentConfig
    ) -> tuple[float, float, int, list[BatchTiming], WindowEdges | None]:
        """Run whole passes over the batches until the window lasts ``min_window_s``: (start, end, passes,
        timings, edge reads). Every batch must produce exactly its forced number of tokens. The device is
        synchronised at both edges and, on a GPU, every counter is read there (outside the window's time)."""
        workload = experiment.workload
        timings: list[BatchTiming] = []
        passes = 0
        meter = self._edges()
        self.adapter.synchronize()
        opened = meter.open_window() if meter else None
        window_start = opened.t if opened else time.time()
        while True:
            for batch in batches:
                began = time.perf_counter()
                generation = self.adapter.generate(batch, experiment)
                latency = time.perf_counter() - began
                expected = len(batch) * workload.output_len * experiment.section().completions_per_prompt()
                if generation.output_tokens != expected:
                    raise EngineError(
                        f"batch {len(timings)} produced {generation.output_tokens} tokens, expected {expected}"
                    )
                timings.append(
                    BatchTiming(
                        batch_index=len(timings),
                        batch_size=len(batch),
                        input_tokens=sum(len(prompt) for prompt in batch),
                        output_tokens=generation.output_tokens,
                        latency_s=latency,
                        ttft_s=generation.ttft_s,
                        request_ttfts_s=generation.request_ttfts_s,
                        kv_cache_usage_peak=generation.kv_cache_usage_peak,
                        kv_cache_usage_mean=generation.kv_cache_usage_mean,
                        preemptions=generation.preemptions,
                    )
                )
            passes += 1
            if time.time() - window_start >= experiment.measurement.min_window_s:
                break
        self.adapter.synchronize()
        if meter is None or opened is None:
            return window_start, time.time(), passes, timings, None
        closed = meter.close_window()
        return window_start, closed.t, passes, timings, WindowEdges(start=opened, end=closed)
