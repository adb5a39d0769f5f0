"""`lem campaign plan` through the real command line: experiments per backend and skipped points as JSON, and a
bad file refused with exit code 2. Planning needs neither the broker nor the database."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CAMPAIGN = """
name: plan-cli
experiment: {workload: {num_prompts: 4}}
grid: {batch_size: [1, 4, 8]}
backends:
  pytorch: {pytorch.generation.cache_implementation: [dynamic, static]}
  vllm: {pytorch.generation.cache_implementation: [null, static]}
exclude: [{backend: vllm, batch_size: 4}]
include: [{backend: trtllm, batch_size: 2}]
"""


def test_plan_json_lists_experiments_per_backend_and_skipped_points(lem, tmp_path: Path) -> None:  # noqa: ANN001
    file = tmp_path / "campaign.yaml"
    file.write_text(CAMPAIGN)
    result = lem("campaign", "plan", str(file), "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["campaign"]["name"] == "plan-cli"
    cache = [e["config"]["pytorch"]["generation"].get("cache_implementation") for e in plan["experiments"]]
    assert [
        (e["index"], e["backend"], e["config"]["batch_size"], c)
        for e, c in zip(plan["experiments"], cache, strict=True)
    ] == [
        (0, "pytorch", 1, "dynamic"),
        (1, "pytorch", 1, "static"),
        (2, "pytorch", 4, "dynamic"),
        (3, "pytorch", 4, "static"),
        (4, "vllm", 1, None),
        (5, "trtllm", 2, None),
    ]
    for e in plan["experiments"]:
        canonical = json.dumps(e["config"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert e["config_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    axis = "pytorch.generation.cache_implementation"
    skipped = {
        (s["point"]["backend"], s["point"]["batch_size"], s["point"][axis]): s["reason"] for s in plan["skipped"]
    }
    assert len(skipped) == 7
    assert skipped[("vllm", 1, "static")] == "the pytorch section applies to backend pytorch only (this is vllm)"
    assert skipped[("vllm", 4, None)] == "excluded by exclude[0]"
    assert skipped[("pytorch", 8, "dynamic")] == "batch_size (8) must be <= workload.num_prompts (4)"

    human = lem("campaign", "plan", str(file))
    assert human.returncode == 0, human.stderr
    assert "plan-cli: 6 experiments (4 pytorch, 1 vllm, 1 trtllm), 7 points skipped" in human.stdout


def test_plan_refuses_a_bad_file_with_exit_code_2(lem, tmp_path: Path) -> None:  # noqa: ANN001
    file = tmp_path / "bad.yaml"
    file.write_text("name: bad\nbackends: {vllm: {workload.prompt_len: [1]}}\n")
    result = lem("campaign", "plan", str(file), "--json")
    assert result.returncode == 2
    assert "backends.vllm.workload.prompt_len: unknown parameter" in result.stderr
    assert result.stdout == ""
