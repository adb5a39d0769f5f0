"""``lem doctor`` against the test stack (real Redis and PostgreSQL) with a real ``lem-telemetry`` beating."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url

from lem_shared.wire.heartbeat import read_heartbeats
from lem_telemetry.sources import REPLAY_UUID
from tests.broker_redis import redis_client
from tests.integration.telemetry_helpers import start_daemon, wait_for

Lem = Callable[..., subprocess.CompletedProcess[str]]


def _checks(result: subprocess.CompletedProcess[str]) -> tuple[dict, dict[str, dict]]:
    payload = json.loads(result.stdout)
    return payload, {check["name"]: check for check in payload["checks"]}


def test_doctor_reports_broker_database_and_the_telemetry_heartbeat(
    stack_env: dict[str, str], lem: Lem, h200_trace_dir: Path, tmp_path: Path
) -> None:
    daemon = start_daemon(
        stack_env["LEM_DATABASE_URL"],
        f"replay:{h200_trace_dir / 'h200_nvml_trace.jsonl'}",
        tmp_path,
        broker_url=stack_env["LEM_BROKER_URL"],
        telemetry_heartbeat_s=0.2,
    )
    try:
        wait_for(
            lambda: (
                any(
                    b.get("gpu_uuid") == REPLAY_UUID for b in read_heartbeats(redis_client(stack_env["LEM_BROKER_URL"]))
                )
                or not daemon.alive()
            ),
            15,
            "the telemetry heartbeat",
        )
        assert daemon.alive(), daemon.log()
        result = lem("doctor", "--json", timeout=60)
    finally:
        assert daemon.stop() == 0, daemon.log()
    payload, checks = _checks(result)
    assert checks["broker"]["status"] == "ok"
    assert checks["database"]["status"] == "ok" and "at head" in checks["database"]["detail"]
    gpu = next(check for name, check in checks.items() if REPLAY_UUID in name)
    assert gpu["status"] == "ok" and "W" in gpu["detail"] and "nvml-replay" in gpu["detail"]
    assert any(b["kind"] == "gpu" and b["gpu_uuid"] == REPLAY_UUID and b["age_s"] < 5 for b in payload["heartbeats"])
    assert {"queue control", "queue gpu.pytorch"} <= set(checks)
    # Exit 1 exactly when something needed is down, and each such thing says how to fix it.
    failed = [check for check in payload["checks"] if check["status"] == "fail"]
    assert result.returncode == (1 if failed else 0), result.stdout + result.stderr
    assert payload["ok"] == (not failed) and all(check["fix"] for check in failed)


def test_doctor_exits_1_with_a_fix_when_the_database_is_not_there(stack_env: dict[str, str]) -> None:
    missing = make_url(stack_env["LEM_DATABASE_URL"]).set(database="lem_doctor_no_such_database")
    env = {**stack_env, "LEM_DATABASE_URL": missing.render_as_string(hide_password=False)}
    command = [str(Path(sys.executable).with_name("lem")), "doctor", "--json"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    payload, checks = _checks(result)
    assert result.returncode == 1
    assert checks["database"]["status"] == "fail"
    assert "lem_doctor_no_such_database" in checks["database"]["detail"]
    assert "lem db upgrade" in checks["database"]["fix"]
    assert checks["broker"]["status"] == "ok"


def test_a_broker_that_is_down_fails_the_probe_within_its_timeout() -> None:
    import socket
    import time

    from lem_planner.doctor import BROKER_TIMEOUT_S, check_broker

    with socket.socket() as closed, socket.socket() as silent:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: the port refuses
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the connection, nobody ever answers PING
        for sock, says in [(closed, "Connection refused"), (silent, f"no answer within {BROKER_TIMEOUT_S:g} s")]:
            started = time.monotonic()
            check = check_broker(f"redis://:hunter2@127.0.0.1:{sock.getsockname()[1]}/0")
            took = time.monotonic() - started
            assert check.status == "fail" and says in check.detail and "hunter2" not in check.detail, check
            assert check.fix == "start Redis (`make services`) or set LEM_BROKER_URL"
            assert took < 3.0, (says, took)  # one attempt of BROKER_TIMEOUT_S: no retries with back-off


def test_doctor_with_the_broker_down_exits_1_and_stderr_stays_empty_off_a_terminal(stack_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        env = {**stack_env, "LEM_BROKER_URL": f"redis://127.0.0.1:{closed.getsockname()[1]}/0"}
        command = [str(Path(sys.executable).with_name("lem")), "doctor", "--json"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    payload, checks = _checks(result)
    assert result.returncode == 1 and result.stderr == ""
    assert checks["broker"]["status"] == "fail" and "Connection refused" in checks["broker"]["detail"]
    assert checks["workers"]["detail"] == "cannot ask: the broker is unreachable"
    assert checks["database"]["status"] == "ok"


def test_doctor_on_a_terminal_shows_each_check_as_it_completes_on_stderr_only(stack_env: dict[str, str]) -> None:
    from tests.terminal import stderr_on_a_terminal

    _, stdout, shown = stderr_on_a_terminal([str(Path(sys.executable).with_name("lem")), "doctor", "--json"], stack_env)
    payload = json.loads(stdout)  # stdout is the JSON and nothing else
    positions = [shown.find(f"{check['name']}: ") for check in payload["checks"]]
    assert all(p >= 0 for p in positions), shown[-3000:]
    assert positions == sorted(positions)  # in the order they were made
    assert "asking the workers which queues they consume" in shown
