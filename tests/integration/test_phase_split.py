"""PREC-01/02 on a CPU through the whole system: a campaign with measurement.phase_split and profiler: flops.
The run measures a prefill-only window after the full one and counts FLOPs in an unmeasured pass; the finaliser
splits time per phase (no energy without NVML) and compares counted with analytic FLOPs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lem_shared.db.models import Run
from lem_shared.db.session import session_scope

SPLIT = {
    "name": "phase-split-cpu",
    "cycles": 1,
    "experiment": {
        "model": "random:llama-tiny",
        "batch_size": 2,
        "workload": {"num_prompts": 2, "input_len": 64, "output_len": 16},
        "measurement": {"min_window_s": 1, "warmup_max": 4, "phase_split": True, "profiler": "flops"},
    },
}


def test_phase_split_and_counted_flops_reach_the_results(workers, lem, tmp_path: Path) -> None:  # noqa: ANN001
    spec = tmp_path / "campaign.yaml"
    spec.write_text(yaml.safe_dump(SPLIT))
    result = lem("campaign", "run", str(spec), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr + workers.log("pytorch")[-3000:]
    campaign_id = max(
        c["id"] for c in json.loads(lem("campaign", "list", "--json").stdout) if c["name"] == "phase-split-cpu"
    )
    [record] = json.loads(lem("results", "show", str(campaign_id), "--json").stdout)
    split = record["phase_split"]
    prefill, decode = split["per_prompt"]["prefill"], split["per_prompt"]["decode"]
    assert 0 < prefill["time_s"] < split["full"]["time_s"] and decode["time_s"] > 0
    assert prefill["time_s"] + decode["time_s"] == pytest.approx(split["full"]["time_s"])
    assert prefill["tokens"] == 64 and decode["tokens"] == 15 and decode["tokens_per_s"] > 0
    assert prefill["energy_j"] is None  # a CPU: no energy counter, the time split stands alone
    assert prefill["flops"] > 0 and decode["flops"] > 0
    assert split["problems"] == []
    ratio = record["flops"]["ratio"]
    assert ratio["prefill"] == pytest.approx(1.0, rel=0.10) and ratio["decode"] == pytest.approx(1.0, rel=0.10)
    with session_scope() as s:
        run = s.get(Run, record["run_id"])
        start, end = run.phases["prefill"]["window"]
        assert end > start >= run.window_end.timestamp()  # the prefill window comes after the full one

    path = tmp_path / "runs.csv"
    assert lem("results", "export", str(campaign_id), "-o", str(path)).returncode == 0
    row = pd.read_csv(path).iloc[0]
    assert row["decode_time_s"] == pytest.approx(decode["time_s"]) and row["prefill_tflops"] > 0
    assert row["flops_counted_ratio_decode"] == pytest.approx(ratio["decode"])
