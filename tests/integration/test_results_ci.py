"""Bootstrap CIs across cycles through the real stack: a 1 experiment x 3 cycle campaign on CPU, then
``lem results show`` with its per-experiment table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

THREE_CYCLES = {
    "name": "three-cycles-ci",
    "cycles": 3,
    "experiment": {
        "model": "random:llama-tiny",
        "workload": {"num_prompts": 2, "input_len": 8, "output_len": 4},
        "measurement": {"min_window_s": 0, "warmup_max": 3},
    },
}


def test_results_show_gives_a_bootstrap_ci_per_experiment(workers, lem, tmp_path: Path) -> None:  # noqa: ANN001
    spec = tmp_path / "campaign.yaml"
    spec.write_text(yaml.safe_dump(THREE_CYCLES))
    result = lem("campaign", "run", str(spec), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr + workers.log("pytorch")[-3000:]
    listed = json.loads(lem("campaign", "list", "--json").stdout)
    campaign_id = max(c["id"] for c in listed if c["name"] == "three-cycles-ci")

    shown = json.loads(lem("results", "show", str(campaign_id), "--json", "--experiments").stdout)
    assert [r["cycle"] for r in shown["runs"]] == [0, 1, 2]
    assert all(r["itl_mean_s"] is not None and r["itl_mean_s"] > 0 for r in shown["runs"])
    [experiment] = shown["experiments"]
    assert experiment["runs_done"] == 3 and experiment["ci"]["resamples"] == 10_000
    throughput = experiment["metrics"]["tokens_per_s"]
    assert throughput["n"] == 3 and throughput["ci_low"] <= throughput["mean"] <= throughput["ci_high"]
    assert throughput["warning"] is None and experiment["warnings"] == []
    itl = experiment["metrics"]["itl_mean_s"]
    assert itl["n"] == 3 and itl["ci_low"] <= itl["mean"] <= itl["ci_high"]
    energy = experiment["metrics"]["j_per_token"]
    assert energy["mean"] is None and energy["ci_low"] is None and energy["reason"] == "no energy figures (no NVML)"

    # The plain --json stays the list of runs.
    assert json.loads(lem("results", "show", str(campaign_id), "--json").stdout) == shown["runs"]

    table = lem("results", "show", str(campaign_id), "--resamples", "2000", "--seed", "5").stdout
    assert "2,000 resamples, seed 5" in table and "no energy figures (no NVML)" in table
