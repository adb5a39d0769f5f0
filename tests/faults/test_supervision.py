"""`scripts/services.sh supervise`, which `services.sh up` runs the control worker under: a process that exits is
started again, and a TERM to the supervisor stops it and its process for good."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.integration.telemetry_helpers import wait_for

SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"


def test_an_exiting_process_is_restarted_and_term_stops_supervisor_and_process(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    env = {**os.environ, "LEM_RESTART_DELAY_S": "0.2"}
    crashing = subprocess.Popen(
        [str(SERVICES), "supervise", "crasher", "sh", "-c", f"echo $$ >> {starts}; exit 3"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: starts.exists() and len(starts.read_text().split()) >= 3, 30, "three starts")
    finally:
        crashing.send_signal(signal.SIGTERM)
        _, err = crashing.communicate(timeout=30)
    assert "supervise: crasher exited with status 3; starting it again" in err

    pids = tmp_path / "pids"
    lasting = subprocess.Popen(
        [str(SERVICES), "supervise", "sleeper", "sh", "-c", f"echo $$ >> {pids}; exec sleep 60"],
        env=env,
        start_new_session=True,
    )
    child = int(wait_for(lambda: pids.exists() and pids.read_text().split(), 30, "the process started")[0])
    time.sleep(0.5)
    lasting.send_signal(signal.SIGTERM)
    assert lasting.wait(30) == 0
    wait_for(lambda: not Path(f"/proc/{child}").exists(), 10, "the supervised process stopped with it")
    assert len(pids.read_text().split()) == 1  # not started again after the TERM
