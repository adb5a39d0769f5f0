"""The vllm section: every first-class field is a vLLM parameter of the snapshot and reaches vLLM unchanged; extra
is checked against the snapshot; bad values and combinations are refused at plan time; coverage meets its target."""

from __future__ import annotations

from typing import Any

import pytest

from lem_shared.config.errors import ConfigError
from lem_shared.config.plan import plan_campaign
from lem_shared.config.schema import ExperimentConfig
from lem_shared.params.coverage import coverage
from lem_shared.params.snapshots import parameter_groups
from lem_shared.params.vllm import VllmEngine, VllmOptions, VllmSampling
from lem_worker_vllm.adapter import engine_kwargs, sampling_kwargs

HUB_MODEL = "meta-llama/Llama-3.2-1B"  # has a tokenizer; the checks never download anything
GROUPS = {"engine": VllmEngine, "sampling": VllmSampling}
FIELDS = [(group, name) for group, model in GROUPS.items() for name in model.model_fields]

# Fields whose example is valid only together with another setting (vLLM's own rules, checked at plan time).
COMPANIONS: dict[str, dict[str, Any]] = {
    "engine.decode_context_parallel_size": {"tensor_parallel_size": 2},
    "engine.enable_eplb": {"enable_expert_parallel": True},
    "engine.mamba_block_size": {"enable_prefix_caching": True},
    "engine.spec_tokens": {"spec_method": "ngram"},
    "sampling.n": {"temperature": 0.8},
    "sampling.prompt_logprob_start": {"prompt_logprobs": 5},
    "sampling.watermarking": {"engine": {"watermark_config": {"key": 42}}},
}


def experiment(vllm: dict[str, Any] | None = None, **changes: Any) -> ExperimentConfig:
    base: dict[str, Any] = {
        "backend": "vllm",
        "model": HUB_MODEL,
        "batch_size": 4,
        "workload": {"num_prompts": 8, "input_len": 64, "output_len": 32},
        "vllm": vllm or {},
    }
    base.update(changes)
    return ExperimentConfig.model_validate(base)


def example(group: str, name: str) -> Any:
    return GROUPS[group].model_fields[name].examples[0]


def section_setting(group: str, name: str) -> dict[str, Any]:
    """The vllm section that sets ``group.name`` to its example, with the companions the example needs."""
    section: dict[str, Any] = {group: {name: example(group, name)}}
    for key, value in COMPANIONS.get(f"{group}.{name}", {}).items():
        if isinstance(value, dict):
            section.setdefault(key, {}).update(value)
        else:
            section[group][key] = value
    return section


def problems(vllm: dict[str, Any], **changes: Any) -> list[str]:
    point = {"backend": "vllm", "model": HUB_MODEL, "vllm": vllm, **changes}
    with pytest.raises(ConfigError) as info:
        plan_campaign({"name": "x", "experiment": point})
    return info.value.problems


def test_there_are_first_class_fields_in_both_groups() -> None:
    assert len(VllmEngine.model_fields) >= 90 and len(VllmSampling.model_fields) >= 15


@pytest.mark.parametrize(("group", "name"), FIELDS, ids=[f"{g}.{n}" for g, n in FIELDS])
def test_every_field_is_a_snapshot_parameter_of_its_group_and_documented(group: str, name: str) -> None:
    assert name in parameter_groups("vllm")[group], f"{group}.{name} is not in the vLLM snapshot's {group} group"
    info = GROUPS[group].model_fields[name]
    assert info.default is None
    assert info.description and "\n" not in info.description
    assert info.examples and len(info.examples) == 1 and info.examples[0] is not None


@pytest.mark.parametrize(("group", "name"), FIELDS, ids=[f"{g}.{n}" for g, n in FIELDS])
def test_every_field_set_to_its_example_reaches_vllm_unchanged(group: str, name: str) -> None:
    exp = experiment(section_setting(group, name))
    value = example(group, name)
    kwargs = engine_kwargs(exp, "/tmp/m") if group == "engine" else sampling_kwargs(exp)
    assert name in kwargs, f"{group}.{name} does not reach vLLM"
    assert kwargs[name] == value and type(kwargs[name]) is type(value)
    if group == "sampling":  # the engine call has its own seed (the adapter's default); nothing else is shared
        assert name == "seed" or name not in engine_kwargs(exp, "/tmp/m")
    else:
        assert name not in sampling_kwargs(exp)


@pytest.mark.parametrize(("group", "name"), FIELDS, ids=[f"{g}.{n}" for g, n in FIELDS])
def test_engine_values_change_the_engine_key_and_sampling_values_do_not(group: str, name: str) -> None:
    with_field = section_setting(group, name)
    without = {key: dict(value) for key, value in with_field.items()}
    del without[group][name]
    changed, plain = experiment(with_field), experiment(without) if group == "sampling" else None
    if group == "engine":
        # the field alone (its companions may not be valid without it, so compare against the default engine)
        assert changed.engine_key() != experiment().engine_key()
        assert changed.vllm.load_arguments()["engine"][name] == example(group, name)
    else:
        assert plain is not None and changed.engine_key() == plain.engine_key()


def test_the_adapters_defaults_stay_unless_the_section_sets_them() -> None:
    kwargs = engine_kwargs(experiment(), "/tmp/m")
    assert kwargs["enable_prefix_caching"] is False and kwargs["seed"] == 0
    assert (
        engine_kwargs(experiment({"engine": {"enable_prefix_caching": True}}), "/tmp/m")["enable_prefix_caching"]
        is True
    )
    assert engine_kwargs(experiment({"extra": {"engine.seed": 7}}), "/tmp/m")["seed"] == 7
    sampling = sampling_kwargs(experiment({"sampling": {"temperature": 0.7, "top_p": 0.9}}))
    assert sampling == {
        "temperature": 0.7,
        "top_p": 0.9,
        "detokenize": False,
        "max_tokens": 32,
        "min_tokens": 32,
        "ignore_eos": True,
    }


def test_the_forced_output_length_and_tool_owned_arguments_cannot_be_overridden() -> None:
    for key in (
        "sampling.max_tokens",
        "min_tokens",
        "ignore_eos",
        "engine.dtype",
        "model",
        "load_format",
        "skip_tokenizer_init",
        "disable_log_stats",
    ):
        with pytest.raises(ValueError, match="set by"):
            VllmOptions(extra={key: 1})


def test_completions_per_prompt_follow_n() -> None:
    assert experiment().section().completions_per_prompt() == 1
    assert experiment({"sampling": {"n": 3, "temperature": 0.5}}).section().completions_per_prompt() == 3


# --- extra ---------------------------------------------------------------------------------------------------------


def test_extra_reaches_the_call_of_its_group() -> None:
    exp = experiment({"extra": {"max_logprobs": 50, "sampling.skip_special_tokens": False}})
    assert exp.vllm.extra == {"engine.max_logprobs": 50, "sampling.skip_special_tokens": False}
    assert engine_kwargs(exp, "/tmp/m")["max_logprobs"] == 50
    assert sampling_kwargs(exp)["skip_special_tokens"] is False
    assert "max_logprobs" not in sampling_kwargs(exp)
    assert "skip_special_tokens" not in engine_kwargs(exp, "/tmp/m")


def test_extra_changes_the_engine_key_only_for_engine_parameters() -> None:
    plain = experiment()
    assert experiment({"extra": {"max_logprobs": 50}}).engine_key() != plain.engine_key()
    assert experiment({"extra": {"skip_special_tokens": False}}).engine_key() == plain.engine_key()


def test_a_name_in_both_groups_must_say_which() -> None:
    found = problems({"extra": {"seed": 1, "stream_interval": 4}})
    assert any("several calls" in p and "engine.stream_interval" in p for p in found), found


def test_an_unknown_extra_name_lists_the_closest_parameters() -> None:
    found = problems({"extra": {"max_num_seq": 4}})
    assert any("not a parameter of vllm 0.33.0" in p and "max_num_seqs" in p for p in found), found


def test_a_first_class_name_in_extra_is_refused_with_the_field_to_use() -> None:
    found = problems({"extra": {"max_num_seqs": 4}})
    assert any("vllm.engine.max_num_seqs instead" in p for p in found), found


def test_extra_values_of_simple_snapshot_types_are_type_checked() -> None:
    found = problems({"extra": {"max_logprobs": "many"}})
    assert any("max_logprobs" in p and "int" in p for p in found), found


# --- bad values ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vllm", "path"),
    [
        ({"engine": {"tensor_parallel_size": 0}}, "vllm.engine.tensor_parallel_size"),
        ({"engine": {"gpu_memory_utilization": 1.5}}, "vllm.engine.gpu_memory_utilization"),
        ({"engine": {"gpu_memory_utilization": 0}}, "vllm.engine.gpu_memory_utilization"),
        ({"engine": {"max_num_seqs": "lots"}}, "vllm.engine.max_num_seqs"),
        ({"engine": {"enable_prefix_caching": "maybe"}}, "vllm.engine.enable_prefix_caching"),
        ({"engine": {"kv_cache_dtype": "fp9"}}, "vllm.engine.kv_cache_dtype"),
        ({"engine": {"scheduling_policy": "lifo"}}, "vllm.engine.scheduling_policy"),
        ({"engine": {"optimization_level": 4}}, "vllm.engine.optimization_level"),
        ({"engine": {"performance_mode": "turbo"}}, "vllm.engine.performance_mode"),
        ({"engine": {"attention_backend": "FAST_ATTN"}}, "vllm.engine.attention_backend"),
        ({"engine": {"quantization": "FP8 please"}}, "vllm.engine.quantization"),
        ({"engine": {"cudagraph_capture_sizes": [0, 8]}}, "vllm.engine.cudagraph_capture_sizes"),
        ({"engine": {"cudagraph_capture_sizes": []}}, "vllm.engine.cudagraph_capture_sizes"),
        ({"engine": {"mamba_block_size": 12, "enable_prefix_caching": True}}, "vllm.engine.mamba_block_size"),
        ({"engine": {"speculative_config": {"num_speculative_tokens": 4}}}, "vllm.engine.speculative_config"),
        (
            {"engine": {"speculative_config": {"method": "ngram", "num_speculative_tokens": 0}}},
            "vllm.engine.speculative_config",
        ),
        ({"engine": {"not_a_vllm_argument": 1}}, "vllm.engine.not_a_vllm_argument"),
        ({"sampling": {"top_p": 0}}, "vllm.sampling.top_p"),
        ({"sampling": {"top_p": 1.2}}, "vllm.sampling.top_p"),
        ({"sampling": {"min_p": 1.5}}, "vllm.sampling.min_p"),
        ({"sampling": {"top_k": -2}}, "vllm.sampling.top_k"),
        ({"sampling": {"temperature": -0.1}}, "vllm.sampling.temperature"),
        ({"sampling": {"presence_penalty": 3}}, "vllm.sampling.presence_penalty"),
        ({"sampling": {"repetition_penalty": 0}}, "vllm.sampling.repetition_penalty"),
        ({"sampling": {"n": 0}}, "vllm.sampling.n"),
    ],
)
def test_a_bad_value_is_refused_naming_its_field(vllm: dict[str, Any], path: str) -> None:
    found = problems(vllm)
    assert any(p.startswith(path) or path in p for p in found), found


@pytest.mark.parametrize(
    ("vllm", "changes", "path", "says"),
    [
        (
            {"engine": {"enable_chunked_prefill": False, "max_num_batched_tokens": 2048, "max_model_len": 4096}},
            {},
            "vllm.engine.max_num_batched_tokens",
            "max_model_len (4096)",
        ),
        (
            {"engine": {"enable_chunked_prefill": False, "max_num_batched_tokens": 2048}},
            {"model": "random:llama-tiny"},
            "vllm.engine.max_num_batched_tokens",
            "max_model_len (4096)",
        ),
        (
            {"engine": {"max_num_batched_tokens": 64, "max_num_seqs": 128}},
            {},
            "vllm.engine.max_num_batched_tokens",
            ">= vllm.engine.max_num_seqs",
        ),
        ({"engine": {"max_model_len": 64}}, {}, "vllm.engine.max_model_len", "input_len + workload.output_len (96)"),
        ({"engine": {"decode_context_parallel_size": 2}}, {}, "vllm.engine.decode_context_parallel_size", "divide"),
        ({"engine": {"enable_eplb": True}}, {}, "vllm.engine.enable_eplb", "enable_expert_parallel"),
        (
            {"engine": {"cudagraph_capture_sizes": [1, 2, 4], "max_cudagraph_capture_size": 8}},
            {},
            "vllm.engine.max_cudagraph_capture_size",
            "largest",
        ),
        ({"engine": {"kv_cache_dtype": "fp8_inc"}}, {}, "vllm.engine.kv_cache_dtype", "fp8_e4m3"),
        (
            {"engine": {"kv_cache_dtype": "fp8_ds_mla"}},
            {"model": "random:llama-1b"},
            "vllm.engine.kv_cache_dtype",
            "multi-head latent attention",
        ),
        (
            {"engine": {"quantization": "awq", "quantization_config": {"linear": "fp8_per_tensor"}}},
            {},
            "vllm.engine.quantization_config",
            "fp8_per_tensor",
        ),
        (
            {"engine": {"offload_group_size": 2, "offload_num_in_group": 3}},
            {},
            "vllm.engine.offload_num_in_group",
            "<=",
        ),
        ({"engine": {"mamba_block_size": 256}}, {}, "vllm.engine.mamba_block_size", "enable_prefix_caching"),
        (
            {"engine": {"speculative_config": {"method": "ngram"}, "spec_tokens": 3, "spec_method": "ngram"}},
            {},
            "vllm.engine.speculative_config",
            "not both",
        ),
        ({"engine": {"spec_tokens": 3}}, {}, "vllm.engine.spec_tokens", "spec_method"),
        (
            {"engine": {"engram_config": {"cpu_offload": False}}},
            {"model": "random:llama-tiny"},
            "vllm.engine.engram_config",
            "n-gram",
        ),
        ({"sampling": {"n": 2}}, {}, "vllm.sampling.n", "temperature > 0"),
        ({"sampling": {"logprobs": 50}}, {}, "vllm.sampling.logprobs", "max_logprobs (20"),
        ({"sampling": {"prompt_logprobs": -1}}, {}, "vllm.sampling.prompt_logprobs", "max_logprobs"),
        ({"sampling": {"prompt_logprob_start": 3}}, {}, "vllm.sampling.prompt_logprob_start", "prompt_logprobs"),
        ({"sampling": {"detokenize": True}}, {"model": "random:llama-tiny"}, "vllm.sampling.detokenize", "tokenizer"),
        ({"sampling": {"bad_words": ["x"]}}, {"model": "random:llama-tiny"}, "vllm.sampling.bad_words", "tokenizer"),
        ({"sampling": {"watermarking": True}}, {}, "vllm.sampling.watermarking", "watermark_config"),
    ],
)
def test_a_forbidden_combination_is_refused_naming_the_field_and_what_is_allowed(
    vllm: dict[str, Any], changes: dict[str, Any], path: str, says: str
) -> None:
    found = problems(vllm, **changes)
    assert any(path in p and says in p for p in found), found


def test_allowed_combinations_pass() -> None:
    experiment({"engine": {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192, "max_model_len": 4096}})
    experiment({"sampling": {"logprobs": 50}, "extra": {"max_logprobs": 64}})
    experiment({"sampling": {"logprobs": -1}, "extra": {"max_logprobs": -1}})
    experiment({"engine": {"quantization": "fp8_per_block", "quantization_config": {"ignore": ["lm_head"]}}})
    # a running batch below batch_size is vLLM's business (it queues the rest), not an error
    experiment({"engine": {"max_num_seqs": 2}}, batch_size=8)


def test_grid_axes_over_vllm_fields_expand_and_skip_invalid_points() -> None:
    plan = plan_campaign(
        {
            "name": "x",
            "experiment": {"backend": "vllm", "model": HUB_MODEL},
            "grid": {"vllm.engine.max_num_seqs": [16, 64], "vllm.sampling.top_k": [-5, 10]},
        }
    )
    assert len(plan.experiments) == 2
    assert all("vllm.sampling.top_k" in s.reason for s in plan.skipped)


# --- coverage ------------------------------------------------------------------------------------------------------


def test_coverage_meets_its_target_with_every_parameter_classified() -> None:
    report = coverage("vllm")
    assert report["unclassified"] == []
    assert report["discovered"] == report["relevant"] + report["not_relevant"]
    assert report["coverage_pct"] >= report["target_pct"] == 90.0
    assert report["via_extra"] == []
    assert [item["name"] for item in report["not_exposed"]] == ["sampling.ignore_eos"]
