"""Fault injection on the embedded stack (issue 20): a broker folder and SQLite, real processes. The folder
transport removes a message when it is delivered, not when it is acknowledged, so a worker killed with SIGKILL
mid-run takes its message with it; the database's reclaim (heartbeat lifetime) must still end every run exactly
once, measured once, with the killed run measured again by the other worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

BIN = Path(sys.executable).parent
RUN = {
    "backend": "pytorch",
    "model": "random:llama-tiny",
    "workload": {"kind": "synthetic", "num_prompts": 2, "input_len": 16, "output_len": 8, "seed": 0},
    "measurement": {"min_window_s": 8, "warmup_cv": 0.5, "warmup_max": 4, "baseline_idle_s": 0},
}


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, subprocess.Popen], Path]]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("LEM_")}
    env.update(
        LEM_BROKER_URL=f"filesystem://{tmp_path / 'broker'}",
        LEM_DATABASE_URL=f"sqlite:///{tmp_path / 'lem.db'}",
        LEM_WORKER_HEARTBEAT_TTL_S="5",
        LEM_REDISPATCH_AFTER_S="20",
        LEM_ENERGY_WAIT_S="1",
        LEM_TORCH_THREADS="1",
        LEM_DEVICE="cpu",
        LEM_TELEMETRY_BUFFER_DIR=str(tmp_path / "spill"),
    )
    subprocess.run([str(BIN / "lem"), "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
    procs: dict[str, subprocess.Popen] = {}
    for name, argv in {
        "control": ["lem-control"],
        "pytorch-a": ["lem-worker-pytorch", "--hostname", "pytorch-a@%h"],
        "pytorch-b": ["lem-worker-pytorch", "--hostname", "pytorch-b@%h"],
    }.items():
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - the process's lifetime
        procs[name] = subprocess.Popen(
            [str(BIN / argv[0]), *argv[1:]], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    yield env, procs, tmp_path
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_worker_killed_mid_run_on_the_embedded_stack_loses_no_run_and_doubles_none(embedded) -> None:  # noqa: ANN001
    env, procs, folder = embedded
    campaign = folder / "campaign.yaml"
    campaign.write_text(yaml.safe_dump({"name": "embedded-kill", "cycles": 4, "experiment": RUN}))
    database = create_engine(env["LEM_DATABASE_URL"])

    def rows(sql: str) -> list[Any]:
        with database.connect() as connection:
            return list(connection.execute(text(sql)).all())

    started = subprocess.run(
        [str(BIN / "lem"), "campaign", "run", str(campaign), "--no-wait", "--no-require-workers", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    campaign_id = json.loads(started.stdout)["campaign_id"]
    victim = wait_for(
        lambda: next(iter(rows("select id, worker from runs where status = 'running'")), None), 180, "a run to start"
    )
    name = victim.worker.partition("@")[0]
    os.killpg(procs[name].pid, signal.SIGKILL)
    procs[name].wait(10)

    wait_for(lambda: rows(f"select status from campaigns where id = {campaign_id}")[0][0] != "running", 300, "the end")
    runs = rows(f"select id, status, attempts, worker from runs where campaign_id = {campaign_id} order by id")
    logs = "\n".join((folder / f"{n}.log").read_text()[-1500:] for n in procs)
    assert [run.status for run in runs] == ["done"] * 4, (runs, logs)
    killed = next(run for run in runs if run.id == victim.id)
    assert killed.attempts == 2 and not killed.worker.startswith(name + "@"), (killed, logs)
    measured = rows(
        f"select run_id, count(*) from run_metrics where run_id in (select id from runs where campaign_id = "
        f"{campaign_id}) group by run_id"
    )
    assert sorted(count for _, count in measured) == [1, 1, 1, 1], measured
    database.dispose()
