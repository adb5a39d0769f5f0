"""Campaigns at scale on the real stack: in-order dispatch to free workers, a worker killed mid-run, cancel,
resume, and backends without workers (real Redis, PostgreSQL, Celery workers and CPU inference)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import yaml
from sqlalchemy import select, update

from lem_shared.db.models import Campaign, Run, RunMetrics
from lem_shared.db.session import session_scope
from lem_shared.dispatch import advance
from lem_shared.wire.heartbeat import WORKER_KEY_PREFIX, publish_worker_beat
from tests.broker_redis import redis_client
from tests.integration.manifest import campaign_status, runs_of
from tests.integration.telemetry_helpers import wait_for

# Each run lasts a few seconds on a CPU: long enough to be caught mid-run, short enough for CI.
RUN = {
    "model": "random:llama-tiny",
    "workload": {"num_prompts": 2, "input_len": 32, "output_len": 48},
    "measurement": {"min_window_s": 1.0, "warmup_min": 2, "warmup_max": 3},
}


def campaign_file(tmp_path: Path, name: str, **spec: object) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "experiment": RUN, **spec}))
    return path


def latest_campaign(lem) -> int:  # noqa: ANN001
    return max(c["id"] for c in json.loads(lem("campaign", "list", "--json").stdout))


def test_worker_killed_mid_run_its_run_is_requeued_and_every_run_is_done_once(
    workers,
    lem,
    celery_app,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    workers.start("pytorch-a", "lem-worker-pytorch", "--hostname", "pytorch-a@%h")
    workers.start("pytorch-b", "lem-worker-pytorch", "--hostname", "pytorch-b@%h")
    try:
        workers.wait_ready(celery_app, ["pytorch-a", "pytorch-b"])
        killed_one_of_two(workers, lem, tmp_path)
    finally:  # the later tests get the session's one pytorch worker back
        workers.stop(["pytorch-a", "pytorch-b"])


def killed_one_of_two(workers, lem, tmp_path: Path) -> None:  # noqa: ANN001
    ours = ("pytorch-a@", "pytorch-b@")
    path = campaign_file(
        tmp_path, "kill-one", cycles=3, structure="interleaved", grid={"workload.output_len": [40, 48]}
    )
    started = lem("campaign", "run", str(path), "--no-wait")
    assert started.returncode == 0, started.stderr
    campaign_id = latest_campaign(lem)

    victim = wait_for(
        lambda: next(
            (r for r in runs_of(campaign_id) if r.status == "running" and (r.worker or "").startswith(ours)), None
        ),
        120,
        "a run on pytorch-a or -b",
    )
    name = victim.worker.split("@")[0]
    os.killpg(workers.procs[name][0].pid, signal.SIGKILL)  # the worker and its engine host, no goodbye

    wait_for(lambda: campaign_status(campaign_id) != "running", 240, f"campaign {campaign_id} to end")
    runs = runs_of(campaign_id)
    assert campaign_status(campaign_id) == "done"
    assert [r.status for r in runs] == ["done"] * 6
    assert [r.cycle for r in runs] == [0, 0, 1, 1, 2, 2]  # interleaved
    again = next(r for r in runs if r.id == victim.id)
    assert again.attempts == 2 and "vanished" in (again.error or "") and again.worker != victim.worker
    assert all(r.attempts == 1 for r in runs if r.id != victim.id)
    with session_scope() as s:  # measured exactly once: one metrics row per run (its primary key is the run)
        assert len(s.scalars(select(RunMetrics.run_id).where(RunMetrics.run_id.in_([r.id for r in runs]))).all()) == 6
    status = json.loads(lem("campaign", "status", str(campaign_id), "--json").stdout)
    assert status["counts"] == {"done": 6} and status["finished"] == status["total"] == 6
    assert status["structure"] == "interleaved" and isinstance(status["seed"], int)  # recorded for a replay


def test_cancel_stops_the_running_run_before_its_window_ends(workers, lem, tmp_path: Path) -> None:  # noqa: ANN001
    long_run = {**RUN, "measurement": {**RUN["measurement"], "min_window_s": 60}}
    path = tmp_path / "cancel.yaml"
    path.write_text(yaml.safe_dump({"name": "cancel-me", "cycles": 3, "experiment": long_run}))
    assert lem("campaign", "run", str(path), "--no-wait").returncode == 0
    campaign_id = latest_campaign(lem)
    wait_for(lambda: any(r.status == "running" for r in runs_of(campaign_id)), 120, "a running run")
    time.sleep(2)  # into its measurement
    cancelled = lem("campaign", "cancel", str(campaign_id))
    assert cancelled.returncode == 0, cancelled.stderr
    # The run's window lasts 60 s: ending cancelled within 30 s of the request means it was stopped, not waited
    # for (how many seconds exactly depends on the machine's load; bench/ times it, this test does not).
    wait_for(lambda: all(r.status == "cancelled" for r in runs_of(campaign_id)), 30, "every run cancelled")
    stopped = next(r for r in runs_of(campaign_id) if r.started_at is not None)
    assert stopped.window_end is None or (stopped.window_end - stopped.window_start).total_seconds() < 60
    assert campaign_status(campaign_id) == "cancelled"
    # The worker carries on with other work.
    assert lem("campaign", "run", str(campaign_file(tmp_path, "after-cancel", cycles=1))).returncode == 0


def test_resume_sends_lost_runs_again_and_never_reruns_finished_ones(
    workers,
    lem,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    done = lem("campaign", "run", str(campaign_file(tmp_path, "resume-me", cycles=2)))
    assert done.returncode == 0, done.stderr
    campaign_id = latest_campaign(lem)
    first, second = runs_of(campaign_id)
    # What a crash leaves behind: the campaign still running, one run dispatched whose message Redis lost.
    with session_scope() as s:
        s.execute(update(Campaign).where(Campaign.id == campaign_id).values(status="running", finished_at=None))
        s.execute(update(Run).where(Run.id == second.id).values(status="dispatched", started_at=None))
        s.execute(RunMetrics.__table__.delete().where(RunMetrics.run_id == second.id))
    resumed = lem("campaign", "resume", str(campaign_id))
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "1 dispatched" in resumed.stdout
    after = {r.id: r for r in runs_of(campaign_id)}
    assert after[first.id].attempts == 1 and after[first.id].finished_at == first.finished_at  # not re-run
    assert after[second.id].status == "done" and after[second.id].attempts == 2
    assert campaign_status(campaign_id) == "done"


def test_each_backend_gets_its_own_queue_and_missing_backends_are_named(
    workers,
    lem,
    celery_app,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    path = campaign_file(tmp_path, "three-backends", cycles=1, backends={"pytorch": {}, "vllm": {}, "trtllm": {}})
    refused = lem("campaign", "run", str(path))
    assert refused.returncode == 1
    assert "no live worker for backend(s) trtllm, vllm" in refused.stderr
    assert "Traceback" not in refused.stderr

    queued = lem("campaign", "run", str(path), "--no-require-workers", "--no-wait")
    assert queued.returncode == 0, queued.stderr
    campaign_id = latest_campaign(lem)
    by_backend = {}
    with session_scope() as s:
        from lem_shared.db.models import Experiment

        for run, backend in s.execute(
            select(Run, Experiment.backend).join(Experiment).where(Run.campaign_id == campaign_id)
        ):
            by_backend[backend] = run.run_key
    wait_for(
        lambda: next(r for r in runs_of(campaign_id) if r.run_key == by_backend["pytorch"]).status == "done",
        120,
        "the pytorch run",
    )
    # No vllm or trtllm worker: their runs wait, pending, instead of sitting in a queue nobody reads.
    assert {r.status for r in runs_of(campaign_id) if r.run_key != by_backend["pytorch"]} == {"pending"}

    # A stand-in heartbeat for a vLLM worker (no engine here): the scheduler sends the vLLM run to vLLM's queue.
    connection = redis_client()
    publish_worker_beat(connection, "vllm-standin@test", "vllm", None)
    try:
        sent = advance(celery_app, connection)
        assert [(r.experiment["backend"], r.run_key) for r in sent] == [("vllm", by_backend["vllm"])]
        message = json.loads(connection.lindex("gpu.vllm", 0))
        assert message["headers"]["id"] == by_backend["vllm"] and message["headers"]["task"] == "lem.run_experiment"
    finally:
        connection.delete(WORKER_KEY_PREFIX + "vllm-standin@test", "gpu.vllm")
        assert lem("campaign", "cancel", str(campaign_id)).returncode == 0
