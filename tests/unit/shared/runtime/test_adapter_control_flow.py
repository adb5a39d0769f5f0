"""The vLLM and TensorRT-LLM adapters' own ``load`` / ``vocab_size`` / ``generate`` / ``unload`` / ``versions``, the
measurement runtime around them and the engine host around that, run against STAND-IN engines.

``tests/stand_in_engines`` holds packages named ``vllm`` and ``tensorrt_llm`` that are NOT vLLM or TensorRT-LLM
(each module's docstring starts with "STAND-IN"): they take only the API the adapters call, check every keyword
argument against the committed parameter snapshot, generate token ids, and record what they received. Neither
engine can be installed here, so these tests check the adapters' control flow and what reaches the engine, not
the engines. ``tests/gpu`` in the worker images is what runs the real ones.

The stand-ins are importable only inside the ``engines`` fixture: it puts the folder on ``sys.path`` and takes it
and the imported modules away again, so the tests that check vLLM is *not* installed here still see it missing.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lem_shared.config.presets import random_preset
from lem_shared.config.schema import ExperimentConfig
from lem_shared.measure.metrics import run_metrics
from lem_shared.runtime.engine_host import EngineFailure, EngineHost
from lem_shared.runtime.engine_support import RANDOM_MODEL_EOS_ID, llama_hf_config
from lem_shared.runtime.measure import EngineError, MeasurementRuntime, synthetic_prompts

STAND_INS = Path(__file__).resolve().parents[3] / "stand_in_engines"
STAND_IN_MODULES = ("vllm", "tensorrt_llm", "_stand_in", "stand_in_adapters")
REAL_ENGINE = any(importlib.util.find_spec(name) is not None for name in ("vllm", "tensorrt_llm"))

pytestmark = pytest.mark.skipif(
    REAL_ENGINE, reason="a real engine is installed here; the stand-ins would shadow it (tests/gpu runs the real one)"
)

MEASUREMENT = {"warmup_window": 2, "warmup_min": 0, "warmup_max": 2, "min_window_s": 0}
WORKLOAD = {"num_prompts": 4, "input_len": 8, "output_len": 5}


@dataclass
class Engines:
    vllm: ModuleType
    trtllm: ModuleType
    adapters: ModuleType
    faults: Path  # lines "<load|generate> <raise|hang|exit>" make the stand-ins fail there

    def fail(self, point: str, action: str) -> None:
        self.faults.write_text(f"{point} {action}\n")

    def heal(self) -> None:
        self.faults.unlink(missing_ok=True)


def _forget_stand_ins() -> None:
    for name in list(sys.modules):
        if name.partition(".")[0] in STAND_IN_MODULES:
            del sys.modules[name]


@pytest.fixture
def engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engines]:
    faults = tmp_path / "stand-in-faults"
    monkeypatch.setenv("STAND_IN_ENGINE_FAULTS", str(faults))
    sys.path.insert(0, str(STAND_INS))
    importlib.invalidate_caches()
    try:
        vllm = importlib.import_module("vllm")
        trtllm = importlib.import_module("tensorrt_llm")
        assert vllm.STAND_IN and trtllm.STAND_IN
        yield Engines(vllm, trtllm, importlib.import_module("stand_in_adapters"), faults)
    finally:
        sys.path.remove(str(STAND_INS))
        _forget_stand_ins()
        importlib.invalidate_caches()
    assert importlib.util.find_spec("vllm") is None and importlib.util.find_spec("tensorrt_llm") is None


def vllm_experiment(**section: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "backend": "vllm",
            "model": "random:llama-tiny",
            "batch_size": 2,
            "workload": WORKLOAD,
            "measurement": MEASUREMENT,
            "vllm": section,
        }
    )


def trtllm_experiment(**section: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "backend": "trtllm",
            "model": "random:llama-tiny",
            "batch_size": 2,
            "workload": WORKLOAD,
            "measurement": MEASUREMENT,
            "trtllm": section,
        }
    )


VLLM_SECTION: dict[str, Any] = {
    "engine": {"max_num_seqs": 16, "gpu_memory_utilization": 0.5, "enable_prefix_caching": True, "max_model_len": 64},
    "sampling": {"temperature": 0.8, "top_p": 0.9, "n": 2, "seed": 7},
    "extra": {"engine.enable_sleep_mode": False, "sampling.skip_special_tokens": False},
}
TRTLLM_SECTION: dict[str, Any] = {
    "engine": {
        "max_batch_size": 8,
        "max_seq_len": 64,
        "cuda_graph_config": {"max_batch_size": 8, "enable_padding": True},
        "scheduler_config": {"capacity_scheduler_policy": "GUARANTEED_NO_EVICT"},
        "speculative_config": {"decoding_type": "NGram", "max_draft_len": 4, "max_matching_ngram_size": 2},
    },
    "kv_cache": {"free_gpu_memory_fraction": 0.5, "tokens_per_block": 64},
    "sampling": {"temperature": 0.8, "top_k": 20, "n": 2, "seed": 3},
    "extra": {
        "engine.enable_iter_perf_stats": True,
        "kv_cache.event_buffer_max_size": 0,
        "sampling.skip_special_tokens": False,
    },
}


def calls(module: ModuleType, name: str) -> list[dict[str, Any]]:
    return [call.kwargs for call in module.CALLS if call.name == name]


def first_batch(experiment: ExperimentConfig, vocab_size: int) -> list[list[int]]:
    return synthetic_prompts(experiment.workload, vocab_size)[: experiment.batch_size]


# --- the stand-ins themselves ---------------------------------------------------------------------------------


def test_the_stand_ins_say_what_they_are_and_carry_the_snapshots_versions(engines: Engines) -> None:
    snapshots = Path(__file__).resolve().parents[4] / "shared" / "lem_shared" / "params" / "snapshots"
    for module, prefix, backend in (
        (engines.vllm, "STAND-IN, not vLLM:", "vllm"),
        (engines.trtllm, "STAND-IN, not TensorRT-LLM:", "trtllm"),
    ):
        newest = sorted(snapshots.glob(f"{backend}-*.json"))[-1]
        assert module.__version__ == json.loads(newest.read_text())["engine_version"]
        for path in Path(module.__file__).parent.rglob("*.py"):
            text = path.read_text()
            assert text.startswith(f'"""{prefix}'), f"{path} does not say it is a stand-in"


def test_the_stand_ins_refuse_what_the_snapshot_does_not_name(engines: Engines, tmp_path: Path) -> None:
    vllm, trtllm = engines.vllm, engines.trtllm
    KvCacheConfig = trtllm.llmapi.KvCacheConfig
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_num_seq'"):
        vllm.LLM(model=str(tmp_path), max_num_seq=16)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_token'"):
        vllm.SamplingParams(max_token=4)
    with pytest.raises(TypeError, match="temperature must be float"):
        vllm.SamplingParams(temperature="0.7")
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_num_seqs'"):
        trtllm.LLM(model=str(tmp_path), max_num_seqs=16)  # a vLLM name
    with pytest.raises(TypeError, match="missing 1 required keyword argument: 'model'"):
        trtllm.LLM(dtype="auto")
    with pytest.raises(TypeError, match="unexpected keyword argument 'enable_block_reus'"):
        KvCacheConfig(enable_block_reus=False)
    with pytest.raises(TypeError, match="kv_cache_config must be a KvCacheConfig"):
        trtllm.LLM(model=str(tmp_path), kv_cache_config=0.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'stop_tokens'"):
        trtllm.SamplingParams(stop_tokens=[2])
    with pytest.raises(OSError, match="not a local folder with a config.json"):
        vllm.LLM(model=str(tmp_path / "missing"))


# --- vLLM -----------------------------------------------------------------------------------------------------


def test_vllm_adapter_load_generate_unload_passes_exactly_its_mapping(engines: Engines) -> None:
    from lem_worker_vllm.adapter import VllmAdapter, engine_kwargs, sampling_kwargs

    vllm = engines.vllm
    experiment = vllm_experiment(**VLLM_SECTION)
    adapter = VllmAdapter("auto")
    adapter.load(experiment)

    (llm_kwargs,) = calls(vllm, "LLM")
    model_dir = Path(llm_kwargs["model"])
    assert llm_kwargs == engine_kwargs(experiment, str(model_dir))
    assert llm_kwargs["max_num_seqs"] == 16 and llm_kwargs["enable_prefix_caching"] is True
    assert llm_kwargs["enable_sleep_mode"] is False  # the extra reached the engine
    assert llm_kwargs["load_format"] == "dummy" and llm_kwargs["skip_tokenizer_init"] is True
    assert llm_kwargs["disable_log_stats"] is False
    written = json.loads((model_dir / "config.json").read_text())
    assert written == llama_hf_config(experiment.model, "bfloat16")
    assert adapter.vocab_size() == random_preset(experiment.model)["vocab_size"]

    batch = first_batch(experiment, adapter.vocab_size())
    generation = adapter.generate(batch, experiment)
    (sampling,) = calls(vllm, "SamplingParams")
    assert sampling == sampling_kwargs(experiment)
    assert sampling["n"] == 2 and sampling["skip_special_tokens"] is False and sampling["max_tokens"] == 5
    (request,) = calls(vllm, "generate")
    assert request["prompts"] == [{"prompt_token_ids": prompt} for prompt in batch]
    assert request["use_tqdm"] is False
    assert generation.output_tokens == len(batch) * experiment.workload.output_len * 2
    # The stand-in's request i has its first token (i + 1) x FIRST_TOKEN_LATENCY_S after the batch arrived; the
    # adapter measures from just before generate, so the batch's TTFT is at least the last request's latency.
    latest = len(batch) * vllm.FIRST_TOKEN_LATENCY_S
    assert generation.ttft_s is not None and latest <= generation.ttft_s < latest + 0.5
    # Each request's own TTFT, as vLLM's RequestStateStats.first_token_latency gives it.
    assert generation.request_ttfts_s == [(i + 1) * vllm.FIRST_TOKEN_LATENCY_S for i in range(len(batch))]
    # KV usage from the engine's per-step scheduler stats: 8 + 5 tokens fit one block; 2 prompts x n = 2 sequences.
    assert generation.kv_cache_usage_peak == pytest.approx(4 / vllm.NUM_GPU_BLOCKS)
    assert generation.kv_cache_usage_mean == pytest.approx(4 / vllm.NUM_GPU_BLOCKS)
    assert generation.preemptions == 0
    facts = adapter.engine_facts()
    assert facts is not None and json.loads(json.dumps(facts)) == facts
    assert facts["num_gpu_blocks"] == vllm.NUM_GPU_BLOCKS and facts["block_size"] == vllm.BLOCK_SIZE
    assert facts["kv_cache_tokens"] == vllm.NUM_GPU_BLOCKS * vllm.BLOCK_SIZE
    assert facts["gpu_memory_utilization"] == 0.5  # the section's engine argument, as the engine holds it
    assert facts["compilation_mode"] == "VLLM_COMPILE" and facts["cudagraph_mode"] == "FULL_AND_PIECEWISE"
    assert facts["cudagraph_capture_sizes"] == vllm.CUDAGRAPH_CAPTURE_SIZES
    assert facts["flashinfer_sampler"]["value"] == os.environ.get("VLLM_USE_FLASHINFER_SAMPLER")
    assert facts["attention_backend"] is None and "attention_backend" in facts["unavailable"]

    adapter.unload()
    assert adapter.engine_facts() is None
    assert [call.name for call in vllm.CALLS][-2:] == ["LLM deleted", "cleanup_dist_env_and_memory"]
    assert not model_dir.exists()
    with pytest.raises(RuntimeError, match="no model loaded"):
        adapter.vocab_size()


def test_vllm_adapter_reads_a_local_models_vocabulary_from_the_engine(engines: Engines, tmp_path: Path) -> None:
    from lem_worker_vllm.adapter import VllmAdapter

    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({**llama_hf_config("random:llama-tiny", "float16"), "vocab_size": 321})
    )
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    experiment = ExperimentConfig.model_validate({"backend": "vllm", "model": str(folder), "workload": WORKLOAD})
    adapter = VllmAdapter("auto")
    adapter.load(experiment)
    (llm_kwargs,) = calls(engines.vllm, "LLM")
    assert llm_kwargs["model"] == str(folder) and llm_kwargs["dtype"] == "auto"
    assert "load_format" not in llm_kwargs and "skip_tokenizer_init" not in llm_kwargs
    assert adapter.vocab_size() == 321
    adapter.unload()
    assert folder.exists()  # the user's folder is not the adapter's to delete


def test_vllm_adapter_cleans_up_when_the_engine_fails_to_load(engines: Engines) -> None:
    from lem_worker_vllm.adapter import VllmAdapter

    engines.fail("load", "raise")
    adapter = VllmAdapter("auto")
    with pytest.raises(RuntimeError, match="stand-in engine failure in load"):
        adapter.load(vllm_experiment())
    (llm_kwargs,) = calls(engines.vllm, "LLM")
    assert not Path(llm_kwargs["model"]).exists()
    assert calls(engines.vllm, "cleanup_dist_env_and_memory") == [{"shutdown_ray": False}]


def test_vllm_versions_report_distributions_so_a_stand_in_is_never_recorded_as_vllm(engines: Engines) -> None:
    from lem_worker_vllm.adapter import VllmAdapter

    assert engines.vllm.__version__  # the stand-in module names the snapshot's version, but versions() reads
    assert VllmAdapter("auto").versions()["vllm"] == "not installed"  # distribution metadata, which it has none of


# --- TensorRT-LLM ---------------------------------------------------------------------------------------------


def test_trtllm_adapter_load_generate_unload_passes_exactly_its_mapping(engines: Engines) -> None:
    from lem_worker_trt.adapter import TrtLlmAdapter, engine_kwargs, sampling_kwargs

    trtllm = engines.trtllm
    llm_args = trtllm.llmapi.llm_args
    experiment = trtllm_experiment(**TRTLLM_SECTION)
    adapter = TrtLlmAdapter("auto")
    adapter.load(experiment)

    (llm_kwargs,) = calls(trtllm, "LLM")
    model_dir = Path(llm_kwargs["model"])
    expected = engine_kwargs(experiment, str(model_dir))
    nested = {
        "kv_cache_config": llm_args.KvCacheConfig,
        "cuda_graph_config": llm_args.CudaGraphConfig,
        "scheduler_config": llm_args.SchedulerConfig,
        "speculative_config": llm_args.NGramDecodingConfig,
    }
    for key, cls in nested.items():  # built into the engine's config objects, with the section's fields
        assert type(llm_kwargs[key]) is cls, key
        fields = dict(expected[key])
        fields.pop("decoding_type", None)
        assert llm_kwargs[key].fields == fields, key
    assert llm_kwargs["kv_cache_config"].fields == {
        "enable_block_reuse": False,
        "free_gpu_memory_fraction": 0.5,
        "tokens_per_block": 64,
        "event_buffer_max_size": 0,
    }
    assert {k: v for k, v in llm_kwargs.items() if k not in nested} == {
        k: v for k, v in expected.items() if k not in nested
    }
    assert llm_kwargs["enable_iter_perf_stats"] is True and llm_kwargs["return_perf_metrics"] is True
    assert llm_kwargs["load_format"] == "dummy" and llm_kwargs["skip_tokenizer_init"] is True
    assert adapter.vocab_size() == random_preset(experiment.model)["vocab_size"]

    batch = first_batch(experiment, adapter.vocab_size())
    generation = adapter.generate(batch, experiment)
    (sampling,) = calls(trtllm, "SamplingParams")
    assert sampling == sampling_kwargs(experiment)
    assert sampling["end_id"] == RANDOM_MODEL_EOS_ID and sampling["n"] == 2 and sampling["top_k"] == 20
    (request,) = calls(trtllm, "generate")
    assert request["inputs"] == [{"prompt_token_ids": prompt} for prompt in batch]
    assert request["use_tqdm"] is False
    # Every completion counts: n = 2 sequences of output_len tokens per prompt.
    assert generation.output_tokens == len(batch) * experiment.workload.output_len * 2
    assert experiment.section().completions_per_prompt() == 2
    assert generation.ttft_s == pytest.approx(len(batch) * trtllm.FIRST_TOKEN_LATENCY_S)

    adapter.unload()
    names = [call.name for call in trtllm.CALLS]
    assert names.count("shutdown") == 1 and names[-2:] == ["shutdown", "LLM deleted"]
    assert not model_dir.exists()
    with pytest.raises(RuntimeError, match="no model loaded"):
        adapter.vocab_size()
    adapter.unload()  # a second unload has nothing left to shut down
    assert [call.name for call in trtllm.CALLS].count("shutdown") == 1


def test_trtllm_cuda_graphs_off_reach_the_engine_as_none(engines: Engines) -> None:
    from lem_worker_trt.adapter import TrtLlmAdapter

    adapter = TrtLlmAdapter("auto")
    adapter.load(trtllm_experiment(engine={"cuda_graph_config": False}))
    (llm_kwargs,) = calls(engines.trtllm, "LLM")
    assert "cuda_graph_config" in llm_kwargs and llm_kwargs["cuda_graph_config"] is None
    adapter.unload()


def test_trtllm_adapter_reads_a_local_models_vocabulary_from_its_config(engines: Engines, tmp_path: Path) -> None:
    from lem_worker_trt.adapter import TrtLlmAdapter

    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({**llama_hf_config("random:llama-tiny", "float16"), "vocab_size": 321})
    )
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    experiment = ExperimentConfig.model_validate({"backend": "trtllm", "model": str(folder), "workload": WORKLOAD})
    adapter = TrtLlmAdapter("auto")
    adapter.load(experiment)
    (llm_kwargs,) = calls(engines.trtllm, "LLM")
    assert "load_format" not in llm_kwargs and "skip_tokenizer_init" not in llm_kwargs
    assert adapter.vocab_size() == 321
    # A hub model keeps its tokenizer's end id: the adapter names none, and the stand-in accepts that.
    generation = adapter.generate(first_batch(experiment, 321), experiment)
    assert "end_id" not in calls(engines.trtllm, "SamplingParams")[0]
    assert generation.output_tokens == experiment.batch_size * experiment.workload.output_len
    adapter.unload()


def test_trtllm_adapter_cleans_up_when_the_engine_fails_to_load(engines: Engines) -> None:
    from lem_worker_trt.adapter import TrtLlmAdapter

    engines.fail("load", "raise")
    adapter = TrtLlmAdapter("auto")
    with pytest.raises(RuntimeError, match="stand-in engine failure in load"):
        adapter.load(trtllm_experiment())
    (llm_kwargs,) = calls(engines.trtllm, "LLM")
    assert not Path(llm_kwargs["model"]).exists()
    assert calls(engines.trtllm, "shutdown") == []  # no engine was made, so none is shut down


def test_trtllm_versions_report_distributions_so_a_stand_in_is_never_recorded_as_trtllm(engines: Engines) -> None:
    from lem_worker_trt.adapter import TrtLlmAdapter

    assert TrtLlmAdapter("auto").versions()["tensorrt_llm"] == "not installed"


# --- the measurement runtime, on the CPU ----------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "section"), [("vllm", VLLM_SECTION), ("trtllm", TRTLLM_SECTION)])
def test_the_runtime_measures_through_each_adapter_end_to_end(
    engines: Engines, backend: str, section: dict[str, Any]
) -> None:
    adapter_class = {"vllm": engines.adapters.CpuVllmAdapter, "trtllm": engines.adapters.CpuTrtLlmAdapter}[backend]
    engine = {"vllm": engines.vllm, "trtllm": engines.trtllm}[backend]
    build = {"vllm": vllm_experiment, "trtllm": trtllm_experiment}[backend]
    experiment = build(**section)
    runtime = MeasurementRuntime(adapter_class("auto"))

    m = runtime.measure(experiment)
    per_batch = experiment.batch_size * experiment.workload.output_len * 2  # n = 2
    assert [b.output_tokens for b in m.batches] == [per_batch, per_batch]
    assert [b.input_tokens for b in m.batches] == [experiment.batch_size * experiment.workload.input_len] * 2
    assert all(b.ttft_s is not None and b.ttft_s > 0 for b in m.batches)
    assert m.warmup.iterations == 2 and not m.model_reused and m.model_load is not None
    assert m.device == "cpu" and m.gpu_uuid is None and m.idle_before is None
    assert m.peak_memory_bytes is None and m.peak_memory_kind.startswith("unavailable")
    engine_versions = m.environment["engine_versions"]
    assert engine_versions[engine.__name__] == "not installed"
    metrics = run_metrics(m)
    if backend == "vllm":  # the engine's facts reach the run's environment, its request stats the run's metrics
        assert m.environment["engine"]["kv_cache_tokens"] == engine.NUM_GPU_BLOCKS * engine.BLOCK_SIZE
        assert all(b.request_ttfts_s is not None and len(b.request_ttfts_s) == b.batch_size for b in m.batches)
        assert metrics["ttft_mean_s"] == pytest.approx(1.5 * engine.FIRST_TOKEN_LATENCY_S)  # requests 1 and 2
        assert metrics["kv_cache_usage_peak"] == pytest.approx(4 / engine.NUM_GPU_BLOCKS)
        assert metrics["preemptions"] == 0
    else:
        assert "engine" not in m.environment and metrics["kv_cache_usage_peak"] is None
    # Warm-up and window together: 2 warm-up batches and 2 measured ones, all with the experiment's sampling.
    assert len(calls(engine, "generate")) == 4 and len(calls(engine, "LLM")) == 1

    # Same engine key (only sampling differs): the loaded engine is reused.
    resampled = build(**{**section, "sampling": {**section["sampling"], "seed": 11}})
    again = runtime.measure(resampled)
    assert again.model_reused and again.model_load is None and len(calls(engine, "LLM")) == 1
    assert calls(engine, "SamplingParams")[-1]["seed"] == 11

    # A different engine key: the old engine is unloaded before the new one is loaded.
    plain = build()
    third = runtime.measure(plain)
    assert not third.model_reused and len(calls(engine, "LLM")) == 2
    names = [call.name for call in engine.CALLS]
    teardown = "cleanup_dist_env_and_memory" if backend == "vllm" else "shutdown"
    assert names.index(teardown) < len(names) - names[::-1].index("LLM") - 1
    assert [b.output_tokens for b in third.batches] == [experiment.batch_size * experiment.workload.output_len] * 2
    runtime.adapter.unload()
    gc.collect()


@pytest.mark.parametrize("backend", ["vllm", "trtllm"])
def test_an_engine_failing_in_generate_fails_the_measurement(engines: Engines, backend: str) -> None:
    adapter_class = {"vllm": engines.adapters.CpuVllmAdapter, "trtllm": engines.adapters.CpuTrtLlmAdapter}[backend]
    build = {"vllm": vllm_experiment, "trtllm": trtllm_experiment}[backend]
    runtime = MeasurementRuntime(adapter_class("auto"))
    engines.fail("generate", "raise")
    with pytest.raises(RuntimeError, match="stand-in engine failure in generate"):
        runtime.measure(build())
    engines.heal()
    assert runtime.measure(build()).model_reused  # the loaded engine is still usable
    runtime.adapter.unload()


def test_a_short_generation_is_an_engine_error_not_a_measurement(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lem_worker_vllm import adapter as vllm_adapter

    # As if the adapter had lost ignore_eos: the stand-in "model" then stops at EOS after min_tokens.
    original = vllm_adapter.sampling_kwargs
    monkeypatch.setattr(
        vllm_adapter, "sampling_kwargs", lambda e: {**original(e), "ignore_eos": False, "min_tokens": 1}
    )
    runtime = MeasurementRuntime(engines.adapters.CpuVllmAdapter("auto"))
    with pytest.raises(EngineError, match="produced 4 tokens, expected 10"):
        runtime.measure(vllm_experiment())
    runtime.adapter.unload()


# --- the engine host: a spawned process, as in the workers ----------------------------------------------------


@pytest.mark.timeout(240)
def test_the_engine_host_measures_and_surfaces_engine_failures_without_hanging(engines: Engines) -> None:
    """A raise in generate fails the run and keeps the host; a hang is cut at the host's timeout and a crash is
    reported, both with a fresh host for the next run. The spawned host inherits ``sys.path`` (the stand-ins)."""
    experiment = vllm_experiment(**VLLM_SECTION).model_dump(mode="json")
    host = EngineHost("stand_in_adapters:CpuVllmAdapter", "auto", timeout_s=120)
    try:
        first = host.measure(experiment)
        assert [b.output_tokens for b in first.batches] == [20, 20] and not first.model_reused

        engines.fail("generate", "raise")
        with pytest.raises(EngineFailure, match="RuntimeError: stand-in engine failure in generate"):
            host.measure(experiment)
        engines.heal()
        assert host.measure(experiment).model_reused  # the same host, its engine still loaded

        host.timeout_s = 3
        engines.fail("generate", "hang")
        with pytest.raises(EngineFailure, match="did not answer within 3 s"):
            host.measure(experiment)
        engines.fail("generate", "exit")
        host.timeout_s = 120
        with pytest.raises(EngineFailure, match=r"engine host died during the run \(exit code 13\)"):
            host.measure(experiment)
        engines.heal()
        fresh = host.measure(experiment)
        assert not fresh.model_reused  # a new host loaded the engine again
    finally:
        host.stop()
