"""Campaign files: validation with field-naming errors, grid expansion and the run key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lem_shared.config.errors import ConfigError
from lem_shared.config.plan import load_plan, plan_campaign
from lem_shared.config.schema import ExperimentConfig
from lem_shared.wire.messages import run_key

REPO = Path(__file__).resolve().parents[4]


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        plan_campaign(raw)
    return info.value.problems


def test_default_campaign_expands_to_two_batch_sizes_and_two_cycles() -> None:
    plan = load_plan(REPO / "configs/campaigns/default.yaml")
    campaign, experiments = plan.campaign, plan.experiments
    assert campaign.cycles == 2
    assert [e.batch_size for e in experiments] == [1, 4]
    assert {e.model for e in experiments} == {"random:llama-tiny"}
    assert all(e.workload.output_len == 32 for e in experiments)


def test_grid_is_the_product_of_its_axes_in_file_order() -> None:
    experiments = plan_campaign(
        {"name": "g", "grid": {"batch_size": [1, 2], "workload.input_len": [8, 16, 32]}}
    ).experiments
    assert [(e.batch_size, e.workload.input_len) for e in experiments] == [
        (1, 8),
        (1, 16),
        (1, 32),
        (2, 8),
        (2, 16),
        (2, 32),
    ]


def test_duplicate_grid_points_collapse_by_config_hash() -> None:
    experiments = plan_campaign({"name": "d", "grid": {"batch_size": [2, 2, 1, 2]}}).experiments
    assert [e.batch_size for e in experiments] == [2, 1]


def test_no_grid_is_one_experiment() -> None:
    experiments = plan_campaign({"name": "one", "experiment": {"batch_size": 3}}).experiments
    assert len(experiments) == 1 and experiments[0].batch_size == 3


def test_invalid_grid_value_is_skipped_with_the_field_and_reason() -> None:
    plan = plan_campaign({"name": "x", "grid": {"batch_size": [1, 2, 0]}})
    assert [e.batch_size for e in plan.experiments] == [1, 2]
    assert [(s.point, s.reason) for s in plan.skipped] == [
        ({"backend": "pytorch", "batch_size": 0}, "batch_size: must be >= 1 (got 0)")
    ]


def test_unknown_key_lists_the_allowed_ones() -> None:
    (problem,) = problems_of({"name": "x", "experiment": {"batchsize": 4}})
    assert problem.startswith("experiment.batchsize: unknown key; did you mean batch_size"), problem


def test_unknown_grid_parameter_is_rejected() -> None:
    (problem,) = problems_of({"name": "x", "grid": {"workload.prompt_len": [1]}})
    assert problem.startswith("grid.workload.prompt_len: unknown parameter; did you mean workload.")
    assert "workload.input_len" in problem


def test_wrong_type_and_unknown_backend_are_both_reported() -> None:
    problems = problems_of({"name": "x", "cycles": "many", "experiment": {"backend": "tpu"}})
    assert "cycles: must be an integer (got 'many')" in problems
    assert "experiment.backend: must be one of 'pytorch', 'vllm' or 'trtllm' (got 'tpu')" in problems


def test_impossible_combination_is_skipped_with_the_grid_point() -> None:
    raw = {"name": "x", "experiment": {"workload": {"num_prompts": 4}}, "grid": {"batch_size": [2, 8]}}
    plan = plan_campaign(raw)
    assert [e.batch_size for e in plan.experiments] == [2]
    (skipped,) = plan.skipped
    assert (
        skipped.describe() == "point (backend='pytorch', batch_size=8): batch_size (8) must be <= "
        "workload.num_prompts (4)"
    )


def test_a_grid_with_no_possible_point_is_rejected() -> None:
    raw = {"name": "x", "experiment": {"workload": {"num_prompts": 4}}, "grid": {"batch_size": [8]}}
    assert problems_of(raw)[0] == "grid: no valid experiment; every point is invalid or excluded (1 skipped):"


def test_unknown_random_preset_is_rejected() -> None:
    (problem,) = problems_of({"name": "x", "experiment": {"model": "random:gpt-huge"}})
    assert problem.startswith("experiment.model: unknown random model preset; allowed: random:llama-tiny")


def test_hub_ids_and_local_folders_are_accepted_as_models() -> None:
    for model in ("meta-llama/Llama-3.2-1B", "/models/my-llama"):
        assert ExperimentConfig(model=model).model == model


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid:\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_plan(bad)
    assert "not valid YAML (line" in info.value.problems[0]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_plan(tmp_path / "nope.yaml")


def test_run_key_is_stable_and_distinguishes_campaign_config_and_cycle() -> None:
    config = ExperimentConfig().model_dump(mode="json")
    reordered = dict(reversed(list(config.items())))
    key = run_key(1, config, 0)
    assert len(key) == 64 and key == run_key(1, reordered, 0)
    other = ExperimentConfig(batch_size=2).model_dump(mode="json")
    assert len({key, run_key(2, config, 0), run_key(1, config, 1), run_key(1, other, 0)}) == 4


def test_pytorch_options_are_a_grid_axis_and_refused_for_other_backends() -> None:
    raw = {"name": "x", "grid": {"pytorch.generation.cache_implementation": ["dynamic", "static"]}}
    experiments = plan_campaign(raw).experiments
    assert [e.pytorch.generation.cache_implementation for e in experiments] == ["dynamic", "static"]
    static = {"generation": {"cache_implementation": "static"}}
    problems = problems_of({"name": "x", "experiment": {"backend": "vllm", "model": "org/m", "pytorch": static}})
    assert any("pytorch section applies to backend pytorch only (this is vllm)" in p for p in problems), problems
    problems = problems_of({"name": "x", "experiment": {"pytorch": {"generation": {"cache_implementation": "paged"}}}})
    assert any(p.startswith("experiment.pytorch.generation.cache_implementation:") for p in problems), problems


def test_a_bare_profiler_off_is_off_and_other_booleans_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("name: p\nexperiment:\n  measurement: {profiler: off}\n")  # YAML reads the bare word as false
    experiments = load_plan(file).experiments
    assert experiments[0].measurement.profiler == "off"
    file.write_text("name: p\nexperiment:\n  measurement: {profiler: on}\n")
    with pytest.raises(ConfigError, match="profiler: must be one of 'off' or 'flops'"):
        load_plan(file)
