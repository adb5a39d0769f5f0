"""`lem results export`, `columns` and `compare` through the real stack: a 2 experiment x 3 cycle CPU campaign,
exported at both levels in every format and read back with pandas as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lem_planner.export import COLUMNS
from lem_shared.db.models import RUN_SCHEMA_VERSION

SWEEP = {
    "name": "export-sweep",
    "cycles": 3,
    "experiment": {"model": "random:llama-tiny", "workload": {"num_prompts": 2, "input_len": 8, "output_len": 4},
                   "measurement": {"min_window_s": 0, "warmup_max": 3}},
    "grid": {"batch_size": [1, 2]},
}
READERS = {"csv": pd.read_csv, "parquet": pd.read_parquet, "json": pd.read_json}


@pytest.fixture(scope="module")
def campaign_id(workers, lem, tmp_path_factory) -> int:  # noqa: ANN001
    spec = tmp_path_factory.mktemp("export") / "campaign.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    result = lem("campaign", "run", str(spec), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr + workers.log("pytorch")[-3000:]
    listed = json.loads(lem("campaign", "list", "--json").stdout)
    return max(c["id"] for c in listed if c["name"] == "export-sweep")


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_run_level_export_reads_back_with_pandas_and_every_column_is_documented(
        lem, campaign_id: int, tmp_path: Path, fmt: str) -> None:  # noqa: ANN001
    path = tmp_path / f"runs.{fmt}"
    result = lem("results", "export", str(campaign_id), "--format", fmt, "-o", str(path))
    assert result.returncode == 0, result.stderr
    assert f"6 run rows of campaign {campaign_id}" in result.stdout
    frame = READERS[fmt](path)
    documented = [c.name for c in COLUMNS["run"]]
    assert list(frame.columns[:len(documented)]) == documented
    assert all(name.startswith("config.") for name in frame.columns[len(documented):])
    assert len(frame) == 6 and set(frame["status"]) == {"done"} and set(frame["cycle"]) == {0, 1, 2}
    assert sorted(frame["config.batch_size"].tolist()) == [1, 1, 1, 2, 2, 2]
    assert (frame["tokens_per_s"] > 0).all() and (frame["output_tokens"] > 0).all()
    assert (frame["ttft_p50_s"] <= frame["ttft_p90_s"]).all() and (frame["ttft_p90_s"] <= frame["ttft_p99_s"]).all()
    assert (frame["effective_batch_size"] == frame["batch_size"]).all()
    assert frame["energy_j"].isna().all()  # a CPU campaign: no NVML, no energy
    assert set(frame["schema_version"]) == {RUN_SCHEMA_VERSION} and set(frame["tool_version"]) == {"lem 0.1.0"}
    assert set(frame["campaign_source"]) == {"lem"}


def test_experiment_level_export_has_means_and_bootstrap_intervals(lem, campaign_id: int, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / "experiments.csv"
    assert lem("results", "export", str(campaign_id), "--level", "experiment", "-o", str(path)).returncode == 0
    frame = pd.read_csv(path)
    assert list(frame.columns[:len(COLUMNS["experiment"])]) == [c.name for c in COLUMNS["experiment"]]
    assert frame["runs_done"].tolist() == [3, 3] and frame["tokens_per_s_n"].tolist() == [3, 3]
    assert (frame["tokens_per_s_ci_low"] <= frame["tokens_per_s_mean"]).all()
    assert (frame["tokens_per_s_mean"] <= frame["tokens_per_s_ci_high"]).all()


def test_columns_lists_name_unit_and_meaning(lem) -> None:  # noqa: ANN001
    columns = json.loads(lem("results", "columns", "--json").stdout)
    assert {"name": "j_per_token", "unit": "J/token", "meaning": "energy_j over output tokens"} in columns
    assert all(c["meaning"] for c in columns)


def test_compare_two_experiments_and_a_campaign_with_itself(lem, campaign_id: int) -> None:  # noqa: ANN001
    rows = json.loads(lem("results", "compare", f"{campaign_id}:0", f"{campaign_id}:1", "--json").stdout)
    assert [r["metric"] for r in rows] == ["j_per_token", "energy_j", "tokens_per_s", "ttft_mean_s", "itl_mean_s"]
    throughput = rows[2]
    assert throughput["a"] == f"{campaign_id}:0" and throughput["b"] == f"{campaign_id}:1"
    assert throughput["diff_pct"] == pytest.approx(100 * (throughput["b_mean"] / throughput["a_mean"] - 1))
    assert isinstance(throughput["ci_overlap"], bool)
    assert rows[0]["diff_pct"] is None and rows[0]["ci_overlap"] is None  # no energy on a CPU

    same = json.loads(lem("results", "compare", str(campaign_id), str(campaign_id), "--json").stdout)
    assert {r["paired"] for r in same} == {"same config"} and len(same) == 10
    assert all(r["diff_pct"] == 0 and r["ci_overlap"] for r in same if r["metric"] == "tokens_per_s")
    table = lem("results", "compare", f"{campaign_id}:0", f"{campaign_id}:1").stdout
    assert "tokens_per_s" in table and "B vs A" in table


def test_bad_sides_and_campaigns_get_one_line_and_exit_2(lem, campaign_id: int, tmp_path: Path) -> None:  # noqa: ANN001
    for args, expected in [
        (("compare", "abc", "1"), "give a campaign id (12) or an experiment as campaign:index (12:3)"),
        (("compare", f"{campaign_id}:9", f"{campaign_id}:0"), f"campaign {campaign_id} has no experiment 9"),
        (("compare", "999999", "1"), "no campaign 999999"),
        (("export", "999999", "-o", str(tmp_path / "x.csv")), "no campaign 999999"),
        (("export", str(campaign_id), "--format", "xlsx", "-o", str(tmp_path / "x")), "xlsx"),
    ]:
        result = lem("results", *args)
        assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr, args
