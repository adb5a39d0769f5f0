"""A campaign through the whole system: lem CLI → Redis → real Celery workers → CPU inference → PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from lem_shared.db.models import BatchTimingRow, Campaign, Experiment, Run, RunMetrics
from lem_shared.db.session import session_scope
from lem_shared.measure.analysis import ENERGY_CHECKS, NO_TELEMETRY
from lem_shared.wire.messages import RunRequest
from lem_shared.wire.queues import RUN_TASK, QueueName

SMALL = {
    "name": "two-batch-sizes",
    "cycles": 1,
    "experiment": {
        "model": "random:llama-tiny",
        "workload": {"num_prompts": 4, "input_len": 16, "output_len": 8},
        "measurement": {"min_window_s": 0.2},
    },
    "grid": {"batch_size": [1, 2]},
}


def write(tmp_path: Path, spec: dict, name: str = "campaign.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def campaign_count() -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Campaign)) or 0


@pytest.fixture(scope="module")
def finished_campaign(workers, lem, tmp_path_factory) -> int:  # noqa: ANN001
    result = lem("campaign", "run", str(write(tmp_path_factory.mktemp("c"), SMALL)), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr + workers.log("pytorch")[-3000:]
    listed = json.loads(lem("campaign", "list", "--json").stdout)
    return max(c["id"] for c in listed if c["name"] == "two-batch-sizes")


def test_campaign_runs_end_to_end_and_lands_in_postgres(finished_campaign: int) -> None:
    with session_scope() as s:
        campaign = s.get(Campaign, finished_campaign)
        assert campaign is not None and campaign.status == "done" and campaign.finished_at is not None
        experiments = s.scalars(select(Experiment).where(Experiment.campaign_id == finished_campaign)).all()
        assert sorted(e.config["batch_size"] for e in experiments) == [1, 2]
        runs = s.scalars(select(Run).where(Run.campaign_id == finished_campaign)).all()
        assert len(runs) == 2
        for run in runs:
            assert run.status == "done" and run.attempts == 1 and run.error is None
            assert run.worker is not None and run.worker.startswith("pytorch@")
            assert run.device == "cpu" and run.gpu_uuid is None and run.environment_id is not None
            assert run.window_start is not None and run.window_end is not None and run.window_end > run.window_start
            m = s.get(RunMetrics, run.id)
            assert m is not None
            assert m.output_tokens == m.passes * 4 * 8 and m.input_tokens == m.passes * 4 * 16
            assert m.requests == m.passes * 4
            assert m.tokens_per_s > 0 and m.latency_mean_s > 0 and m.ttft_mean_s is not None
            assert 0 < m.ttft_mean_s < m.latency_mean_s
            assert m.energy_j is None and (m.energy_note or "").startswith("n/a (no NVML)")
            batch_size = s.get(Experiment, run.experiment_id).config["batch_size"]  # type: ignore[union-attr]
            timings = s.scalars(select(BatchTimingRow).where(BatchTimingRow.run_id == run.id)).all()
            assert len(timings) == m.passes * 4 // batch_size
            assert sum(t.output_tokens for t in timings) == m.output_tokens
            assert m.warmup_iterations >= 3
            # No GPU telemetry, yet a verdict: from the checks that need none, by the GPU runs' rules.
            checks = {c["name"]: c for c in (m.analysis or {}).get("checks", [])}
            assert checks["tokens_counted"]["status"] == "pass"
            assert checks["window_duration"]["status"] == "pass"  # the window repeats until min_window_s
            assert checks["warmup_converged"]["status"] == ("pass" if m.warmup_converged else "warning")
            assert f"vs {0.05:g}" in checks["warmup_converged"]["message"]
            assert checks["latency_spread"]["status"] in ("pass", "warning")
            assert "batch latency CV" in checks["latency_spread"]["message"]
            assert all(checks[n]["status"] == "skipped" and checks[n]["message"] == NO_TELEMETRY for n in ENERGY_CHECKS)
            statuses = {c["status"] for c in checks.values()}
            assert m.verdict == ("warning" if "warning" in statuses else "valid")


def test_results_show_and_campaign_list_return_it(finished_campaign: int, lem) -> None:  # noqa: ANN001
    listed = json.loads(lem("campaign", "list", "--json").stdout)
    row = next(c for c in listed if c["id"] == finished_campaign)
    assert row["status"] == "done" and set(row) >= {"id", "name", "status", "created"}
    records = json.loads(lem("results", "show", str(finished_campaign), "--json").stdout)
    summary = [(r["experiment"]["batch_size"], r["cycle"], r["status"]) for r in records]
    assert summary == [(1, 0, "done"), (2, 0, "done")]
    assert all(r["tokens_per_s"] > 0 and r["energy_j"] is None for r in records)
    table = lem("results", "show", str(finished_campaign)).stdout
    assert "batch_size=1" in table and "n/a (no NVML)" in table
    assert all(r["verdict"] in ("valid", "warning") and r["checks"] for r in records)


def test_redelivered_task_for_a_finished_run_does_nothing(finished_campaign: int, celery_app) -> None:  # noqa: ANN001
    with session_scope() as s:
        run = s.scalars(select(Run).where(Run.campaign_id == finished_campaign).order_by(Run.id)).first()
        assert run is not None
        timings_before = s.scalar(select(func.count()).where(BatchTimingRow.run_id == run.id))
        message = RunRequest(
            run_key=run.run_key,
            run_id=run.id,
            campaign_id=run.campaign_id,
            cycle=run.cycle,
            experiment=run.experiment.config,
        ).model_dump(mode="json")
    # The same message again, as the broker would redeliver it after a lost acknowledgement.
    reply = celery_app.send_task(RUN_TASK, args=[message], queue=QueueName.PYTORCH.value, task_id=str(uuid.uuid4()))
    assert reply.get(timeout=60) == {"run_key": message["run_key"], "status": "duplicate"}
    with session_scope() as s:
        again = s.get(Run, message["run_id"])
        assert again is not None and again.attempts == 1 and again.status == "done"
        assert s.scalar(select(func.count()).where(BatchTimingRow.run_id == again.id)) == timings_before


def test_worker_answers_ping_during_a_run(workers, lem, celery_app, tmp_path: Path) -> None:  # noqa: ANN001
    slow = {
        **SMALL,
        "name": "slow",
        "grid": {},
        "experiment": {
            **SMALL["experiment"],
            "workload": {"num_prompts": 2, "input_len": 128, "output_len": 96},
            # A window of 4 s keeps the run going while the worker is pinged, however fast the CPU is.
            "measurement": {"min_window_s": 4, "warmup_max": 4},
        },
    }
    started = lem("campaign", "run", str(write(tmp_path, slow)), "--no-wait")
    assert started.returncode == 0, started.stderr
    campaign_id = max(c["id"] for c in json.loads(lem("campaign", "list", "--json").stdout))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with session_scope() as s:
            status = s.scalar(select(Run.status).where(Run.campaign_id == campaign_id))
        if status == "running":
            break
        time.sleep(0.1)
    assert status == "running"
    replies = celery_app.control.ping(
        destination=[r for r in _worker_names(celery_app) if r.startswith("pytorch@")], timeout=2.0
    )
    assert replies and all(list(r.values())[0] == {"ok": "pong"} for r in replies)
    with session_scope() as s:
        assert s.scalar(select(Run.status).where(Run.campaign_id == campaign_id)) == "running"
    _wait_finished(campaign_id)


def _worker_names(app) -> list[str]:  # noqa: ANN001
    return [next(iter(r)) for r in app.control.ping(timeout=1.0)]


def _wait_finished(campaign_id: int, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as s:
            status = s.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
        if status != "running":
            return str(status)
        time.sleep(0.25)
    raise AssertionError(f"campaign {campaign_id} still running after {timeout} s")


def test_engine_failure_fails_the_run_with_its_reason_and_the_worker_carries_on(
    workers,
    lem,
    celery_app,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    broken = {
        **SMALL,
        "name": "missing-model",
        "grid": {},
        "experiment": {**SMALL["experiment"], "model": "lem-tests/no-such-model"},
    }
    result = lem("campaign", "run", str(write(tmp_path, broken)), "--wait")
    assert result.returncode == 1
    assert "ended failed" in result.stderr and "Traceback" not in result.stderr + result.stdout
    campaign_id = max(c["id"] for c in json.loads(lem("campaign", "list", "--json").stdout))
    records = json.loads(lem("results", "show", str(campaign_id), "--json").stdout)
    assert [r["status"] for r in records] == ["failed"]
    assert "no-such-model" in records[0]["error"]
    # The engine host failed, the worker did not: the next campaign runs.
    ok = lem("campaign", "run", str(write(tmp_path, {**SMALL, "name": "after-failure", "grid": {}}, "ok.yaml")))
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({**SMALL, "grid": {"batch_size": []}}, "grid.batch_size: must list at least one value"),
        ({**SMALL, "colour": "red"}, "colour: unknown key"),
        ({**SMALL, "cycles": "two"}, "cycles: must be an integer"),
        ({**SMALL, "experiment": {**SMALL["experiment"], "backend": "tpu"}}, "experiment.backend: must be one of"),
        # A grid whose every point is invalid (an invalid point among valid ones is skipped, see test_grid.py).
        ({**SMALL, "grid": {"batch_size": [8, 0]}}, "batch_size (8) must be <= workload.num_prompts (4)"),
    ],
)
def test_bad_campaign_is_rejected_before_anything_is_written(
    stack_env,
    lem,
    tmp_path: Path,
    spec: dict,
    expected: str,  # noqa: ANN001
) -> None:
    before = campaign_count()
    result = lem("campaign", "run", str(write(tmp_path, spec)), "--wait")
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert campaign_count() == before
