"""Helpers of the out-of-process engine adapters: GPU pinning, dtype, and the random preset's HF config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lem_shared.config.presets import LLAMA_PRESETS
from lem_shared.config.schema import ExperimentConfig
from lem_shared.runtime.engine_support import (
    cuda_visible_devices_for,
    engine_dtype,
    llama_hf_config,
    nvml_memory_used,
    write_hf_config,
)


@pytest.mark.parametrize(
    ("device", "visible", "expected"),
    [
        ("auto", "2,3", None),
        ("cuda", None, None),
        ("cuda:0", None, "0"),
        ("cuda:1", "2, 3", "3"),
        ("cuda:0", "GPU-8a1b", "GPU-8a1b"),
    ],
)
def test_cuda_visible_devices_names_the_nth_visible_gpu(device: str, visible: str | None, expected: str | None) -> None:
    assert cuda_visible_devices_for(device, visible) == expected


@pytest.mark.parametrize(("device", "visible"), [("cpu", None), ("cuda:x", None), ("mps", None), ("cuda:2", "0,1")])
def test_devices_an_engine_cannot_use_are_refused(device: str, visible: str | None) -> None:
    with pytest.raises(ValueError, match="LEM_DEVICE"):
        cuda_visible_devices_for(device, visible)


def test_engine_dtype_is_bf16_for_a_random_preset_on_auto_only() -> None:
    assert engine_dtype(ExperimentConfig(model="random:llama-tiny")) == "bfloat16"
    assert engine_dtype(ExperimentConfig(model="random:llama-tiny", dtype="float16")) == "float16"
    assert engine_dtype(ExperimentConfig(model="org/some-model")) == "auto"


def test_hf_config_carries_the_preset_shape() -> None:
    config = llama_hf_config("random:llama-1b", "bfloat16")
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    for key, value in LLAMA_PRESETS["llama-1b"].items():
        assert config[key] == (bool(value) if key == "tie_word_embeddings" else value)
    assert config["tie_word_embeddings"] is True
    assert llama_hf_config("random:llama-8b", "float16")["tie_word_embeddings"] is False
    with pytest.raises(ValueError):
        llama_hf_config("org/some-model", "auto")


@pytest.mark.parametrize("name", sorted(LLAMA_PRESETS))
def test_written_config_builds_the_same_model_as_the_pytorch_adapter(tmp_path: Path, name: str) -> None:
    transformers = pytest.importorskip("transformers")
    preset = LLAMA_PRESETS[name]
    folder = write_hf_config(tmp_path / name, llama_hf_config(f"random:{name}", "bfloat16"))
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == preset["hidden_size"]

    loaded = transformers.AutoConfig.from_pretrained(folder).to_dict()
    # What the PyTorch adapter builds for random:NAME.
    reference = transformers.LlamaConfig(
        **{k: bool(v) if k == "tie_word_embeddings" else v for k, v in preset.items()}
    ).to_dict()
    ignored = {"transformers_version", "dtype", "torch_dtype", "architectures", "_name_or_path"}
    differing = {k for k in reference.keys() | loaded.keys() if k not in ignored and reference.get(k) != loaded.get(k)}
    assert differing == set()


def test_nvml_memory_is_unknown_without_a_gpu_uuid() -> None:
    assert nvml_memory_used(None) is None
    # No GPU on this machine (or no such UUID on one): NVML cannot say, and nothing is invented.
    assert nvml_memory_used("GPU-00000000-0000-0000-0000-000000000000") is None
