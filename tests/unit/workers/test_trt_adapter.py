"""The TensorRT-LLM adapter's mapping of an experiment onto the LLM API, checked without TensorRT-LLM."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from enum import Enum
from types import SimpleNamespace

import pytest

from lem_shared.config.schema import ExperimentConfig, Workload
from lem_shared.runtime.engine_support import RANDOM_MODEL_EOS_ID
from lem_shared.wire.queues import Backend
from lem_worker_trt.adapter import (
    NOT_INSTALLED,
    TrtLlmAdapter,
    batch_ttft,
    engine_kwargs,
    output_tokens,
    sampling_kwargs,
)

TRT_INSTALLED = importlib.util.find_spec("tensorrt_llm") is not None


class MetricNames(Enum):
    """Stands in for tensorrt_llm.metrics.MetricNames: the adapter matches its members by name."""

    TTFT = "ttft"
    E2E = "e2e"


def experiment(**changes: object) -> ExperimentConfig:
    base: dict[str, object] = {
        "backend": "trtllm",
        "model": "random:llama-8b",
        "batch_size": 2,
        "workload": {"num_prompts": 4, "input_len": 128, "output_len": 64},
    }
    base.update(changes)
    return ExperimentConfig.model_validate(base)


def test_random_preset_gets_dummy_weights_no_tokenizer_and_no_block_reuse() -> None:
    assert engine_kwargs(experiment(), "/tmp/lem-model") == {
        "model": "/tmp/lem-model",
        "dtype": "bfloat16",
        "kv_cache_config": {"enable_block_reuse": False},
        "return_perf_metrics": True,
        "load_format": "dummy",
        "skip_tokenizer_init": True,
    }


def test_hub_model_loads_its_checkpoint_and_tokenizer() -> None:
    kwargs = engine_kwargs(experiment(model="meta-llama/Llama-3.1-8B", dtype="float16"), "meta-llama/Llama-3.1-8B")
    assert kwargs["model"] == "meta-llama/Llama-3.1-8B"
    assert kwargs["dtype"] == "float16"
    assert "load_format" not in kwargs and "skip_tokenizer_init" not in kwargs
    assert kwargs["kv_cache_config"] == {"enable_block_reuse": False}


def test_engine_arguments_depend_only_on_model_and_dtype() -> None:
    small = experiment(batch_size=1, workload={"num_prompts": 1, "input_len": 4, "output_len": 2})
    large = experiment(batch_size=4, workload={"num_prompts": 4, "input_len": 1024, "output_len": 512})
    assert engine_kwargs(small, "m") == engine_kwargs(large, "m")


def test_sampling_forces_output_len_and_names_an_end_id_when_there_is_no_tokenizer() -> None:
    assert sampling_kwargs(experiment(workload=Workload(output_len=50))) == {
        "max_tokens": 50,
        "min_tokens": 50,
        "ignore_eos": True,
        "temperature": 0.0,
        "detokenize": False,
        "return_perf_metrics": True,
        "end_id": RANDOM_MODEL_EOS_ID,
    }


def test_sampling_leaves_end_id_to_the_tokenizer_of_a_hub_model() -> None:
    kwargs = sampling_kwargs(experiment(model="meta-llama/Llama-3.1-8B"))
    assert "end_id" not in kwargs
    assert kwargs["ignore_eos"] is True and kwargs["min_tokens"] == kwargs["max_tokens"] == 64


def request_output(tokens: int, metrics: dict | None = None) -> object:
    return SimpleNamespace(outputs=[SimpleNamespace(token_ids=list(range(tokens)))], metrics_dict=metrics or {})


def test_output_tokens_count_every_request() -> None:
    assert output_tokens([request_output(64), request_output(64)]) == 128


def test_batch_ttft_is_the_largest_request_ttft() -> None:
    outputs = [
        request_output(2, {MetricNames.TTFT: 0.12, MetricNames.E2E: 0.9}),
        request_output(2, {MetricNames.TTFT: 0.31, MetricNames.E2E: 1.0}),
    ]
    assert batch_ttft(outputs) == pytest.approx(0.31)


def test_batch_ttft_is_none_when_a_request_has_no_perf_metrics() -> None:
    assert batch_ttft([request_output(2, {MetricNames.TTFT: 0.1}), request_output(2)]) is None
    assert batch_ttft([request_output(2, {MetricNames.E2E: 0.5})]) is None
    assert batch_ttft([]) is None


@pytest.mark.skipif(TRT_INSTALLED, reason="TensorRT-LLM is installed here")
def test_load_without_tensorrt_llm_says_how_to_install_it() -> None:
    with pytest.raises(RuntimeError) as info:
        TrtLlmAdapter("auto").load(experiment())
    assert str(info.value) == NOT_INSTALLED
    assert "pip install 'lem-worker-trt[engine]'" in str(info.value)


def test_reported_versions_name_tensorrt_llm_and_torch() -> None:
    versions = TrtLlmAdapter("auto").versions()
    assert set(versions) >= {"tensorrt_llm", "torch"}
    if not TRT_INSTALLED:
        assert versions["tensorrt_llm"] == "not installed"


def test_cuda_n_without_a_visible_list_pins_gpu_n(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    TrtLlmAdapter("cuda:3")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_auto_keeps_the_gpus_the_container_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    TrtLlmAdapter("auto")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-1234"


def test_worker_entry_point_serves_the_run_task_without_importing_the_engine() -> None:
    # A fresh interpreter: Celery shares decorated tasks between the apps of one process.
    probe = (
        "import sys, importlib\n"
        "import lem_worker_trt.main as main\n"
        "from lem_shared.wire.queues import RUN_TASK\n"
        "module, _, name = main.ADAPTER.partition(':')\n"
        "adapter = getattr(importlib.import_module(module), name)\n"
        "print(RUN_TASK in main.app.tasks, adapter.__name__, main.app.main,"
        " 'tensorrt_llm' in sys.modules, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["True", "TrtLlmAdapter", f"lem-worker-{Backend.TRTLLM.value}", "False", "False"]
