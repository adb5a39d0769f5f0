"""The Python API against the test stack's real workers: api.plan, api.run (wait), status, cancel, and results with
typed tables, checked against what the CLI says of the same campaign."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

import lem as api  # `lem` is the fixture running the CLI

SMALL = {
    "name": "api-two-batch-sizes",
    "cycles": 1,
    "experiment": {
        "model": "random:llama-tiny",
        "workload": {"num_prompts": 4, "input_len": 16, "output_len": 8},
        "measurement": {"min_window_s": 0.2},
    },
    "grid": {"batch_size": [1, 2]},
}
SLOW = {
    **SMALL,
    "name": "api-slow",
    "grid": {},
    "cycles": 3,
    "experiment": {**SMALL["experiment"], "measurement": {"min_window_s": 30, "warmup_max": 4}},
}


@pytest.fixture(scope="module")
def finished(workers, tmp_path_factory: pytest.TempPathFactory) -> api.Campaign:  # noqa: ANN001
    path = tmp_path_factory.mktemp("api") / "campaign.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    handle = api.run(path, wait=True, timeout=300)
    return handle


def test_plan_from_a_mapping_and_from_a_file_agree(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    from_dict, from_file = api.plan(SMALL), api.plan(path)
    assert [e.batch_size for e in from_dict.experiments] == [1, 2] and from_dict.skipped == []
    assert from_dict.to_json() == from_file.to_json() and from_dict.config_hashes == from_file.config_hashes
    assert json.loads(from_dict.to_json())["campaign"]["name"] == "api-two-batch-sizes"


def test_a_bad_campaign_names_its_field() -> None:
    bad = {**SMALL, "experiment": {**SMALL["experiment"], "workload": {"num_prompts": -1}}}
    with pytest.raises(api.CampaignFileError) as caught:
        api.plan(bad)
    assert isinstance(caught.value, ValueError)
    assert any("num_prompts" in problem for problem in caught.value.problems)
    with pytest.raises(ValueError, match="campaign must be a campaign file's path or a mapping"):
        api.plan(42)  # type: ignore[arg-type]


def test_run_waits_and_results_match_the_cli(finished: api.Campaign, lem) -> None:  # noqa: ANN001
    status = finished.status()
    assert status["status"] == "done" and status["finished"] == status["total"] == 2
    assert finished.wait(timeout=0) == "done"
    results = api.results(finished.id)
    shown = json.loads(lem("results", "show", str(finished.id), "--json").stdout)
    assert len(results) == 2
    assert [(r["experiment"]["batch_size"], r["status"]) for r in results.to_dicts()] == [(1, "done"), (2, "done")]
    assert [r["run_id"] for r in results.to_dicts()] == [r["run_id"] for r in shown]
    assert [r.tokens_per_s for r in results] == [r["tokens_per_s"] for r in shown]


def test_tables_are_typed_as_the_export(finished: api.Campaign, lem, tmp_path: Path) -> None:  # noqa: ANN001
    results = api.results(finished.id)
    table = results.to_arrow()
    exported = tmp_path / "runs.parquet"
    assert lem("results", "export", str(finished.id), "-o", str(exported)).returncode == 0
    assert table.schema.equals(pq.read_schema(exported), check_metadata=True)
    frame = results.to_pandas()
    assert len(frame) == 2
    # A CPU run has no energy: the column is still a number, NaN, never object.
    assert frame["energy_j"].dtype == "float64" and frame["energy_j"].isna().all()
    assert frame["tokens_per_s"].dtype == "float64" and (frame["tokens_per_s"] > 0).all()
    assert frame["run_id"].dtype == pd.Int64Dtype() and frame["batch_size"].tolist() == [1, 2]
    assert str(frame["window_start"].dtype) == "datetime64[us, UTC]"
    assert (frame["window_end"] > frame["window_start"]).all()


def test_run_without_waiting_then_cancel(workers, tmp_path: Path) -> None:  # noqa: ANN001
    handle = api.run(SLOW)
    assert handle.name == "api-slow" and handle.status()["status"] == "running"
    counts = handle.cancel()
    assert counts["cancelled"] is True and counts["queued"] + counts["stopping"] + counts["orphaned"] == 3
    assert handle.wait(timeout=120) == "cancelled"
    assert handle.cancel()["already"] == "cancelled"
    deadline = time.monotonic() + 60  # a run being measured is stopped by its worker within a second or so
    while handle.status()["finished"] < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    # Every run cancelled, some before any figure: the number columns stay numbers.
    frame = api.results(handle.id).to_pandas()
    assert set(frame["status"]) == {"cancelled"}
    assert frame["j_per_token"].dtype == "float64" and frame["output_tokens"].dtype == pd.Int64Dtype()


def test_an_id_that_names_nothing(workers) -> None:  # noqa: ANN001
    with pytest.raises(api.NoSuchCampaign):
        api.results(2**31 - 2)
    with pytest.raises(LookupError):
        api.campaign(2**31 - 2)
    with pytest.raises(ValueError, match="campaign_id must be a whole number"):
        api.results(0)
