"""Flower against the test stack: a real Flower process, started before a tiny real campaign, shows the campaign's
workers and tasks through its HTTP API (behind basic auth, as compose runs it)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lem_shared.wire.queues import FINALISE_TASK, RUN_TASK
from tests.integration.conftest import BIN

Lem = Callable[..., subprocess.CompletedProcess[str]]

TINY = {
    "name": "flower-watch",
    "cycles": 1,
    "experiment": {
        "model": "random:llama-tiny",
        "workload": {"num_prompts": 2, "input_len": 8, "output_len": 4},
        "measurement": {"min_window_s": 0, "warmup_min": 1, "warmup_max": 2, "idle_gap_s": 0, "baseline_idle_s": 0},
    },
}


@dataclass
class Flower:
    url: str
    auth: str  # "user:password"
    log: Path

    def get(self, path: str, *, auth: bool = True) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path)
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(self.auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
                return response.status, json.loads(body) if body.strip().startswith((b"{", b"[")) else body
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _poll(check: Callable[[], Any], what: str, flower: Flower, timeout: float) -> Any:
    """check()'s first truthy value, asked until the deadline; Flower receives events asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"Flower did not show {what} within {timeout:.0f} s; last answer: {value!r}\n"
                f"Flower's log:\n{flower.tail()}"
            )
        time.sleep(0.5)


@pytest.fixture
def flower(stack_env: dict[str, str], workers, tmp_path: Path) -> Iterator[Flower]:  # noqa: ANN001
    user, password = "lem-test", secrets.token_urlsafe(16)
    port, auth = _free_port(), f"{user}:{password}"
    # The login comes from LEM_FLOWER_USER/PASSWORD, as compose passes them; no FLOWER_* from the caller's
    # environment (FLOWER_UNAUTHENTICATED_API…).
    env = {k: v for k, v in stack_env.items() if not k.startswith(("FLOWER_", "LEM_FLOWER_"))}
    env |= {"LEM_FLOWER_USER": user, "LEM_FLOWER_PASSWORD": password}
    log_path = tmp_path / "flower.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in the finaliser
    proc = subprocess.Popen(
        [str(BIN / "lem-flower"), "--address=127.0.0.1", f"--port={port}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle = Flower(f"http://127.0.0.1:{port}", auth, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Flower exited with {proc.returncode}:\n{handle.tail()}")
            try:
                if handle.get("/healthcheck", auth=False) == (200, b"OK"):
                    break
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"Flower's /healthcheck did not answer within 30 s:\n{handle.tail()}")
            time.sleep(0.2)
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def _alive_workers(flower: Flower) -> set[str]:
    """Workers Flower knows as alive from their events (heartbeats)."""
    status, body = flower.get("/api/workers?status=1")
    return {name for name, alive in body.items() if alive} if status == 200 else set()


def _listed_workers(flower: Flower) -> set[str]:
    """Workers by name from /api/workers?refresh=1, which asks the workers themselves (inspect)."""
    status, body = flower.get("/api/workers?refresh=1")
    return set(body) if status == 200 else set()


def _kinds(names: set[str]) -> set[str]:
    return {n.split("@")[0] for n in names}


def _succeeded(flower: Flower, task_ids: set[str]) -> dict[str, dict] | None:
    """Flower's tasks of those ids, once all of them have reached SUCCESS."""
    status, body = flower.get("/api/tasks")
    done = (
        {task_id: t for task_id, t in body.items() if task_id in task_ids and t.get("state") == "SUCCESS"}
        if status == 200
        else {}
    )
    return done if set(done) == task_ids else None


def _succeeded_named(flower: Flower, task_name: str, count: int) -> dict[str, dict] | None:
    """Flower's tasks of that name, by task id, once `count` of them have reached SUCCESS."""
    status, body = flower.get(f"/api/tasks?taskname={task_name}")
    done = {task_id: t for task_id, t in body.items() if t.get("state") == "SUCCESS"} if status == 200 else {}
    return body if len(done) >= count else None


def test_flower_api_needs_credentials_and_shows_the_campaigns_workers_and_tasks(
    flower: Flower,
    workers,
    lem: Lem,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    assert flower.get("/api/workers", auth=False)[0] == 401
    assert flower.get("/api/tasks", auth=False)[0] == 401
    assert flower.get("/api/workers", auth=True)[0] == 200
    assert flower.get("/metrics", auth=False)[0] == 401  # Flower's own /metrics is open; lem-flower's is not
    status, body = flower.get("/metrics", auth=True)
    assert status == 200 and b"# HELP" in body

    # Wait until Flower's event consumer is live (the workers' heartbeats reach it): events sent before that
    # would never reach it, and the test would depend on a race.
    _poll(
        lambda: _kinds(_alive_workers(flower)) >= {"pytorch", "control"}, "the workers' heartbeats", flower, timeout=20
    )

    spec = tmp_path / "campaign.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    result = lem("campaign", "run", str(spec), "--timeout", "60", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr + workers.log("pytorch")[-3000:]
    campaign_id = max(
        c["id"] for c in json.loads(lem("campaign", "list", "--json").stdout) if c["name"] == TINY["name"]
    )
    records = json.loads(lem("results", "show", str(campaign_id), "--json").stdout)
    run_keys = {r["run_key"] for r in records}
    task_names = {r["run_key"]: f"run {TINY['name']}#{campaign_id}/experiment 0/cycle {r['cycle']}" for r in records}
    assert len(run_keys) == TINY["cycles"] and all(r["status"] == "done" for r in records)

    names = _poll(
        lambda: (w := _listed_workers(flower)) and _kinds(w) >= {"pytorch", "control"} and w,
        "a pytorch@ and a control@ worker",
        flower,
        timeout=20,
    )
    pytorch = next(n for n in names if n.startswith("pytorch@"))

    # This Flower started before the campaign and saw only its tasks: one lem.run_experiment per run, its task id
    # the run key, named for people (campaign, experiment, cycle), run by the pytorch worker; one
    # lem.control.finalise_run per run, on the control worker.
    runs = _poll(lambda: _succeeded(flower, run_keys), "the run tasks in state SUCCESS", flower, timeout=20)
    for task_id, task in runs.items():
        assert task["name"] == task_names[task_id] and task["worker"] == pytorch, task
    assert flower.get(f"/api/tasks?taskname={RUN_TASK}")[1] == {}  # the shadow name replaces the task's name
    finalised = _poll(
        lambda: _succeeded_named(flower, FINALISE_TASK, len(run_keys)),
        f"{FINALISE_TASK} tasks in state SUCCESS",
        flower,
        timeout=20,
    )
    assert len(finalised) == len(run_keys), finalised
    for task in finalised.values():
        assert task["state"] == "SUCCESS" and task["worker"].startswith("control@"), task
