"""``lem doctor`` against the test stack (real Redis and PostgreSQL) with a real ``lem-telemetry`` beating."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url

from lem_shared.heartbeat import read_heartbeats
from lem_telemetry.sources import REPLAY_UUID
from tests.integration.telemetry_helpers import start_daemon, wait_for

Lem = Callable[..., subprocess.CompletedProcess[str]]


def _checks(result: subprocess.CompletedProcess[str]) -> tuple[dict, dict[str, dict]]:
    payload = json.loads(result.stdout)
    return payload, {check["name"]: check for check in payload["checks"]}


def test_doctor_reports_broker_database_and_the_telemetry_heartbeat(
    stack_env: dict[str, str], lem: Lem, h200_trace_dir: Path, tmp_path: Path
) -> None:
    daemon = start_daemon(stack_env["LEM_DATABASE_URL"], f"replay:{h200_trace_dir / 'h200_nvml_trace.jsonl'}",
                          tmp_path, broker_url=stack_env["LEM_BROKER_URL"], telemetry_heartbeat_s=0.2)
    try:
        wait_for(lambda: any(b.get("gpu_uuid") == REPLAY_UUID for b in read_heartbeats(stack_env["LEM_BROKER_URL"]))
                 or not daemon.alive(), 15, "the telemetry heartbeat")
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
