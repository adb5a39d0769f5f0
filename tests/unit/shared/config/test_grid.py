"""Campaign grids per backend: the product per backend, include and exclude, skipped points with reasons,
duplicates, structural errors, and the fast expansion against plain full validation of every point."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from lem_shared.config.errors import ConfigError, describe_errors
from lem_shared.config.plan import plan_campaign
from lem_shared.config.schema import CampaignConfig, ExperimentConfig

REPO = Path(__file__).resolve().parents[4]


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        plan_campaign(raw)
    return info.value.problems


def skipped_of(raw: dict) -> list[tuple[dict, str]]:
    return [(s.point, s.reason) for s in plan_campaign(raw).skipped]


def test_product_is_taken_per_backend_with_its_own_axes() -> None:
    plan = plan_campaign(
        {
            "name": "b",
            "grid": {"batch_size": [1, 2]},
            "backends": {"pytorch": {"pytorch.generation.cache_implementation": ["dynamic", "static"]}, "vllm": None},
        }
    )
    assert [(e.backend.value, e.batch_size, e.pytorch.generation.cache_implementation) for e in plan.experiments] == [
        ("pytorch", 1, "dynamic"),
        ("pytorch", 1, "static"),
        ("pytorch", 2, "dynamic"),
        ("pytorch", 2, "static"),
        ("vllm", 1, None),
        ("vllm", 2, None),
    ]
    assert plan.skipped == []


def test_without_backends_the_product_is_for_the_base_backend() -> None:
    plan = plan_campaign(
        {"name": "b", "experiment": {"backend": "vllm", "model": "org/m"}, "grid": {"batch_size": [1, 2]}}
    )
    assert [(e.backend.value, e.batch_size) for e in plan.experiments] == [("vllm", 1), ("vllm", 2)]


def test_a_point_invalid_for_its_backend_is_skipped_with_the_validators_reason() -> None:
    axes = {"pytorch.generation.cache_implementation": [None, "static"]}
    raw = {"name": "b", "backends": {"pytorch": {}, "vllm": axes}}
    plan = plan_campaign(raw)
    assert [e.backend.value for e in plan.experiments] == ["pytorch", "vllm"]
    assert skipped_of(raw) == [
        (
            {"backend": "vllm", "pytorch.generation.cache_implementation": "static"},
            "the pytorch section applies to backend pytorch only (this is vllm)",
        )
    ]


def test_invalid_values_and_combinations_are_skipped_with_field_reasons() -> None:
    raw = {
        "name": "x",
        "experiment": {"workload": {"num_prompts": 4}},
        "grid": {"batch_size": [0, 2, 8], "dtype": ["auto", "fp8"]},
    }
    experiments = plan_campaign(raw).experiments
    assert [(e.batch_size, e.dtype) for e in experiments] == [(2, "auto")]
    reasons = dict((tuple(p.values()), r) for p, r in skipped_of(raw))
    assert reasons[("pytorch", 0, "auto")] == "batch_size: must be >= 1 (got 0)"
    assert reasons[("pytorch", 0, "fp8")] == (  # in the model's field order
        "dtype: must be one of 'auto', 'float32', 'float16' or 'bfloat16' (got 'fp8'); batch_size: must be >= 1 (got 0)"
    )
    assert reasons[("pytorch", 8, "auto")] == "batch_size (8) must be <= workload.num_prompts (4)"
    assert len(reasons) == 5


def test_exclude_drops_matching_points_and_include_adds_points() -> None:
    raw = {
        "name": "ie",
        "grid": {"batch_size": [1, 2]},
        "backends": {"pytorch": {}, "vllm": {}},
        "exclude": [{"backend": "vllm", "batch_size": 2}, {"dtype": "float16"}],
        "include": [
            {"backend": "trtllm", "batch_size": 4},
            {"backend": "vllm", "batch_size": 2},
            {"workload.input_len": 16},
        ],
    }
    plan = plan_campaign(raw)
    assert [(e.backend.value, e.batch_size, e.workload.input_len) for e in plan.experiments] == [
        ("pytorch", 1, 64),
        ("pytorch", 2, 64),
        ("vllm", 1, 64),
        ("trtllm", 4, 64),
        ("vllm", 2, 64),
        ("pytorch", 1, 16),
    ]
    assert skipped_of(raw) == [({"backend": "vllm", "batch_size": 2}, "excluded by exclude[0]")]


def test_an_exclude_rule_on_a_fixed_value_drops_the_whole_backend() -> None:
    raw = {
        "name": "ie",
        "grid": {"batch_size": [1, 2]},
        "backends": {"pytorch": {}, "vllm": {}},
        "exclude": [{"backend": "vllm"}],
    }
    assert {e.backend.value for e in plan_campaign(raw).experiments} == {"pytorch"}
    assert [r for _, r in skipped_of(raw)] == ["excluded by exclude[0]"] * 2


def test_an_exclude_rule_inside_a_whole_section_axis_is_matched() -> None:
    raw = {
        "name": "ie",
        "grid": {"workload": [{"input_len": 8}, {"input_len": 16}]},
        "exclude": [{"workload.input_len": 16}],
    }
    plan = plan_campaign(raw)
    assert [e.workload.input_len for e in plan.experiments] == [8]
    assert plan.experiments[0].workload.output_len == 32  # a whole section replaces the base one


def test_duplicates_collapse_by_config_hash_and_are_reported() -> None:
    raw = {"name": "d", "grid": {"batch_size": [2, 2, 1]}, "include": [{"batch_size": 1}]}
    plan = plan_campaign(raw)
    assert [e.batch_size for e in plan.experiments] == [2, 1]
    assert skipped_of(raw) == [
        ({"backend": "pytorch", "batch_size": 2}, "duplicate of experiment 0"),
        ({"backend": "pytorch", "batch_size": 1}, "duplicate of experiment 1"),
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"backends": {"vllm": {"workload.prompt_len": [1]}}}, "backends.vllm.workload.prompt_len: unknown parameter"),
        ({"backends": {"vllm": {"batch_size": []}}}, "backends.vllm.batch_size: must list at least one value"),
        ({"backends": {"tpu": {}}}, "backends.tpu: must be one of 'pytorch', 'vllm' or 'trtllm' (got 'tpu')"),
        ({"backends": {"vllm": {"backend": ["pytorch"]}}}, "backends.vllm.backend: set by the backends key itself"),
        (
            {"grid": {"batch_size": [1]}, "backends": {"vllm": {"batch_size": [2]}}},
            "backends.vllm.batch_size: also a grid axis",
        ),
        ({"grid": {"backend": ["vllm"]}, "backends": {"vllm": {}}}, "grid.backend: not an axis when backends is given"),
        ({"include": [{"batchsize": 1}]}, "include[0].batchsize: unknown parameter; did you mean batch_size"),
        ({"exclude": [{}]}, "exclude[0]: must name at least one parameter"),
        ({"exclude": [{"dtype": "auto", "kv": 1}]}, "exclude[0].kv: unknown parameter"),
        ({"include": "batch_size=1"}, "include: Input should be a valid list"),
    ],
)
def test_structural_problems_still_refuse_the_file(raw: dict, expected: str) -> None:
    problems = problems_of({"name": "s", **raw})
    assert any(p.startswith(expected) for p in problems), problems


def test_no_valid_experiment_refuses_the_file_with_the_reasons() -> None:
    problems = problems_of({"name": "none", "grid": {"batch_size": [0, -1]}})
    assert problems == [
        "grid: no valid experiment; every point is invalid or excluded (2 skipped):",
        "  point (backend='pytorch', batch_size=0): batch_size: must be >= 1 (got 0)",
        "  point (backend='pytorch', batch_size=-1): batch_size: must be >= 1 (got -1)",
    ]


def _nested(base: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(base))
    for dotted, value in point.items():
        *parents, last = dotted.split(".")
        node = config
        for part in parents:
            node[part] = dict(node[part]) if isinstance(node.get(part), dict) else {}
            node = node[part]
        node[last] = value
    return config


def _reference_plan(raw: dict[str, Any]) -> tuple[list[ExperimentConfig], list[tuple[dict, str]]]:
    """The plain way: every point's full mapping through ExperimentConfig.model_validate, hashes by config_hash."""
    campaign = CampaignConfig.model_validate(raw)
    base = campaign.experiment.model_dump(mode="json")
    groups = [(b.value, {**campaign.grid, **axes}) for b, axes in campaign.backends.items()]
    experiments: list[ExperimentConfig] = []
    skipped: list[tuple[dict, str]] = []
    seen: dict[str, int] = {}
    for backend, axes in groups or [(base["backend"], campaign.grid)]:
        for combo in itertools.product(*axes.values()):
            point = {"backend": backend, **dict(zip(axes, combo, strict=True))}
            try:
                experiment = ExperimentConfig.model_validate(_nested(base, point))
            except Exception as exc:  # noqa: BLE001 - a ValidationError; anything else fails the comparison below
                skipped.append((point, "; ".join(describe_errors(exc, ExperimentConfig))))
                continue
            digest = experiment.config_hash()
            if digest in seen:
                skipped.append((point, f"duplicate of experiment {seen[digest]}"))
                continue
            seen[digest] = len(experiments)
            experiments.append(experiment)
    return experiments, skipped


SAMPLE = {
    "name": "sample",
    "experiment": {"model": "random:llama-tiny", "workload": {"num_prompts": 4}},
    "grid": {
        "batch_size": [0, 1, 4, 8, "two"],
        "workload.input_len": [8, 4090],
        "workload.output_len": [8, 8],  # duplicates
        "dtype": ["auto", "fp8"],
        "model": ["random:llama-tiny", "random:nope", "org/m"],
        "measurement.warmup_min": [3, 60],  # 60 > warmup_max 50: the section's own model validator
    },
    "backends": {
        "pytorch": {"pytorch.generation.cache_implementation": ["dynamic", "static", "paged"]},
        "vllm": {"pytorch.generation.cache_implementation": ["dynamic", "static"]},
        "trtllm": {"measurement": [{"min_window_s": 1}, "junk"], "workload.seed": [0, 1]},
    },
}


@pytest.mark.parametrize("raw", [SAMPLE, {**SAMPLE, "backends": {}}], ids=["per-backend", "base-backend"])
def test_fast_expansion_equals_full_validation_of_every_point(raw: dict) -> None:
    expected, expected_skipped = _reference_plan(raw)
    plan = plan_campaign(raw)
    assert len(expected) >= 6 and len(expected_skipped) > 100
    assert plan.experiments == expected
    assert [e.model_dump(mode="json") for e in plan.experiments] == [e.model_dump(mode="json") for e in expected]
    assert plan.config_hashes == [e.config_hash() for e in expected]
    assert [hashlib.sha256(c.encode()).hexdigest() for c in plan.config_json] == plan.config_hashes
    assert [(s.point, s.reason) for s in plan.skipped] == expected_skipped


def test_plan_json_lists_experiments_with_hash_and_config_and_skipped_points() -> None:
    plan = plan_campaign(
        {
            "name": "j",
            "experiment": {"workload": {"num_prompts": 2}},
            "grid": {"batch_size": [1, 4]},
            "backends": {"vllm": {}},
        }
    )
    data = json.loads(plan.to_json())
    assert data["campaign"]["name"] == "j" and data["campaign"]["backends"] == {"vllm": {}}
    (experiment,) = data["experiments"]
    assert experiment["index"] == 0 and experiment["backend"] == "vllm"
    assert experiment["config"] == plan.experiments[0].model_dump(mode="json")
    assert experiment["config_hash"] == plan.experiments[0].config_hash()
    assert data["skipped"] == [
        {"point": {"backend": "vllm", "batch_size": 4}, "reason": "batch_size (4) must be <= workload.num_prompts (2)"}
    ]


def test_benchmark_grid_has_at_least_100k_points() -> None:
    raw = yaml.safe_load((REPO / "bench/grids/100k.yaml").read_text())
    shared = math.prod(len(v) for v in raw["grid"].values())
    per_backend = [math.prod(len(v) for v in (axes or {}).values()) for axes in raw["backends"].values()]
    assert shared * sum(per_backend) + len(raw.get("include", [])) >= 100_000
