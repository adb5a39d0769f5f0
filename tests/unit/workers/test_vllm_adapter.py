"""The vLLM adapter's mapping of an experiment onto vLLM, checked without vLLM (it cannot be installed here)."""

from __future__ import annotations

import enum
import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from lem_shared.config.schema import ExperimentConfig, Workload
from lem_shared.wire.queues import Backend
from lem_worker_vllm.adapter import (
    FLASHINFER_SAMPLER_ENV,
    MODEL_SEED,
    NOT_INSTALLED,
    KvCacheWatch,
    VllmAdapter,
    batch_ttft,
    engine_facts_of,
    engine_kwargs,
    flashinfer_sampler_choice,
    output_tokens,
    request_ttfts,
    sampling_kwargs,
    watch_kv_cache,
)

VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None


def experiment(**changes: object) -> ExperimentConfig:
    base: dict[str, object] = {
        "backend": "vllm",
        "model": "random:llama-1b",
        "batch_size": 4,
        "workload": {"num_prompts": 8, "input_len": 64, "output_len": 32},
    }
    base.update(changes)
    return ExperimentConfig.model_validate(base)


def test_random_preset_gets_random_weights_from_the_written_config_and_no_tokenizer() -> None:
    kwargs = engine_kwargs(experiment(), "/tmp/lem-model")
    assert kwargs == {
        "model": "/tmp/lem-model",
        "dtype": "bfloat16",  # auto on a random preset: bf16, as the PyTorch adapter on CUDA
        "seed": MODEL_SEED,
        "enable_prefix_caching": False,
        "disable_log_stats": False,
        "load_format": "dummy",
        "skip_tokenizer_init": True,
    }


def test_hub_model_loads_its_weights_and_tokenizer_and_keeps_auto_dtype() -> None:
    kwargs = engine_kwargs(experiment(model="meta-llama/Llama-3.2-1B"), "meta-llama/Llama-3.2-1B")
    assert kwargs["model"] == "meta-llama/Llama-3.2-1B"
    assert kwargs["dtype"] == "auto"
    assert "load_format" not in kwargs and "skip_tokenizer_init" not in kwargs
    assert kwargs["enable_prefix_caching"] is False


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_an_explicit_dtype_is_passed_through(dtype: str) -> None:
    assert engine_kwargs(experiment(dtype=dtype), "x")["dtype"] == dtype


def test_engine_arguments_do_not_depend_on_the_workload() -> None:
    # The runtime reuses a loaded engine for every experiment with the same engine_key (model, dtype, section).
    small = experiment(batch_size=1, workload={"num_prompts": 2, "input_len": 8, "output_len": 4, "seed": 1})
    large = experiment(batch_size=8, workload={"num_prompts": 8, "input_len": 512, "output_len": 256, "seed": 9})
    assert engine_kwargs(small, "m") == engine_kwargs(large, "m")


def test_sampling_forces_exactly_output_len_greedy_tokens() -> None:
    assert sampling_kwargs(experiment(workload=Workload(output_len=77))) == {
        "max_tokens": 77,
        "min_tokens": 77,
        "ignore_eos": True,
        "temperature": 0.0,
        "detokenize": False,
    }


def test_section_arguments_are_merged_over_the_adapters_defaults_but_not_over_what_the_tool_owns() -> None:
    exp = experiment(
        vllm={
            "engine": {"enable_prefix_caching": True, "max_num_seqs": 16},
            "sampling": {"temperature": 0.7, "n": 2},
            "extra": {"engine.seed": 3, "sampling.skip_special_tokens": False},
        }
    )
    kwargs = engine_kwargs(exp, "/tmp/lem-model")
    assert kwargs["enable_prefix_caching"] is True and kwargs["max_num_seqs"] == 16 and kwargs["seed"] == 3
    assert kwargs["model"] == "/tmp/lem-model" and kwargs["disable_log_stats"] is False
    assert kwargs["load_format"] == "dummy" and kwargs["skip_tokenizer_init"] is True
    assert sampling_kwargs(exp) == {
        "max_tokens": 32,
        "min_tokens": 32,
        "ignore_eos": True,
        "temperature": 0.7,
        "detokenize": False,
        "n": 2,
        "skip_special_tokens": False,
    }


def test_engine_arguments_of_the_section_change_the_engine_key_sampling_arguments_do_not() -> None:
    plain = experiment()
    assert experiment(vllm={"engine": {"max_num_seqs": 16}}).engine_key() != plain.engine_key()
    assert experiment(vllm={"sampling": {"top_k": 5}}).engine_key() == plain.engine_key()


def request_output(
    tokens: int, arrival: float | None = None, latency: float | None = None, completions: int = 1
) -> object:
    metrics = None if arrival is None else SimpleNamespace(arrival_time=arrival, first_token_latency=latency)
    outputs = [SimpleNamespace(token_ids=list(range(tokens))) for _ in range(completions)]
    return SimpleNamespace(outputs=outputs, metrics=metrics)


def test_output_tokens_count_every_completion_of_every_request() -> None:
    assert output_tokens([request_output(32), request_output(32), request_output(5)]) == 69
    assert output_tokens([request_output(32, completions=3), request_output(32, completions=3)]) == 192


def test_batch_ttft_is_when_the_last_request_got_its_first_token() -> None:
    outputs = [request_output(4, arrival=100.01, latency=0.20), request_output(4, arrival=100.02, latency=0.33)]
    assert batch_ttft(outputs, started=100.0) == pytest.approx(0.35)


def test_batch_ttft_is_none_when_vllm_gave_no_request_metrics() -> None:
    assert batch_ttft([request_output(4), request_output(4)], started=0.0) is None
    assert batch_ttft([request_output(4, arrival=1.0, latency=0.0)], started=0.0) is None
    assert batch_ttft([], started=0.0) is None


def test_request_ttfts_are_vllms_own_first_token_latencies_or_none_when_any_is_missing() -> None:
    outputs = [request_output(4, arrival=100.01, latency=0.20), request_output(4, arrival=100.02, latency=0.33)]
    assert request_ttfts(outputs) == [0.20, 0.33]
    assert request_ttfts([request_output(4, arrival=1.0, latency=0.2), request_output(4)]) is None
    assert request_ttfts([request_output(4, arrival=1.0, latency=0.0)]) is None
    assert request_ttfts([]) is None


def test_flashinfer_sampler_is_switched_off_only_when_flashinfer_is_missing_and_the_operator_said_nothing() -> None:
    assert flashinfer_sampler_choice({}, flashinfer_installed=False)["value"] == "0"
    assert flashinfer_sampler_choice({}, flashinfer_installed=False)["set_by"] == "lem"
    assert flashinfer_sampler_choice({}, flashinfer_installed=True) == {
        "value": None,
        "set_by": "vllm default",
        "reason": "flashinfer is installed: vLLM uses its top-k/top-p sampler where the GPU supports it",
    }
    operator = flashinfer_sampler_choice({FLASHINFER_SAMPLER_ENV: "1"}, flashinfer_installed=False)
    assert operator["value"] == "1" and operator["set_by"] == "operator"


def test_the_adapter_sets_the_sampler_switch_before_any_engine_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FLASHINFER_SAMPLER_ENV, raising=False)
    VllmAdapter("auto")
    flashinfer = importlib.util.find_spec("flashinfer") is not None
    assert os.environ.get(FLASHINFER_SAMPLER_ENV) == (None if flashinfer else "0")
    monkeypatch.setenv(FLASHINFER_SAMPLER_ENV, "1")
    VllmAdapter("auto")
    assert os.environ[FLASHINFER_SAMPLER_ENV] == "1"  # the operator's value is kept


class Mode(enum.Enum):
    FULL_AND_PIECEWISE = (2, 1)


def test_engine_facts_read_the_live_config_and_name_what_is_missing() -> None:
    config = SimpleNamespace(
        model_config=SimpleNamespace(enforce_eager=False, dtype="torch.bfloat16", max_model_len=4096),
        cache_config=SimpleNamespace(
            num_gpu_blocks=1000,
            block_size=16,
            kv_cache_size_tokens=16000,
            kv_cache_max_concurrency=3.9,
            cache_dtype="auto",
            gpu_memory_utilization=0.9,
            kv_cache_memory_bytes=None,
            enable_prefix_caching=False,
        ),
        compilation_config=SimpleNamespace(
            mode=3,
            backend="inductor",
            cudagraph_mode=Mode.FULL_AND_PIECEWISE,
            cudagraph_capture_sizes=[1, 2, 4],
            max_cudagraph_capture_size=4,
        ),
        attention_config=SimpleNamespace(backend=None),
    )
    sampler = flashinfer_sampler_choice({}, flashinfer_installed=False)
    facts = engine_facts_of(config, "0.26.0", sampler)
    json.dumps(facts)  # JSON only
    assert facts["vllm_version"] == "0.26.0" and facts["flashinfer_sampler"] == sampler
    assert facts["kv_cache_tokens"] == 16000 and facts["gpu_memory_utilization"] == 0.9
    assert facts["cudagraph_mode"] == "FULL_AND_PIECEWISE" and facts["cudagraph_capture_sizes"] == [1, 2, 4]
    assert facts["compilation_mode"] == 3 and facts["dtype"] == "torch.bfloat16"
    assert facts["attention_backend"] is None and "engine-core" in facts["unavailable"]["attention_backend"]
    assert facts["max_num_seqs"] is None  # no scheduler_config here
    assert facts["unavailable"]["max_num_seqs"] == "vllm_config.scheduler_config.max_num_seqs is missing in this vLLM"
    nothing = engine_facts_of(None, "0.26.0", sampler)
    assert nothing["kv_cache_tokens"] is None and "kv_cache_tokens" in nothing["unavailable"]


def test_kv_cache_watch_keeps_peak_mean_and_preemptions_of_the_steps_since_reset() -> None:
    watch = KvCacheWatch()
    assert watch.figures() == {"kv_cache_usage_peak": None, "kv_cache_usage_mean": None, "preemptions": None}
    watch.record(SimpleNamespace(kv_cache_usage=0.5), SimpleNamespace(num_preempted_reqs=0))
    watch.record(SimpleNamespace(kv_cache_usage=0.2), SimpleNamespace(num_preempted_reqs=0))
    watch.record(
        SimpleNamespace(kv_cache_usage=0.9), SimpleNamespace(num_preempted_reqs=2), mm_cache_stats=None, engine_idx=0
    )
    assert watch.figures() == {
        "kv_cache_usage_peak": 0.9,
        "kv_cache_usage_mean": pytest.approx(1.6 / 3),
        "preemptions": 2,
    }
    watch.reset()
    watch.record(SimpleNamespace(kv_cache_usage=0.1), None)
    assert watch.figures() == {"kv_cache_usage_peak": 0.1, "kv_cache_usage_mean": 0.1, "preemptions": 0}


def test_kv_cache_watch_joins_the_engines_stat_loggers_or_says_why_not() -> None:
    loggers: list[object] = []
    llm = SimpleNamespace(llm_engine=SimpleNamespace(logger_manager=SimpleNamespace(stat_loggers=loggers)))
    watch, missing = watch_kv_cache(llm)
    assert missing is None and loggers == [watch]
    watch, missing = watch_kv_cache(SimpleNamespace(llm_engine=SimpleNamespace(logger_manager=None)))
    assert watch is None and "stat_loggers not found" in missing


@pytest.mark.skipif(VLLM_INSTALLED, reason="vLLM is installed here")
def test_load_without_vllm_says_how_to_install_it() -> None:
    with pytest.raises(RuntimeError) as info:
        VllmAdapter("auto").load(experiment())
    assert str(info.value) == NOT_INSTALLED
    assert "pip install 'lem-worker-vllm[engine]'" in str(info.value)


def test_reported_versions_name_vllm_and_torch() -> None:
    versions = VllmAdapter("auto").versions()
    assert set(versions) >= {"vllm", "torch"}
    if not VLLM_INSTALLED:
        assert versions["vllm"] == "not installed"


def test_cuda_n_pins_the_engine_host_to_that_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    VllmAdapter("cuda:1")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"


def test_cpu_device_is_refused_when_a_model_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    adapter = VllmAdapter("cpu")
    with pytest.raises(RuntimeError, match="vLLM is not installed|needs a CUDA GPU"):
        adapter.load(experiment())


def test_worker_entry_point_serves_the_run_task_without_importing_the_engine() -> None:
    # A fresh interpreter: Celery shares decorated tasks between the apps of one process.
    probe = (
        "import sys, importlib\n"
        "import lem_worker_vllm.main as main\n"
        "from lem_shared.wire.queues import RUN_TASK\n"
        "module, _, name = main.ADAPTER.partition(':')\n"
        "adapter = getattr(importlib.import_module(module), name)\n"
        "print(RUN_TASK in main.app.tasks, adapter.__name__, main.app.main,"
        " 'vllm' in sys.modules, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["True", "VllmAdapter", f"lem-worker-{Backend.VLLM.value}", "False", "False"]
