"""The workload section: synthetic or dataset prompts, offline or serving mode, and what each combination allows."""

from __future__ import annotations

import pytest

from lem_shared.config.errors import ConfigError
from lem_shared.config.plan import plan_campaign
from lem_shared.config.schema import ExperimentConfig


def plan(experiment: dict) -> ExperimentConfig:
    return plan_campaign({"name": "w", "experiment": experiment}).experiments[0]


def problems(experiment: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        plan(experiment)
    return "\n".join(caught.value.problems)


def test_an_offline_synthetic_experiment_keeps_its_config_hash() -> None:
    # The hash of the default experiment before the serving and dataset fields existed (commit 6a93ac4): they are
    # left out of the JSON at their defaults, so earlier campaigns compare with new ones.
    assert ExperimentConfig().config_hash() == "6d189d46b0c4258fbd7a897fc779129d47e9da85056b51ebc1c02a02d6ac026d"
    serving = plan({"workload": {"mode": "serving", "request_rate": 4.0}})
    assert serving.config_hash() != ExperimentConfig().config_hash()
    assert serving.model_dump(mode="json")["workload"]["request_rate"] == 4.0


def test_a_serving_dataset_workload_plans_with_its_fields() -> None:
    e = plan(
        {
            "workload": {
                "kind": "dataset",
                "source": "sharegpt",
                "mode": "serving",
                "request_rate": 2.5,
                "burstiness": 0.5,
                "max_concurrency": 8,
                "slo": {"ttft_ms": 500, "tpot_ms": 50},
                "input_len": 1024,
                "output_len": 512,
            }
        }
    )
    w = e.workload
    assert (w.kind, w.source, w.mode, w.request_rate, w.burstiness, w.max_concurrency) == (
        "dataset",
        "sharegpt",
        "serving",
        2.5,
        0.5,
        8,
    )
    assert w.slo is not None and (w.slo.ttft_ms, w.slo.tpot_ms, w.slo.e2e_ms) == (500, 50, None)


def test_request_rate_and_max_concurrency_are_grid_axes() -> None:
    experiments = plan_campaign(
        {
            "name": "sweep",
            "experiment": {"workload": {"mode": "serving"}},
            "grid": {"workload.request_rate": [1.0, 4.0], "workload.max_concurrency": [2, 8]},
        }
    ).experiments
    assert [(e.workload.request_rate, e.workload.max_concurrency) for e in experiments] == [
        (1.0, 2),
        (1.0, 8),
        (4.0, 2),
        (4.0, 8),
    ]


@pytest.mark.parametrize(
    "experiment, expected",
    [
        ({"workload": {"kind": "dataset"}}, "workload.source: a dataset workload needs one"),
        ({"workload": {"source": "sharegpt"}}, "workload.source: applies to kind: dataset only"),
        ({"workload": {"request_rate": 2.0}}, "workload.request_rate: applies to mode: serving only"),
        ({"workload": {"max_concurrency": 4}}, "workload.max_concurrency: applies to mode: serving only"),
        ({"workload": {"slo": {"ttft_ms": 100}}}, "workload.slo: applies to mode: serving only"),
        ({"workload": {"kind": "dataset", "source": "sharegpt"}}, "set output_lengths: forced"),
        ({"workload": {"mode": "serving", "slo": {}}}, "give at least one of ttft_ms, tpot_ms, e2e_ms"),
        ({"workload": {"mode": "serving", "request_rate": 0}}, "workload.request_rate: must be > 0"),
        ({"workload": {"mode": "serving", "burstiness": -1}}, "workload.burstiness: must be > 0"),
        ({"workload": {"mode": "streaming"}}, "workload.mode: must be one of 'offline' or 'serving'"),
        ({"batch_size": 4, "workload": {"mode": "serving"}}, "batch_size: does not apply to workload.mode: serving"),
        ({"backend": "trtllm", "workload": {"mode": "serving"}}, "no TensorRT-LLM driver yet"),
        (
            {"workload": {"mode": "serving"}, "measurement": {"phase_split": True}},
            "measurement.phase_split and measurement.profiler: offline mode only",
        ),
    ],
)
def test_what_a_combination_does_not_allow_is_refused_naming_the_field(experiment: dict, expected: str) -> None:
    assert expected in problems(experiment)


def test_an_offline_dataset_workload_with_forced_lengths_plans() -> None:
    e = plan({"workload": {"kind": "dataset", "source": "prompts.jsonl", "output_lengths": "forced"}})
    assert (e.workload.kind, e.workload.output_lengths, e.workload.mode) == ("dataset", "forced", "offline")
