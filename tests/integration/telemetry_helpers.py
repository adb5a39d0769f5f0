"""Helpers for the telemetry tests: the real ``lem-telemetry`` entry point as a subprocess, and a private
PostgreSQL server that a test may stop and start without touching the machine's shared one."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from lem_shared.db.migrate import upgrade

LEM_TELEMETRY = Path(sys.executable).with_name("lem-telemetry")
REDIS_URL = os.environ.get("LEM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Heartbeats of the telemetry tests go to a Redis database of their own (the stack uses 14 and 15).
HEARTBEAT_REDIS_URL = f"{REDIS_URL}/13"
PG_BIN = Path(os.environ.get("LEM_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def wait_for(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    """Poll ``condition`` until it gives a true value, and return that value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
    return value


class Daemon:
    """One ``lem-telemetry`` process with its log file."""

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen([str(LEM_TELEMETRY)], env=env, cwd=cwd, stdout=log, stderr=log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, and the exit code; a daemon that does not stop in time is killed and the test fails."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"lem-telemetry did not stop within {timeout} s:\n{self.log()}") from None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def start_daemon(database_url: str, source: str, tmp_path: Path, name: str = "telemetry", **settings: object) -> Daemon:
    """Start ``lem-telemetry``; ``settings`` are Settings fields (``telemetry_interval_s=0.02``) set as LEM_ env."""
    env = {
        **os.environ,
        "LEM_DATABASE_URL": database_url,
        "LEM_TELEMETRY_SOURCE": source,
        "LEM_BROKER_URL": HEARTBEAT_REDIS_URL,
        "LEM_TELEMETRY_BUFFER_DIR": str(tmp_path / "buffer"),
        "LEM_TELEMETRY_FLUSH_S": "0.5",
    }
    env.update({f"LEM_{key.upper()}": str(value) for key, value in settings.items()})
    daemon = Daemon(env, tmp_path / f"{name}.log", tmp_path)
    # Ready once it says what it samples (its signal handlers are set before that): a SIGTERM sent while it is
    # still importing would kill it before it can flush.
    wait_for(
        lambda: not daemon.alive() or any(marker in daemon.log() for marker in READY_MARKERS),
        60,
        "lem-telemetry to start sampling",
    )
    return daemon


READY_MARKERS = ("lem_telemetry.daemon: sampling ", "no GPU telemetry on ")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb into a temporary folder), so it can be stopped for real."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lem-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0  # initdb and pg_ctl refuse to run as root
        if self.as_postgres:
            shutil.chown(self.root, user="postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(PG_BIN / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def url(self, database: str) -> str:
        return make_url(f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}").render_as_string(False)

    def migrated_database(self, database: str) -> str:
        url = self.url(database)
        upgrade(url)
        return url

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        if self.running():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
