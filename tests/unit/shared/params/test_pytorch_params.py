"""The pytorch section: every first-class parameter is an engine parameter of the committed snapshot and reaches
its call (from_pretrained/from_config, torch.compile, generate); extra is checked against the snapshot; bad values
are refused at plan time naming the field; the loading parameters reach the real model (the bug of an earlier tool:
accepted, then dropped)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lem_shared.config.errors import ConfigError
from lem_shared.config.plan import plan_campaign
from lem_shared.config.schema import ExperimentConfig
from lem_shared.params.coverage import coverage
from lem_shared.params.pytorch import ASSISTED, HUB_RECIPES, SAMPLING, PytorchOptions
from lem_shared.params.snapshots import parameter_groups
from lem_worker_pytorch.adapter import TransformersAdapter, generate_kwargs, load_kwargs

# What a field needs beside it to be a valid experiment (the section's own cross-field rules).
PREREQUISITES: dict[str, dict[str, Any]] = {
    **{name: {"do_sample": True} for name in SAMPLING},
    **{name: {"assistant_model": "random:llama-tiny"} for name in ASSISTED if name != "assistant_early_exit"},
    **{name: {"trust_remote_code": True} for name in HUB_RECIPES},
}
PREREQUISITES["num_beam_groups"] = {"num_beams": 4, "trust_remote_code": True}
PREREQUISITES["diversity_penalty"] = {"num_beams": 4, "num_beam_groups": 2, "trust_remote_code": True}
PREREQUISITES["force_words_ids"] = {"num_beams": 2, "trust_remote_code": True}
PREREQUISITES["cache_config"] = {"cache_implementation": "quantized"}

FIELDS = [(group, name) for group, names in PytorchOptions.first_class().items() for name in sorted(names)]


def experiment(section: dict[str, Any], model: str = "org/model", batch_size: int = 1) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": model,
            "batch_size": batch_size,
            "pytorch": section,
            "workload": {"num_prompts": 2, "input_len": 8, "output_len": 4},
        }
    )


def example(group: str, name: str) -> Any:
    model = PytorchOptions.model_fields[group].annotation
    model = next(a for a in (model, *getattr(model, "__args__", ())) if isinstance(a, type))
    return model.model_fields[name].examples[0]


@pytest.mark.parametrize(("group", "name"), FIELDS)
def test_every_first_class_parameter_is_in_the_snapshot_and_reaches_its_call(group: str, name: str) -> None:
    assert name in parameter_groups("pytorch")[group], f"{group}.{name} is not a parameter of the snapshot"
    value = example(group, name)
    e = experiment({group: {name: value, **(PREREQUISITES.get(name, {}) if group == "generation" else {})}})
    if group == "loading":
        assert load_kwargs(e, torch.float16)[name] == value
    elif group == "compile":
        assert e.pytorch.arguments("compile")[name] == value
    else:
        passed = generate_kwargs(e)[name]
        if name == "compile_config":  # generate takes a CompileConfig, built from the mapping
            assert all(getattr(passed, key) == v for key, v in value.items())
        else:
            assert passed == value


def test_the_forced_output_length_wins_and_greedy_is_the_default() -> None:
    kwargs = generate_kwargs(experiment({}))
    assert kwargs == {"do_sample": False, "max_new_tokens": 4, "min_new_tokens": 4}
    assert load_kwargs(experiment({}), torch.bfloat16) == {"dtype": torch.bfloat16}


def test_load_time_parameters_change_the_engine_key_and_generation_ones_do_not() -> None:
    base = experiment({})
    assert experiment({"loading": {"attn_implementation": "eager"}}).engine_key() != base.engine_key()
    assert experiment({"compile": {}}).engine_key() != base.engine_key()
    assert experiment({"generation": {"num_beams": 2}}).engine_key() == base.engine_key()


def test_extra_reaches_its_call_under_its_group() -> None:
    e = experiment({"extra": {"bad_words_ids": [[7]], "compile.shapes_spec": None}, "compile": {}})
    assert e.pytorch.extra == {"generation.bad_words_ids": [[7]], "compile.shapes_spec": None}
    assert generate_kwargs(e)["bad_words_ids"] == [[7]]
    assert e.pytorch.arguments("compile") == {"shapes_spec": None}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"top_kk": 3}, "top_kk: not a parameter of pytorch 5.24.0; did you mean top_k"),
        ({"top_p": 0.9}, "top_p: a first-class field; set pytorch.generation.top_p instead of extra"),
        ({"max_new_tokens": 9}, "max_new_tokens: set by the experiment's workload.output_len"),
        ({"dtype": "float16"}, "dtype: set by the experiment's dtype"),
        ({"streamer": None}, "streamer: set by the tool itself"),
        ({"renormalize_logits": "yes"}, "renormalize_logits: must be bool (got 'yes')"),
        ({"nope.top_k": 1}, "nope.top_k: unknown group 'nope'; groups: loading, compile, generation"),
    ],
)
def test_bad_extra_is_refused_at_plan_time_with_the_fix(extra: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_campaign({"name": "x", "experiment": {"model": "org/m", "pytorch": {"extra": extra}}})
    assert any(p.startswith("experiment.pytorch.extra:") and expected in p for p in caught.value.problems), (
        caught.value.problems
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"generation": {"temperature": -1}}, "experiment.pytorch.generation.temperature: must be > 0"),
        ({"generation": {"cache_implementation": "paged"}}, "experiment.pytorch.generation.cache_implementation: must"),
        ({"loading": {"attn_implementation": "fast"}}, "experiment.pytorch.loading.attn_implementation: "),
        ({"compile": {"mode": "fastest"}}, "experiment.pytorch.compile.mode: must be one of"),
        ({"generation": {"num_beams": "four"}}, "experiment.pytorch.generation.num_beams: must be an integer"),
        (
            {"generation": {"top_p": 0.9}},
            "pytorch.generation.top_p: ignored by greedy decoding; set pytorch.generation.do_sample: true",
        ),
        ({"generation": {"num_assistant_tokens": 3}}, "pytorch.generation.num_assistant_tokens: read only in assisted"),
        (
            {"generation": {"penalty_alpha": 0.6}},
            "pytorch.generation.penalty_alpha: transformers 5 runs this decoding method from the hub",
        ),
        (
            {"generation": {"num_beams": 3, "num_beam_groups": 2, "trust_remote_code": True}},
            "pytorch.generation.num_beam_groups: must divide num_beams (3)",
        ),
        (
            {"generation": {"use_cache": False, "cache_implementation": "static"}},
            "pytorch.generation.cache_implementation: needs use_cache",
        ),
    ],
)
def test_bad_values_and_forbidden_combinations_are_refused_naming_the_field(section: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_campaign({"name": "x", "experiment": {"model": "org/m", "pytorch": section}})
    assert any(expected in p for p in caught.value.problems), caught.value.problems


def test_loading_parameters_a_random_model_cannot_take_are_refused_not_dropped() -> None:
    with pytest.raises(ConfigError) as caught:
        plan_campaign({"name": "x", "experiment": {"pytorch": {"loading": {"device_map": "auto"}}}})
    assert any("pytorch.loading.device_map: applies to hub or local models" in p for p in caught.value.problems)
    with pytest.raises(ConfigError) as caught:
        plan_campaign(
            {
                "name": "x",
                "experiment": {
                    "batch_size": 2,
                    "workload": {"num_prompts": 2},
                    "pytorch": {"generation": {"prompt_lookup_num_tokens": 4}},
                },
            }
        )
    assert any("set batch_size: 1 (got 2)" in p for p in caught.value.problems), caught.value.problems


def test_coverage_meets_the_target_and_every_discovered_parameter_is_classified() -> None:
    report = coverage("pytorch")
    assert report["unclassified"] == []
    assert report["coverage_pct"] >= 95.0, report["missing"]
    assert "generation.cache_implementation" in report["exposed"] and "loading.dtype" in report["exposed"]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_attention_implementation_reaches_the_real_model(attention: str) -> None:
    adapter = TransformersAdapter("cpu")
    e = experiment({"loading": {"attn_implementation": attention}}, model="random:llama-tiny")
    adapter.load(e)
    try:
        assert adapter.model.config._attn_implementation == attention
        generation = adapter.generate([[5, 6, 7, 8, 9, 10, 11, 12]], e)
        assert generation.output_tokens == 4
    finally:
        adapter.unload()
