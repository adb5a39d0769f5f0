"""Plan-time checks against the engine version in use: the snapshot a campaign pins, the live workers advertise,
or the newest committed one; a parameter the version in use lacks is refused naming that version."""

from __future__ import annotations

import json

import pytest

from lem_shared.config.errors import ConfigError
from lem_shared.config.plan import plan_campaign
from lem_shared.config.schema import ExperimentConfig
from lem_shared.params.coverage import coverage
from lem_shared.params.snapshots import (
    SnapshotError,
    choose_snapshot,
    committed_versions,
    installed_context,
    parameter_groups,
    snapshot,
)

# In vLLM 0.33.0, not in 0.26.0 (first-class), and the other way round (reachable through extra only).
NEW_FIELD = {"engine": {"max_num_active_seqs": 8}}
OLD_EXTRA = {"extra": {"max_num_partial_prefills": 2}}


def _campaign(vllm: dict, pin: str | None = None) -> dict:
    raw = {"name": "v", "experiment": {"backend": "vllm", "model": "random:llama-1b", "vllm": vllm}}
    if pin:
        raw["engine_versions"] = {"vllm": pin}
    return raw


def _problems(raw: dict, advertised: dict | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        plan_campaign(raw, advertised)
    return "\n".join(caught.value.problems)


def test_both_vllm_snapshots_are_committed_and_differ() -> None:
    assert {"0.26.0", "0.33.0"} <= set(committed_versions("vllm"))
    assert "max_num_active_seqs" in parameter_groups("vllm", "0.33.0")["engine"]
    assert "max_num_active_seqs" not in parameter_groups("vllm", "0.26.0")["engine"]
    assert "max_num_partial_prefills" in parameter_groups("vllm", "0.26.0")["engine"]


def test_a_field_only_newer_vllm_has_is_accepted_pinned_to_it_and_refused_naming_the_older() -> None:
    plan = plan_campaign(_campaign(NEW_FIELD, pin="0.33.0"))
    assert plan.experiments[0].vllm.engine.max_num_active_seqs == 8
    assert plan.snapshots["vllm"].version == "0.33.0"
    text = _problems(_campaign(NEW_FIELD, pin="0.26.0"))
    assert (
        "vllm.engine.max_num_active_seqs: vLLM 0.26.0 has no parameter 'max_num_active_seqs' (snapshot vllm-0.26.0)"
    ) in text


def test_an_extra_only_older_vllm_has_is_accepted_pinned_to_it_and_refused_by_the_newer() -> None:
    plan = plan_campaign(_campaign(OLD_EXTRA, pin="0.26.0"))
    assert plan.experiments[0].vllm.extra == {"engine.max_num_partial_prefills": 2}
    assert "max_num_partial_prefills: not a parameter of vllm 0.33.0" in _problems(_campaign(OLD_EXTRA, pin="0.33.0"))


def test_the_advertised_version_picks_the_snapshot_and_the_pin_wins_with_a_warning() -> None:
    advertised = {"vllm": {"vllm@gpu0": "0.26.0", "vllm@gpu1": "0.26.0"}}
    assert "vLLM 0.26.0 has no parameter 'max_num_active_seqs'" in _problems(_campaign(NEW_FIELD), advertised)
    plan = plan_campaign(_campaign(OLD_EXTRA), advertised)
    assert plan.snapshots["vllm"].note == (
        "vllm: checked against snapshot vllm-0.26.0 (live vllm workers run vLLM 0.26.0)"
    )
    pinned = plan_campaign(_campaign(NEW_FIELD, pin="0.33.0"), advertised).snapshots["vllm"]
    assert pinned.version == "0.33.0"
    assert pinned.warning == (
        "vllm: engine_versions pins vLLM 0.33.0, but live workers run vllm@gpu0: 0.26.0, vllm@gpu1: 0.26.0"
    )


def test_without_a_live_worker_the_plan_names_the_newest_snapshot() -> None:
    newest = committed_versions("vllm")[-1]
    plan = plan_campaign(_campaign({}))
    assert plan.snapshots["vllm"].note == f"vllm: checked against snapshot vllm-{newest} (no live vllm worker)"
    assert list(plan.snapshots) == ["vllm"]  # only the backends the campaign uses
    assert '"snapshots":{"vllm":{"snapshot":"vllm-' + newest in plan.to_json()


def test_workers_on_different_versions_are_refused_unless_pinned() -> None:
    advertised = {"vllm": {"vllm@a": "0.26.0", "vllm@b": "0.33.0"}}
    text = _problems(_campaign({}), advertised)
    assert "vllm: live workers run different vLLM versions (vllm@a: 0.26.0, vllm@b: 0.33.0)" in text
    assert "engine_versions: {vllm: VERSION}" in text
    assert plan_campaign(_campaign({}, pin="0.33.0"), advertised).snapshots["vllm"].warning is not None
    # a backend the campaign does not use does not matter
    plan_campaign({"name": "p", "experiment": {"backend": "pytorch"}}, advertised)


def test_a_version_without_a_snapshot_uses_the_nearest_older_and_says_so() -> None:
    choice = choose_snapshot("vllm", "0.27.1+cu129", {})
    assert choice.version == "0.26.0"
    assert "no snapshot of 0.27.1: the nearest older" in choice.note and "lem params discover vllm" in choice.note
    with pytest.raises(SnapshotError, match=r"no committed snapshot of vLLM 0\.20\.0 or older .*lem params discover"):
        choose_snapshot("vllm", "0.20.0", {})
    assert "no committed snapshot of vLLM 0.20.0 or older" in _problems(_campaign({}, pin="0.20.0"))


def test_pytorch_5_17_snapshot_loads_and_is_used_when_pinned() -> None:
    found = snapshot("pytorch", "5.17.0")
    assert found is not None and found["engine_version"] == "5.17.0"
    assert found["components"]["transformers"] == "5.17.0"
    raw = {
        "name": "p",
        "engine_versions": {"pytorch": "5.17.0"},
        "experiment": {"model": "org/m", "pytorch": {"extra": {"top_kk": 3}}},
    }
    assert "top_kk: not a parameter of pytorch 5.17.0; did you mean top_k" in _problems(raw)
    raw["experiment"]["pytorch"]["extra"] = {"renormalize_logits": True}
    plan = plan_campaign(raw)
    assert plan.snapshots["pytorch"].note == (
        "pytorch: checked against snapshot pytorch-5.17.0 (pinned by engine_versions.pytorch: 5.17.0)"
    )


def test_where_it_runs_an_experiment_is_checked_against_the_installed_engine() -> None:
    config = json.loads(plan_campaign(_campaign(OLD_EXTRA, pin="0.26.0")).config_json[0])
    assert ExperimentConfig.model_validate(config, context=installed_context({"vllm": "0.26.0"})).vllm.extra
    with pytest.raises(ValueError, match="not a parameter of vllm 0.33.0"):
        ExperimentConfig.model_validate(config, context=installed_context({"vllm": "0.33.0", "torch": "2.13.0"}))


def test_vllm_0_26_coverage_has_every_parameter_classified() -> None:
    report = coverage("vllm", "0.26.0")
    assert report["engine_version"] == "0.26.0" and report["unclassified"] == []
    assert report["discovered"] == report["relevant"] + report["not_relevant"]
