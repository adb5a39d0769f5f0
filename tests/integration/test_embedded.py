"""The embedded stack end to end (issue 20): a fresh clone's ``make campaign`` inside a network namespace with only
loopback up (``unshare -n``), where no Redis or PostgreSQL can answer, runs on the broker folder and SQLite to a
results table. The clone uses this checkout's ``.venv`` (``make setup`` done: its install marker is kept newer
than the clone's package files, so make installs nothing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def _can_unshare() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare (util-linux) and ip (iproute2)"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare -n is not allowed here: {probe.stderr.strip()}"


@pytest.mark.skipif(_can_unshare() is not None, reason=str(_can_unshare()))
def test_make_campaign_in_a_fresh_clone_with_no_server_reachable(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    for marker in [
        clone / "requirements-dev.txt",
        clone / "shared/pyproject.toml",
        *clone.glob("services/*/pyproject.toml"),
    ]:
        os.utime(marker, (946684800, 946684800))  # older than .venv/.installed: `make setup` is done
    embedded = tmp_path / "embedded"
    env = {name: value for name, value in os.environ.items() if not name.startswith("LEM_")}
    env.update(VENV=str(VENV), LEM_EMBEDDED_DIR=str(embedded), LEM_TORCH_THREADS="1")
    script = "ip link set lo up && make campaign; rc=$?; make down >/dev/null; exit $rc"
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    first = next(line for line in done.stderr.splitlines() + done.stdout.splitlines() if line.strip())
    assert first.startswith("embedded stack: results in SQLite at"), output[-4000:]
    assert "nothing answered as Redis on 127.0.0.1:6379 or PostgreSQL on 127.0.0.1:5432" in first
    assert "4/4" in output and "campaign 1" in output, output[-4000:]
    engine = create_engine(f"sqlite:///{embedded / 'lem.db'}")
    with engine.connect() as connection:
        statuses = connection.execute(text("select status, count(*) from runs group by status")).all()
        measured = connection.scalar(text("select count(*) from run_metrics where tokens_per_s > 0"))
    engine.dispose()
    assert dict(statuses) == {"done": 4} and measured == 4, statuses
    assert (embedded / "broker" / "messages").is_dir()
