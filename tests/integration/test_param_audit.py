"""PARAM-05 on a CPU: the audit campaign (configs/campaigns/audit-pytorch-cpu.yaml) through the whole system.
Every CPU-capable pytorch parameter runs in a real engine, and each run's tokens are what its parameters ask for."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from lem_shared.config.plan import load_plan
from lem_shared.config.schema import ExperimentConfig
from lem_shared.db.models import Experiment, Run, RunMetrics
from lem_shared.db.session import session_scope

AUDIT = Path(__file__).resolve().parents[2] / "configs" / "campaigns" / "audit-pytorch-cpu.yaml"


def test_every_cpu_capable_pytorch_parameter_runs_for_real(workers, lem) -> None:  # noqa: ANN001
    plan = load_plan(AUDIT)
    result = lem("campaign", "run", str(AUDIT), "--wait", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr + workers.log("pytorch")[-3000:]
    listed = json.loads(lem("campaign", "list", "--json").stdout)
    campaign_id = max(c["id"] for c in listed if c["name"] == "audit-pytorch-cpu")
    with session_scope() as s:
        rows = s.execute(
            select(Run, Experiment, RunMetrics)
            .join(Experiment, Run.experiment_id == Experiment.id)
            .outerjoin(RunMetrics, RunMetrics.run_id == Run.id)
            .where(Run.campaign_id == campaign_id)
        ).all()
        failed = {json.dumps(e.config["pytorch"]): r.error for r, e, _ in rows if r.status != "done"}
        assert failed == {}
        assert sorted(e.config_hash for _, e, _ in rows) == sorted(plan.config_hashes)
        for _, experiment, metrics in rows:
            config = ExperimentConfig.model_validate(experiment.config)
            per_batch = config.batch_size * config.workload.output_len * config.section().completions_per_prompt()
            assert metrics.output_tokens % per_batch == 0 and metrics.output_tokens > 0
