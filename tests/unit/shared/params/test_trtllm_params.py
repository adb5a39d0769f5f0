"""The trtllm section (PARAM-01/02): every first-class field is a TensorRT-LLM parameter of the committed snapshot
and reaches the LLM / SamplingParams call; extra is checked against the snapshot; bad values fail at plan time."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from lem_shared.config.errors import ConfigError
from lem_shared.config.plan import plan_campaign
from lem_shared.config.schema import ExperimentConfig
from lem_shared.params.coverage import coverage
from lem_shared.params.snapshots import parameter_groups
from lem_shared.params.trtllm import TrtllmOptions
from lem_worker_trt.adapter import NESTED_CONFIGS, build_nested, engine_kwargs, sampling_kwargs

# Companions a field's example needs to pass the section's cross-field checks.
COMPANIONS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("engine", "enable_lm_head_tp_in_adp"): {"engine": {"enable_attention_dp": True}},
    ("engine", "attention_dp_config"): {"engine": {"enable_attention_dp": True}},
    ("engine", "scheduler_config"): {"engine": {"enable_chunked_prefill": True}},
    ("kv_cache", "enable_partial_reuse"): {"kv_cache": {"enable_block_reuse": True}},
    ("kv_cache", "copy_on_partial_reuse"): {"kv_cache": {"enable_block_reuse": True}},
    ("sampling", "n"): {"sampling": {"temperature": 0.8}},
    ("sampling", "best_of"): {"sampling": {"temperature": 0.8}},
    ("sampling", "length_penalty"): {"sampling": {"use_beam_search": True}},
    ("sampling", "early_stopping"): {"sampling": {"use_beam_search": True}},
    ("sampling", "beam_search_diversity_rate"): {"sampling": {"use_beam_search": True}},
    ("sampling", "beam_width_array"): {"sampling": {"use_beam_search": True}, "engine": {"max_beam_width": 4}},
}


def experiment(trtllm: dict[str, Any] | None = None, **changes: Any) -> ExperimentConfig:
    base: dict[str, Any] = {
        "backend": "trtllm",
        "model": "random:llama-8b",
        "batch_size": 2,
        "workload": {"num_prompts": 4, "input_len": 128, "output_len": 64},
        "trtllm": trtllm or {},
    }
    base.update(changes)
    return ExperimentConfig.model_validate(base)


def fields() -> list[tuple[str, str, Any]]:
    out = []
    for group in TrtllmOptions.snapshot_groups:
        model = type(getattr(TrtllmOptions(), group))
        for name, info in model.model_fields.items():
            out.append((group, name, info))
    return out


@pytest.mark.parametrize(("group", "name", "info"), fields(), ids=lambda v: v if isinstance(v, str) else "")
def test_field_is_a_snapshot_parameter_with_description_and_example(group: str, name: str, info: Any) -> None:
    known = parameter_groups("trtllm")
    assert any(name in known.get(s, {}) for s in TrtllmOptions.snapshot_groups[group]), f"{group}.{name}"
    assert info.description and "\n" not in info.description
    assert info.examples and info.examples[0] is not None


@pytest.mark.parametrize(("group", "name", "info"), fields(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_field_set_to_its_example_reaches_the_engine_call(group: str, name: str, info: Any) -> None:
    value = info.examples[0]
    section: dict[str, dict[str, Any]] = {g: dict(v) for g, v in COMPANIONS.get((group, name), {}).items()}
    section.setdefault(group, {})[name] = value
    exp = experiment(section)
    if group == "engine":
        assert engine_kwargs(exp, "m")[name] == value
    elif group == "kv_cache":
        assert engine_kwargs(exp, "m")["kv_cache_config"][name] == value
    else:
        assert sampling_kwargs(exp)[name] == value
    default = experiment({g: dict(v) for g, v in COMPANIONS.get((group, name), {}).items()})
    changes_engine = group in TrtllmOptions.load_groups
    assert (exp.engine_key() != default.engine_key()) is changes_engine


def test_kv_cache_merges_over_the_block_reuse_default() -> None:
    kwargs = engine_kwargs(experiment({"kv_cache": {"free_gpu_memory_fraction": 0.5, "dtype": "fp8"}}), "m")
    assert kwargs["kv_cache_config"] == {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.5, "dtype": "fp8"}
    kwargs = engine_kwargs(experiment({"kv_cache": {"enable_block_reuse": True}}), "m")
    assert kwargs["kv_cache_config"] == {"enable_block_reuse": True}


def test_cuda_graphs_false_is_passed_as_none() -> None:
    kwargs = engine_kwargs(experiment({"engine": {"cuda_graph_config": False}}), "m")
    assert "cuda_graph_config" in kwargs and kwargs["cuda_graph_config"] is None


def test_sampling_keeps_the_forced_output_length() -> None:
    kwargs = sampling_kwargs(experiment({"sampling": {"temperature": 0.7, "top_p": 0.9}}))
    assert kwargs["temperature"] == 0.7 and kwargs["top_p"] == 0.9
    assert kwargs["max_tokens"] == kwargs["min_tokens"] == 64 and kwargs["ignore_eos"] is True


def test_build_nested_makes_the_engine_config_objects() -> None:
    made: list[tuple[str, dict]] = []

    def cls(name: str) -> Any:
        return lambda **kw: made.append((name, kw)) or (name, kw)

    llm_args = SimpleNamespace(
        **{c: cls(c) for c in NESTED_CONFIGS.values()},
        DecodingBaseConfig=SimpleNamespace(from_dict=lambda d: ("spec", d)),
    )
    exp = experiment(
        {
            "engine": {
                "cuda_graph_config": {"max_batch_size": 8},
                "speculative_config": {"decoding_type": "NGram", "max_draft_len": 4, "max_matching_ngram_size": 2},
            }
        }
    )
    out = build_nested(engine_kwargs(exp, "m"), llm_args)
    assert out["kv_cache_config"] == ("KvCacheConfig", {"enable_block_reuse": False})
    assert out["cuda_graph_config"] == ("CudaGraphConfig", {"max_batch_size": 8})
    assert out["speculative_config"][0] == "spec"
    assert out["model"] == "m"


def test_extra_reaches_the_right_call() -> None:
    exp = experiment(
        {
            "extra": {
                "enable_iter_perf_stats": True,
                "kv_cache.event_buffer_max_size": 16,
                "sampling.stop_token_ids": [2],
            }
        }
    )
    assert exp.trtllm.extra == {
        "engine.enable_iter_perf_stats": True,
        "kv_cache.event_buffer_max_size": 16,
        "sampling.stop_token_ids": [2],
    }
    assert engine_kwargs(exp, "m")["enable_iter_perf_stats"] is True
    assert engine_kwargs(exp, "m")["kv_cache_config"]["event_buffer_max_size"] == 16
    assert sampling_kwargs(exp)["stop_token_ids"] == [2]


def plan_problems(trtllm: dict[str, Any], **experiment_fields: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        plan_campaign(
            {
                "name": "x",
                "experiment": {"backend": "trtllm", "model": "random:llama-8b", **experiment_fields, "trtllm": trtllm},
            }
        )
    return info.value.problems


def test_unknown_extra_name_names_the_closest() -> None:
    text = " ".join(plan_problems({"extra": {"enable_iter_perf_stat": True}}))
    assert "not a parameter of trtllm 1.2.0rc2" in text and "enable_iter_perf_stats" in text


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("max_batch_size", "first-class field; set trtllm.engine.max_batch_size"),
        ("kv_cache.free_gpu_memory_fraction", "first-class field; set trtllm.kv_cache.free_gpu_memory_fraction"),
        ("sampling.max_tokens", "workload.output_len"),
        ("engine.dtype", "experiment's dtype"),
        ("load_format", "set by the tool itself"),
        ("sampling.ignore_eos", "set by the tool itself"),
    ],
)
def test_extra_refuses_names_set_elsewhere(key: str, says: str) -> None:
    assert says in " ".join(plan_problems({"extra": {key: 1}}))


@pytest.mark.parametrize(
    ("trtllm", "path"),
    [
        ({"engine": {"tensor_parallel_size": 0}}, "trtllm.engine.tensor_parallel_size"),
        ({"engine": {"attn_backend": "FLASH"}}, "trtllm.engine.attn_backend"),
        ({"engine": {"sampler_type": "greedy"}}, "trtllm.engine.sampler_type"),
        (
            {"engine": {"cuda_graph_config": {"batch_sizes": [1, 2], "max_batch_size": 8}}},
            "trtllm.engine.cuda_graph_config",
        ),
        (
            {"engine": {"scheduler_config": {"capacity_scheduler_policy": "FIFO"}}},
            "trtllm.engine.scheduler_config.capacity_scheduler_policy",
        ),
        (
            {"engine": {"speculative_config": {"decoding_type": "Eagle", "max_draft_len": 3}}},
            "trtllm.engine.speculative_config",
        ),
        ({"engine": {"batch_wait_max_tokens_ratio": 1.5}}, "trtllm.engine.batch_wait_max_tokens_ratio"),
        ({"kv_cache": {"free_gpu_memory_fraction": 1.2}}, "trtllm.kv_cache.free_gpu_memory_fraction"),
        ({"kv_cache": {"dtype": "int8"}}, "trtllm.kv_cache.dtype"),
        ({"sampling": {"top_p": 0}}, "trtllm.sampling.top_p"),
        ({"sampling": {"temperature": -1}}, "trtllm.sampling.temperature"),
        ({"sampling": {"n": 2}}, "trtllm.sampling.n"),
        ({"sampling": {"n": 3, "best_of": 2, "temperature": 1.0}}, "trtllm.sampling.best_of"),
        ({"sampling": {"use_beam_search": True, "n": 4}}, "trtllm.engine.max_beam_width"),
        ({"sampling": {"length_penalty": 1.0}}, "trtllm.sampling.length_penalty"),
        ({"engine": {"max_seq_len": 64}}, "trtllm.engine.max_seq_len"),
        ({"engine": {"max_num_tokens": 16}}, "trtllm.engine.max_num_tokens"),
        ({"engine": {"enable_lm_head_tp_in_adp": True}}, "trtllm.engine.enable_lm_head_tp_in_adp"),
        ({"kv_cache": {"enable_partial_reuse": True}}, "trtllm.kv_cache.enable_partial_reuse"),
    ],
)
def test_bad_values_fail_at_plan_time_naming_the_field(trtllm: dict[str, Any], path: str) -> None:
    problems = plan_problems(trtllm, workload={"num_prompts": 2, "input_len": 64, "output_len": 32})
    assert path in " ".join(problems), problems


def test_good_values_plan() -> None:
    plan = plan_campaign(
        {
            "name": "x",
            "experiment": {
                "backend": "trtllm",
                "model": "random:llama-8b",
                "trtllm": {
                    "engine": {"max_num_tokens": 16, "enable_chunked_prefill": True, "max_beam_width": 4},
                    "sampling": {"use_beam_search": True, "n": 2, "length_penalty": 0.8},
                },
            },
        }
    )
    assert plan is not None


def test_sampling_changes_leave_the_engine_key() -> None:
    assert experiment({"sampling": {"temperature": 0.5}}).engine_key() == experiment().engine_key()
    assert experiment({"kv_cache": {"dtype": "fp8"}}).engine_key() != experiment().engine_key()


def test_coverage_meets_the_target_with_nothing_unclassified() -> None:
    report = coverage("trtllm")
    assert report["engine_version"] == "1.2.0rc2"
    assert report["unclassified"] == []
    assert report["coverage_pct"] >= 95.0
