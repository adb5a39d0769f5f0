"""Test helper: real `lem-beat` processes, each in a session of its own so a kill reaches only it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
FIRING = re.compile(r"schedule (\d+) due (\S+): ")


class Beats:
    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env, self.log_dir, self.procs = env, log_dir, {}

    def start(self, name: str, *argv: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop
        proc = subprocess.Popen(
            [str(BIN / "lem-beat"), *argv], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = (proc, log)
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text()

    def fired(self, name: str, schedule_id: int, since: int = 0) -> list[str]:
        """The due times this beat fired (from its log, after offset ``since``)."""
        return [due for sid, due in FIRING.findall(self.log(name)[since:]) if int(sid) == schedule_id]

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        proc, log = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)
