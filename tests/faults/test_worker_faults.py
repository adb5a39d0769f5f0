"""Faults around a run in progress, on the private stack with real workers: a worker killed and restarted under its
own name, an unexpected error in the worker, PostgreSQL stopped and Redis killed mid-measurement, and a task
forged on the broker. Every run must end exactly once and be measured once, with a consistent row."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from lem_shared.db.models import Campaign, Experiment, Run, RunMetrics
from lem_shared.db.session import get_engine, session_scope
from lem_shared.dispatch import run_request
from lem_shared.wire.celery_app import make_celery
from lem_shared.wire.heartbeat import live_workers
from lem_shared.wire.queues import RUN_TASK, QueueName
from tests.broker_redis import redis_client
from tests.faults.conftest import FaultStack
from tests.integration.conftest import BIN
from tests.integration.manifest import campaign_status, runs_of
from tests.integration.telemetry_helpers import wait_for

RUN = {
    "model": "random:llama-tiny",
    "workload": {"num_prompts": 2, "input_len": 32, "output_len": 48},
    "measurement": {"min_window_s": 1.0, "warmup_min": 2, "warmup_max": 3},
}


def long_run(window_s: float) -> dict:
    return {**RUN, "measurement": {**RUN["measurement"], "min_window_s": window_s}}


@pytest.fixture
def stack(fault_stack: FaultStack) -> Iterator[FaultStack]:
    """The module's stack, with every worker a test started stopped after it (and both servers up)."""
    yield fault_stack
    fault_stack.workers.stop()
    if not fault_stack.redis.running():
        fault_stack.redis.start()
    if not fault_stack.postgres.running():
        fault_stack.postgres.start()


def lem(stack: FaultStack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "lem"), *args], env=stack.env, capture_output=True, text=True, timeout=timeout)


def start_campaign(stack: FaultStack, tmp_path: Path, name: str, **spec: object) -> int:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "experiment": RUN, **spec}))
    started = lem(stack, "campaign", "run", str(path), "--no-wait", "--no-require-workers")
    assert started.returncode == 0, started.stderr
    with session_scope() as s:
        return int(s.scalar(select(Campaign.id).order_by(Campaign.id.desc()).limit(1)))


def start_workers(stack: FaultStack, *names: str, control: bool = True, **settings: str) -> None:
    """Start the control worker (unless told not to) and pytorch workers ``names``; ``settings``: LEM_ variables."""
    app = make_celery("lem-fault-tests")
    stack.workers.env = {**stack.env, **{f"LEM_{k.upper()}": v for k, v in settings.items()}}
    if control:
        stack.workers.start("control", "lem-control")
    for name in names:
        stack.workers.start(name, "lem-worker-pytorch", "--hostname", f"{name}@%h")
    stack.workers.wait_ready(app, (["control"] if control else []) + list(names))


def kill_group(stack: FaultStack, name: str) -> None:
    """kill -9 of the worker and its engine host, no goodbye."""
    proc, log = stack.workers.procs.pop(name)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()


def assert_measured_once(run: Run) -> None:
    with session_scope() as s:
        assert len(s.scalars(select(RunMetrics.run_id).where(RunMetrics.run_id == run.id)).all()) == 1


def test_a_worker_restarted_under_its_own_name_gets_its_stale_run_requeued(stack: FaultStack, tmp_path: Path) -> None:
    campaign_id = start_campaign(stack, tmp_path, "restart-same-name", cycles=1, experiment=long_run(20))
    # A heartbeat lifetime longer than the worker's restart takes on a busy machine (5 s at load 3 on 2 cores): its
    # name never goes silent. Not longer than that needs: the control worker reclaims nothing until the broker has
    # been up one lifetime, and this module's broker is new (90 s here kept the requeue waiting 75 s).
    start_workers(stack, "pytorch-r", worker_heartbeat_ttl_s="30")
    victim = wait_for(
        lambda: next((r for r in runs_of(campaign_id) if r.status == "running"), None), 120, "the run to start"
    )
    kill_group(stack, "pytorch-r")
    start_workers(stack, "pytorch-r", control=False, worker_heartbeat_ttl_s="30")  # back, same hostname

    wait_for(lambda: campaign_status(campaign_id) != "running", 180, "the campaign to end")
    (run,) = runs_of(campaign_id)
    assert run.status == "done" and run.attempts == 2, (run.status, run.attempts, run.error)
    assert "not running it" in (run.error or ""), run.error
    assert run.worker == victim.worker  # the same name, measuring it anew
    assert_measured_once(run)

    resumed = lem(stack, "campaign", "resume", str(campaign_id), "--no-wait")
    assert resumed.returncode == 0 and "0 dispatched and 0 orphaned" in resumed.stdout, resumed.stdout


def test_an_unexpected_error_in_the_worker_fails_the_run_instead_of_leaving_it_running(
    stack: FaultStack, tmp_path: Path
) -> None:
    campaign_id = start_campaign(stack, tmp_path, "huge-gap", cycles=2)
    with session_scope() as s:  # a gap Event.wait cannot take (OverflowError), as an older planner could send
        campaign = s.get(Campaign, campaign_id)
        campaign.spec = {**campaign.spec, "cycle_gap_s": 1e300}
    start_workers(stack, "pytorch-e")

    wait_for(lambda: campaign_status(campaign_id) != "running", 120, "the campaign to end")
    first, second = runs_of(campaign_id)
    assert first.status == "done"
    assert second.status == "failed" and "gap" in (second.error or ""), (second.status, second.error)
    # The worker carries on: a later campaign on this backend runs.
    later = start_campaign(stack, tmp_path, "after-huge-gap", cycles=1)
    wait_for(lambda: campaign_status(later) != "running", 120, "the later campaign to end")
    assert [r.status for r in runs_of(later)] == ["done"]


def test_postgres_stopped_mid_measurement_the_run_still_ends_once(stack: FaultStack, tmp_path: Path) -> None:
    campaign_id = start_campaign(stack, tmp_path, "pg-outage", cycles=2, experiment=long_run(2))
    start_workers(stack, "pytorch-p")
    # The second run finds its model loaded: its 2 s window closes well inside the outage.
    second = wait_for(
        lambda: (r := runs_of(campaign_id)[1]).status == "running" and r, 180, "the second run to start", poll=0.01
    )
    get_engine().dispose()
    stack.postgres.stop()

    def measured_in_the_outage() -> bool:  # the worker tried to record it, or its task ended without recording
        log = stack.workers.log("pytorch-p")
        return "the database is away" in log or log.count(second.run_key) >= 2

    wait_for(measured_in_the_outage, 240, "the second run's window to close", poll=0.2)
    time.sleep(10)
    stack.postgres.start()

    wait_for(lambda: campaign_status(campaign_id) != "running", 180, "the campaign to end")
    for run in runs_of(campaign_id):
        assert run.status == "done" and run.attempts == 1, (run.status, run.attempts, run.error)
        assert_measured_once(run)
    assert "recording the measurement: the database is away" in stack.workers.log("pytorch-p")


def test_redis_restarted_mid_measurement_the_run_is_measured_once(stack: FaultStack, tmp_path: Path) -> None:
    campaign_id = start_campaign(stack, tmp_path, "redis-restart", cycles=1, experiment=long_run(25))
    start_workers(stack, "pytorch-a", "pytorch-b")
    running = wait_for(
        lambda: next((r for r in runs_of(campaign_id) if r.status == "running"), None), 120, "the run to start"
    )
    time.sleep(2)
    stack.redis.kill()  # every heartbeat vanishes with it
    time.sleep(1)
    stack.redis.start()

    wait_for(lambda: campaign_status(campaign_id) != "running", 240, "the campaign to end")
    (run,) = runs_of(campaign_id)
    assert run.status == "done", (run.status, run.error)
    assert run.attempts == 1 and run.worker == running.worker, (run.attempts, run.worker, running.worker)
    assert run.window_start >= running.started_at and run.window_end > run.window_start
    assert_measured_once(run)
    other = ({"pytorch-a", "pytorch-b"} - {running.worker.split("@")[0]}).pop()
    assert run.run_key not in stack.workers.log(other)  # the other worker was never sent it


def test_a_task_forged_on_the_broker_is_refused_and_the_manifest_is_measured(stack: FaultStack, tmp_path: Path) -> None:
    # `campaign run` sends a run for every live worker: the earlier tests' workers, stopped, keep a heartbeat for
    # one lifetime, and the genuine message would then be queued ahead of the forged one
    wait_for(lambda: not live_workers(redis_client()), 60, "the stopped workers' heartbeats to expire")
    campaign_id = start_campaign(stack, tmp_path, "forged", cycles=1)
    with session_scope() as s:
        run, experiment, campaign = s.execute(
            select(Run, Experiment, Campaign)
            .join(Experiment, Run.experiment_id == Experiment.id)
            .join(Campaign, Run.campaign_id == Campaign.id)
            .where(Run.campaign_id == campaign_id)
        ).one()
        genuine = run_request(run, experiment, campaign)
    forged_experiment = {**genuine.experiment, "workload": {**genuine.experiment["workload"], "output_len": 7}}
    forged = genuine.model_copy(update={"experiment": forged_experiment})
    app = make_celery("lem-fault-tests")
    app.send_task(
        RUN_TASK, args=[forged.model_dump(mode="json")], task_id=genuine.run_key, queue=QueueName.PYTORCH.value
    )
    start_workers(stack, "pytorch-f", control=False)  # no control worker yet: only the forged task is queued

    wait_for(
        lambda: "does not match the manifest" in (runs_of(campaign_id)[0].error or ""),
        60,
        "the worker to refuse the forged task",
    )
    assert runs_of(campaign_id)[0].status == "pending"

    start_workers(stack, control=True)  # the scheduler sends the genuine message
    wait_for(lambda: campaign_status(campaign_id) != "running", 120, "the campaign to end")
    (measured,) = runs_of(campaign_id)
    assert measured.status == "done" and measured.attempts == 1
    with session_scope() as s:
        metrics = s.get(RunMetrics, measured.id)
        # the manifest's workload (2 x 48 a pass over the prompts), not the forged one's 2 x 7
        assert metrics.passes >= 1 and metrics.output_tokens == metrics.passes * 2 * 48
